"""The recipe sweep: which `qvimclap align` settings hold up on both corpus families, at an equal time budget.

For every named variant (AlignConfig overrides on top of the defaults) and every family, this trains on the
training part of that family's corpus (``bench_align.make_split``: the same corpora and splits as the bars),
with a wall-time budget (``max_minutes``), and scores the best model on the held-out part in QVIM space and in
the target space; it also scores the model trained on one family on the other family's held-out part (cross
family). The naive CNN pair of ``bench_align.py`` is trained for the same budget as the floor.

    .venv/bin/python bench/sweep_recipe.py --family synth --minutes 2.5 \
        --variant 'defaults={}' --variant 'clip5={"clip_duration_s": 5.0}' ...

Families can run as parallel processes (one torch thread each); every row of one process had the same budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_align as ba  # noqa: E402

from qvimclap import evaluation as ev  # noqa: E402
from qvimclap.train.align import AlignConfig, load_waveforms, train_alignment  # noqa: E402


def held_out(family: str, args) -> tuple[Path, object]:
    """A family's corpus and its held-out part (as bench_align splits it)."""
    ns = argparse.Namespace(**{**vars(args), "family": family, "corpus": None})
    corpus, train_csv, dataset, train_set, val_set, _ = ba.make_split(ns)
    return corpus, train_csv, dataset, train_set, val_set


def score_model(run_dir: Path, val_set, corpus: Path) -> dict[str, float]:
    from qvimclap.targets import CACHE_DIR_NAME

    out = {}
    for space in ("qvim", "target"):
        report = ev.evaluate_retrieval(val_set, run_dir, k=5, space=space, cache_dir=corpus / CACHE_DIR_NAME)
        out[space] = report.metrics["mrr"]
        out[f"{space} class@1"] = report.metrics["class@1"]
        out["chance"] = report.chance["mrr"]
    return out


def naive_pair(dataset, train_set, val_set, seconds: float, seed: int = 0) -> tuple[float, int]:
    all_queries, all_refs = list(dataset.queries), list(dataset.references)
    q_index = {p: i for i, p in enumerate(all_queries)}
    r_index = {p: i for i, p in enumerate(all_refs)}
    train_pairs = np.array([(q_index[p.query_path], r_index[p.reference_path]) for p in train_set.pairs])
    query_clips = load_waveforms(all_queries, ba.PEER_SAMPLE_RATE, 10.0)
    reference_clips = load_waveforms(all_refs, ba.PEER_SAMPLE_RATE, 10.0)
    imitation, reference, steps = ba.train_peer(
        train_pairs, query_clips, reference_clips, seconds=seconds, seed=seed
    )
    references = list(val_set.references)
    index = {r: i for i, r in enumerate(references)}
    true_ref = np.array([index[p.reference_path] for p in val_set.pairs])
    q = ba.peer_embed(imitation, [query_clips[q_index[p.query_path]] for p in val_set.pairs])
    r = ba.peer_embed(reference, [reference_clips[r_index[p]] for p in references])
    labels = np.array([p.label for p in val_set.pairs])
    r_labels = np.array([val_set.label_of(x) for x in references])
    return ba.score(ba.centred_similarity(q, r), true_ref, labels, r_labels)["mrr"], steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, help="the family trained on")
    parser.add_argument("--cross", help="also score on this family's held-out part")
    parser.add_argument("--variant", action="append", required=True, help="NAME=json AlignConfig overrides")
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--train-refs", type=int, default=100)
    parser.add_argument("--val-refs", type=int, default=60)
    parser.add_argument("--imitations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="corpus and split seed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qvimclap-bench-align"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--naive-seeds", type=int, nargs="+", default=[0], help="training seeds of the pair")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus, train_csv, dataset, train_set, val_set = held_out(args.family, args)
    cross = held_out(args.cross, args) if args.cross else None
    rows = []
    for item in args.variant:
        name, value = item.split("=", 1)
        overrides = {"max_minutes": args.minutes, **json.loads(value)}
        config = AlignConfig(
            data=str(train_csv), out=str(args.work / f"sweep-{args.family}-{name}"), **overrides
        )
        start = time.monotonic()
        result = train_alignment(config, force=True, progress=False)
        elapsed = time.monotonic() - start
        row = {
            "variant": name,
            "overrides": overrides,
            "minutes": elapsed / 60,
            "best_epoch": result.best_epoch,
        }
        row |= {f"{args.family}:{k}": v for k, v in score_model(result.run_dir, val_set, corpus).items()}
        if cross is not None:
            mrr = ev.evaluate_retrieval(cross[4], result.run_dir, k=5, space="qvim").metrics["mrr"]
            row[f"{args.cross}:qvim (cross)"] = mrr
        print(json.dumps(row), flush=True)
        rows.append(row)
    for seed in [] if args.skip_naive else args.naive_seeds:
        mrr, steps = naive_pair(dataset, train_set, val_set, 60 * args.minutes, seed=seed)
        row = {"variant": "naive CNN pair", "seed": seed, "steps": steps, f"{args.family}:qvim": mrr}
        print(json.dumps(row), flush=True)
    print(f"\n{args.family}, {args.minutes} min per row, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
