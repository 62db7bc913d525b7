"""Which clip-level pooling of the aisfx block vectors retrieves best (zero-shot, no training).

The aiSFX network gives one 512-d vector per 2.32 s block (blocks every 1.16 s); the package stops there. For
each corpus family (``qvimclap synth --family synth`` and ``--family foley``) this embeds every reference and
imitation once, then pools the block vectors in every way ``AisfxConfig`` offers (``mean``, ``max``,
``mean_normalized``), with the last partial block kept (zero-padded) or dropped as the package does, and
prints per family:

- ``ref NN same kind``: the fraction of references whose nearest other reference is of the same kind (how
  well the space groups sounds);
- ``imit->ref MRR``: each imitation ranks all references (zero-shot: the imitation's own aisfx vector),
  with raw cosines and with centred cosines (the library mean subtracted, as ``qvimclap index`` does);
- chance for both.

    flock /tmp/qvimclap-heavy.lock .venv/bin/python bench/bench_aisfx.py [--refs 100] [--imitations 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qvimclap import evaluation as ev
from qvimclap.audio import load_audio
from qvimclap.data import open_dataset
from qvimclap.data.synth import make_corpus
from qvimclap.models.aisfx import AisfxConfig, AisfxEncoder, block_starts, num_frames, pool_blocks
from qvimclap.models.base import l2_normalize


def embed_blocks(encoder: AisfxEncoder, paths: list[Path]) -> tuple[list[np.ndarray], list[int]]:
    """Block vectors (partial blocks kept) and how many blocks the package's "drop" rule keeps, per file."""
    waves = [load_audio(p, encoder.sample_rate) for p in paths]
    blocks = encoder.embed_blocks(waves, batch_size=8)
    drop = AisfxConfig(partial_block="drop")
    kept = [len(block_starts(num_frames(w.shape[0], drop), drop)) for w in waves]
    return blocks, kept


def pool(blocks: list[np.ndarray], kept: list[int], pooling: str, partial: str) -> np.ndarray:
    rows = [
        pool_blocks(torch.from_numpy(b if partial == "keep" else b[:n]), pooling).numpy()
        for b, n in zip(blocks, kept, strict=True)
    ]
    return l2_normalize(np.stack(rows))


def reference_nn_same_kind(refs: np.ndarray, labels: np.ndarray) -> float:
    similarity = refs @ refs.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


def chance_nn_same_kind(labels: np.ndarray) -> float:
    """Expected same-kind rate when the nearest other reference is drawn uniformly."""
    counts = {label: int((labels == label).sum()) for label in set(labels.tolist())}
    return float(np.mean([(counts[label] - 1) / (len(labels) - 1) for label in labels]))


def imitation_mrr(queries: np.ndarray, refs: np.ndarray, true_ref: np.ndarray, *, center: bool) -> float:
    if center:
        mean = refs.mean(axis=0, keepdims=True)
        queries, refs = l2_normalize(queries - mean), l2_normalize(refs - mean)
    return ev.mrr(ev.true_ranks(ev.rank_by_similarity(queries @ refs.T), true_ref))


def bench_family(encoder: AisfxEncoder, corpus: Path) -> list[tuple[str, ...]]:
    dataset = open_dataset(corpus)
    references = list(dataset.references)
    queries = [p.query_path for p in dataset.pairs]
    true_ref = np.array([references.index(p.reference_path) for p in dataset.pairs])
    labels = np.array([dataset.label_of(r) for r in references])
    start = time.perf_counter()
    ref_blocks, ref_kept = embed_blocks(encoder, references)
    query_blocks, query_kept = embed_blocks(encoder, queries)
    seconds = time.perf_counter() - start
    num_blocks = sum(b.shape[0] for b in ref_blocks + query_blocks)
    print(
        f"{corpus.name}: {len(references)} references, {len(queries)} imitations, {len(set(labels))} kinds; "
        f"{num_blocks} blocks embedded in {seconds:.0f} s"
    )
    rows = []
    for pooling in ("mean", "max", "mean_normalized"):
        for partial in ("keep", "drop"):
            refs = pool(ref_blocks, ref_kept, pooling, partial)
            qs = pool(query_blocks, query_kept, pooling, partial)
            rows.append(
                (
                    corpus.name,
                    pooling,
                    partial,
                    f"{reference_nn_same_kind(refs, labels):.3f}",
                    f"{imitation_mrr(qs, refs, true_ref, center=False):.3f}",
                    f"{imitation_mrr(qs, refs, true_ref, center=True):.3f}",
                )
            )
    rows.append(
        (
            corpus.name,
            "chance",
            "",
            f"{chance_nn_same_kind(labels):.3f}",
            f"{ev.chance_mrr(len(references)):.3f}",
            f"{ev.chance_mrr(len(references)):.3f}",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=100)
    parser.add_argument("--imitations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default="synth,foley")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = AisfxEncoder.from_pretrained()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            corpus = make_corpus(
                Path(tmp) / family,
                num_references=args.refs,
                imitations_per_reference=args.imitations,
                seed=args.seed,
                family=family,
            )
            rows += bench_family(encoder, corpus)
    header = ("family", "pooling", "partial block", "ref NN same kind", "imit->ref MRR", "centred MRR")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
