"""The bar for `qvimclap align`: our default alignment vs a naive peer CNN and the hand-made baseline.

On the built-in corpus (``make_corpus``, 500 references x 3 imitations by default), split by reference
(``val_fraction`` 0.2 -> 100 validation references), this

1. trains the aligned model with the default ``AlignConfig`` (from scratch) and times it;
2. trains the naive peer for the same wall time (or ``--minutes``): a plain pair of small CNNs (4 conv blocks,
   one per side) on the same log-mel front end (no augmentation), InfoNCE in both directions, AdamW, same
   crops;
3. evaluates on the validation split: ours in CLAP space (imitation tower vs CLAP of the references) and in
   QVIM space (imitation tower vs reference tower), the peer (its two CNNs), and the hand-made log-mel
   statistics baseline of ``bench/baseline_logmel.py``;
4. prints a markdown table with MRR, recall@1/5/10, class NDCG, MRR / chance, and the ratios the bar asks for.

    .venv/bin/python bench/bench_align.py [--refs 500] [--imitations 3] [--minutes M] [--epochs E] [--work
    DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qvimclap import evaluation as ev
from qvimclap.data import open_dataset, split_by_reference
from qvimclap.data.synth import make_corpus
from qvimclap.index import centered
from qvimclap.models.mel import MelFrontEnd
from qvimclap.train.align import AlignConfig, epoch_batches, load_waveforms, seeded_crop, train_alignment
from qvimclap.train.losses import info_nce

SAMPLE_RATE = 32000
BENCH_DIR = Path(__file__).resolve().parent


# -- the naive peer ------------------------------------------------------------------------------------------


class PeerCNN(nn.Module):
    """Log-mel ``[B, 128, frames]`` -> ``[B, 128]``: four conv3x3-BN-ReLU-maxpool blocks, mean pool,
    linear."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for c in channels:
            layers += [nn.Conv2d(previous, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            previous = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(previous, dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(mel.unsqueeze(1)).mean(dim=(2, 3)))


def train_peer(
    train_pairs,
    query_clips,
    reference_clips,
    *,
    seconds: float,
    clip_s: float,
    seed: int = 0,
    clap_targets: np.ndarray | None = None,
):
    """Train the peer pair with InfoNCE for ``seconds`` of wall time; returns (imitation CNN, reference CNN,
    steps).

    With ``clap_targets`` (``[R, 512]``, centred and normalised, one row per reference) the peer is the naive
    way into CLAP space instead: one 512-d CNN on the imitation, InfoNCE against the references' CLAP
    targets; the reference CNN is then None.
    """
    torch.manual_seed(seed)
    mel = MelFrontEnd().eval()
    if clap_targets is None:
        imitation, reference = PeerCNN(), PeerCNN()
    else:
        imitation, reference = PeerCNN(dim=clap_targets.shape[1]), None
    params = list(imitation.parameters()) + (list(reference.parameters()) if reference is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    num_samples = int(clip_s * SAMPLE_RATE)
    start, step, epoch = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds:
        epoch += 1
        for batch in epoch_batches(len(train_pairs), 32, seed=seed, epoch=epoch):
            if time.monotonic() - start >= seconds:
                break
            rng = np.random.default_rng([seed, epoch, step])
            rows = train_pairs[batch]
            q = np.stack([seeded_crop(query_clips[i], num_samples, rng) for i in rows[:, 0]])
            with torch.no_grad():
                q_mel = mel(torch.from_numpy(q))
            if reference is None:
                other = torch.from_numpy(clap_targets[rows[:, 1]])
            else:
                r = np.stack([seeded_crop(reference_clips[i], num_samples, rng) for i in rows[:, 1]])
                with torch.no_grad():
                    other = reference(mel(torch.from_numpy(r)))
            loss = info_nce(imitation(q_mel), other, temperature=0.07, groups=torch.from_numpy(rows[:, 1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return imitation.eval(), None if reference is None else reference.eval(), step


@torch.no_grad()
def peer_embed(model: PeerCNN, clips: list[np.ndarray], clip_s: float) -> np.ndarray:
    mel = MelFrontEnd().eval()
    num_samples = int(clip_s * SAMPLE_RATE)
    out = []
    for start in range(0, len(clips), 64):
        batch = np.stack(
            [np.pad(c[:num_samples], (0, max(0, num_samples - len(c)))) for c in clips[start : start + 64]]
        )
        out.append(nn.functional.normalize(model(mel(torch.from_numpy(batch))), dim=-1).numpy())
    return np.concatenate(out)


# -- scoring -------------------------------------------------------------------------------------------------


def centred_similarity(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Cosine after subtracting the references' mean: how a default qvimclap index ranks."""
    center = references.mean(axis=0)
    return centered(queries, center) @ centered(references, center).T


def score(similarity: np.ndarray, true_ref: np.ndarray, q_labels: np.ndarray, r_labels: np.ndarray) -> dict:
    ranked = ev.rank_by_similarity(similarity)
    ranks = ev.true_ranks(ranked, true_ref)
    return {
        "mrr": ev.mrr(ranks),
        "recall@1": ev.recall_at_k(ranks, 1),
        "recall@5": ev.recall_at_k(ranks, 5),
        "recall@10": ev.recall_at_k(ranks, 10),
        "class_ndcg": ev.class_ndcg(ranked, q_labels, r_labels),
    }


def handmade_baseline(val_queries, val_refs, true_ref, q_labels, r_labels) -> dict | None:
    """bench/baseline_logmel.py's best variant (z-scored log-mel mean+std, cosine) on the validation split."""
    path = BENCH_DIR / "baseline_logmel.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("baseline_logmel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fb = module.mel_filterbank(module.NUM_MELS, module.N_FFT, module.SAMPLE_RATE)
    q, r = module.features(val_queries, fb), module.features(val_refs, fb)
    center, scale = np.concatenate([q, r]).mean(0), np.concatenate([q, r]).std(0) + 1e-8
    plain = score(module.cosine(q, r), true_ref, q_labels, r_labels)
    zscored = score(module.cosine((q - center) / scale, (r - center) / scale), true_ref, q_labels, r_labels)
    return max(plain, zscored, key=lambda row: row["mrr"])


# -- main ----------------------------------------------------------------------------------------------------


def clap_class_oracle(dataset, train_set, targets, true_ref, q_labels, r_labels, references) -> dict:
    """CLAP-space retrieval by a query that knows its class perfectly and nothing else.

    The query is the class prototype: the mean of the centred, normalised CLAP targets of that class's
    training references. References are ranked as a default index ranks them (centred on their mean), as in
    our CLAP-space evaluation. This is what any
    imitation encoder that only recognises the kind can reach in this CLAP space: with a random (scratch)
    CLAP, whose vectors do not group sounds by kind, it is far below perfect class recognition.
    """
    row = {r: i for i, r in enumerate(dataset.references)}
    train_refs = list(train_set.references)
    train_vectors = targets[[row[r] for r in train_refs]]
    center = train_vectors.mean(axis=0)
    centred = train_vectors - center
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    train_labels = np.array([train_set.label_of(r) for r in train_refs])
    prototypes = {}
    for label in set(train_labels):
        mean = centred[train_labels == label].mean(axis=0)
        prototypes[label] = mean / np.linalg.norm(mean)
    queries = np.stack([prototypes[label] for label in q_labels])
    val_vectors = targets[[row[r] for r in references]]
    return score(centred_similarity(queries, val_vectors), true_ref, q_labels, r_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=500)
    parser.add_argument("--imitations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qvimclap-bench-align"))
    parser.add_argument(
        "--minutes", type=float, help="peer training time (default: as long as our align took)"
    )
    parser.add_argument("--epochs", type=int, help="override the default align epochs (for quick checks)")
    parser.add_argument("--set", action="append", default=[], help="override an AlignConfig field: name=json")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--corpus", type=Path, help="use this pairs corpus instead of making one")
    args = parser.parse_args()

    # 1. corpus and split (the same split align makes)
    corpus = args.corpus or args.work / f"corpus-{args.refs}x{args.imitations}-s{args.seed}"
    start = time.monotonic()
    if not (corpus / "pairs.csv").is_file():
        make_corpus(
            corpus, num_references=args.refs, imitations_per_reference=args.imitations, seed=args.seed
        )
    synth_s = time.monotonic() - start
    overrides = {}
    for item in args.set:
        import json

        name, value = item.split("=", 1)
        overrides[name] = json.loads(value)
    if args.epochs:
        overrides["epochs"] = args.epochs
    config = AlignConfig(data=str(corpus), out=str(args.work / "run"), **overrides)
    dataset = open_dataset(corpus)
    train_set, val_set = split_by_reference(dataset, val_fraction=config.val_fraction, seed=config.seed)

    # 2. ours, default settings (CLAP targets are computed first and cached, outside the timed training)
    from qvimclap.models.clap import ClapEncoder
    from qvimclap.train.targets import CACHE_DIR_NAME, clap_targets

    clap = ClapEncoder.from_pretrained(config.clap, preprocessing=config.clap_preprocessing)
    start = time.monotonic()
    targets = clap_targets(
        list(dataset.references), clap, root=dataset.root, cache_dir=corpus / CACHE_DIR_NAME
    )
    targets_s = time.monotonic() - start
    start = time.monotonic()
    result = train_alignment(config, force=True, progress=False)
    align_s = time.monotonic() - start
    ours = {
        space: ev.evaluate_retrieval(
            val_set, result.run_dir, k=5, space=space, cache_dir=corpus / CACHE_DIR_NAME
        )
        for space in ("clap", "qvim")
    }

    # 3. validation table shared by the peer and the baseline
    queries = [p.query_path for p in val_set.pairs]
    references = list(val_set.references)
    index = {r: i for i, r in enumerate(references)}
    true_ref = np.array([index[p.reference_path] for p in val_set.pairs])
    q_labels = np.array([p.label for p in val_set.pairs])
    r_labels = np.array([val_set.label_of(r) for r in references])
    rows = {
        "ours, CLAP space": ours["clap"].metrics,
        "ours, QVIM space": ours["qvim"].metrics,
    }
    peer_s, peer_steps, clap_peer_steps = 0.0, 0, 0
    if not args.skip_peer:
        all_queries, all_refs = list(dataset.queries), list(dataset.references)
        q_index = {p: i for i, p in enumerate(all_queries)}
        r_index = {p: i for i, p in enumerate(all_refs)}
        train_pairs = np.array([(q_index[p.query_path], r_index[p.reference_path]) for p in train_set.pairs])
        query_clips = load_waveforms(all_queries, SAMPLE_RATE, 10.0)
        reference_clips = load_waveforms(all_refs, SAMPLE_RATE, 10.0)
        peer_s = 60 * args.minutes if args.minutes else align_s
        start = time.monotonic()
        imitation, reference, peer_steps = train_peer(
            train_pairs, query_clips, reference_clips, seconds=peer_s, clip_s=config.clip_duration_s
        )
        peer_s = time.monotonic() - start
        q = peer_embed(imitation, [query_clips[q_index[p]] for p in queries], config.clip_duration_s)
        r = peer_embed(reference, [reference_clips[r_index[p]] for p in references], config.clip_duration_s)
        rows["naive peer CNN pair (InfoNCE)"] = score(centred_similarity(q, r), true_ref, q_labels, r_labels)
        # The same naive CNN trained into CLAP space (against the centred CLAP targets), for the same time.
        train_targets = targets[np.unique(train_pairs[:, 1])]
        clap_imitation, _, clap_peer_steps = train_peer(
            train_pairs,
            query_clips,
            reference_clips,
            seconds=peer_s,
            clip_s=config.clip_duration_s,
            clap_targets=centered(targets, train_targets.mean(axis=0)),
        )
        q = peer_embed(clap_imitation, [query_clips[q_index[p]] for p in queries], config.clip_duration_s)
        rows["naive peer CNN into CLAP space (InfoNCE)"] = score(
            centred_similarity(q, targets[[r_index[p] for p in references]]), true_ref, q_labels, r_labels
        )
    rows["class oracle, CLAP space (ceiling of class knowledge)"] = clap_class_oracle(
        dataset, train_set, targets, true_ref, q_labels, r_labels, references
    )
    baseline = handmade_baseline(queries, references, true_ref, q_labels, r_labels)
    if baseline is not None:
        rows["hand-made log-mel stats (baseline_logmel.py)"] = baseline
    chance = ours["clap"].chance
    rows["chance"] = {key: chance[key] for key in rows["ours, CLAP space"]}

    # 4. table
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in overrides}
    print(
        f"corpus: {len(dataset.references)} references x {args.imitations} imitations "
        f"(synth {synth_s:.0f} s, CLAP targets {targets_s:.0f} s); validation: {len(references)} references, "
        f"{len(queries)} imitations; torch threads {torch.get_num_threads()}"
    )
    print(
        f"ours: AlignConfig defaults{' + ' + str(changed) if changed else ''} ({config.qvim}, "
        f"clip {config.clip_duration_s} s, {config.epochs} epochs, loss {config.loss['kind']}): "
        f"{align_s / 60:.1f} min, best epoch {result.best_epoch}; "
        f"peers: {peer_s / 60:.1f} min each, {peer_steps} steps (pair), {clap_peer_steps} steps (into CLAP)\n"
    )
    names = ["mrr", "recall@1", "recall@5", "recall@10", "class_ndcg"]
    print("| method | " + " | ".join(names) + " | MRR / chance |")
    print("|---|" + "---|" * (len(names) + 1))
    for method, row in rows.items():
        cells = " | ".join(f"{row[n]:.4f}" for n in names)
        print(f"| {method} | {cells} | {row['mrr'] / chance['mrr']:.2f}x |")
    print()
    for space in ("CLAP", "QVIM"):
        mine = rows[f"ours, {space} space"]["mrr"]
        parts = [f"{mine / chance['mrr']:.2f}x chance (bar 4x)"]
        if baseline is not None:
            parts.append(f"{mine / baseline['mrr']:.2f}x hand-made (bar 2x)")
        if "naive peer CNN pair (InfoNCE)" in rows:
            parts.append(f"{mine / rows['naive peer CNN pair (InfoNCE)']['mrr']:.2f}x peer (bar > 1x)")
        if space == "CLAP" and "naive peer CNN into CLAP space (InfoNCE)" in rows:
            peer = rows["naive peer CNN into CLAP space (InfoNCE)"]["mrr"]
            parts.append(f"{mine / peer:.2f}x the peer trained into CLAP space")
        print(f"- {space} space MRR {mine:.4f}: " + ", ".join(parts))
    print(f"- training time {align_s / 60:.1f} min (bar: 20 min)")


if __name__ == "__main__":
    main()
