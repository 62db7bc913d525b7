"""The bars for `qvimclap align`: our defaults vs a naive CNN pair, peers, oracles and baselines, per family.

On a corpus family (``--family synth`` or ``foley``; ``--train-refs`` + ``--val-refs`` references x
``--imitations``), split by reference into a training part and a held-out validation part, this

1. trains the aligned model with the default ``AlignConfig`` (from scratch) on the training part only (align
   picks its best epoch on its own validation subset of those references; the held-out part is never seen)
   and times it;
2. trains, for the same wall time (or ``--minutes``), the naive CNN pair the issue describes: two 4-layer CNNs
   on 16 kHz log-mel, 4 s zero-padded clips with random time shifts, batch 16, InfoNCE tau 0.07, AdamW 1e-3;
   and the same naive CNN trained into the target space (InfoNCE against the centred targets);
3. evaluates on the held-out part: ours in the target space (imitation tower vs the targets of the
   references) and in QVIM space (imitation tower vs reference tower), the peers, the zero-shot row (the
   target embedder's own embedding of the imitation), the class oracle in the target space, the hand-made
   log-mel statistics of ``bench/baseline_logmel.py`` and chance;
4. prints a markdown table with MRR, recall@1/5/10, class NDCG, class@1 (the top hit is of the imitated
   kind), within-class MRR (the true sound among its own kind only), MRR / chance, and the ratios the bars
   ask for.

    .venv/bin/python bench/bench_align.py --family foley [--train-refs 100 --val-refs 60 --imitations 3]
        [--minutes M] [--set name=json] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qvimclap import evaluation as ev
from qvimclap.audio import load_audio
from qvimclap.data import open_dataset, split_by_reference
from qvimclap.data.pairs import write_pairs_csv
from qvimclap.data.synth import FAMILIES, make_corpus
from qvimclap.files import atomic_path
from qvimclap.index import centered
from qvimclap.models.aligned import AlignedModel
from qvimclap.models.mel import MelConfig, MelFrontEnd
from qvimclap.train.align import AlignConfig, epoch_batches, load_waveforms, train_alignment
from qvimclap.train.losses import info_nce

BENCH_DIR = Path(__file__).resolve().parent
#: The naive pair's recipe (the issue's): 16 kHz log-mel, 4 s clips, batch 16, tau 0.07, AdamW 1e-3.
PEER_SAMPLE_RATE = 16000
PEER_CLIP_S = 4.0
PEER_BATCH = 16
PEER_MEL = MelConfig(
    sample_rate=PEER_SAMPLE_RATE, n_mels=64, n_fft=512, win_length=400, hop_length=160, fmax_aug_range=1000
)


# -- the naive peers -----------------------------------------------------------------------------------------


class PeerCNN(nn.Module):
    """Log-mel ``[B, mels, frames]`` -> ``[B, dim]``: four conv-BN-ReLU-maxpool blocks, mean pool, linear."""

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


def shifted_window(x: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random time shift: a random window of a longer clip, or a shorter one at a random offset in zeros."""
    extra = len(x) - num_samples
    if extra >= 0:
        start = int(rng.integers(0, extra + 1))
        return x[start : start + num_samples]
    offset = int(rng.integers(0, -extra + 1))
    return np.pad(x, (offset, -extra - offset))


def train_peer(
    train_pairs: np.ndarray,
    query_clips: list[np.ndarray],
    reference_clips: list[np.ndarray],
    *,
    seconds: float,
    seed: int = 0,
    targets: np.ndarray | None = None,
):
    """Train the naive pair with InfoNCE for ``seconds`` of wall time; returns (imitation CNN, reference CNN,
    steps). Clips are 16 kHz.

    With ``targets`` (``[R, D]``, centred and normalised, one row per reference) the peer is the naive way
    into the target space instead: one D-dim CNN on the imitation, InfoNCE against the references targets; the
    reference CNN is then None.
    """
    torch.manual_seed(seed)
    mel = MelFrontEnd(PEER_MEL).eval()
    if targets is None:
        imitation, reference = PeerCNN(), PeerCNN()
    else:
        imitation, reference = PeerCNN(dim=targets.shape[1]), None
    params = list(imitation.parameters()) + (list(reference.parameters()) if reference is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    num_samples = int(PEER_CLIP_S * PEER_SAMPLE_RATE)
    start, step, epoch = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds:
        epoch += 1
        for batch in epoch_batches(len(train_pairs), PEER_BATCH, seed=seed, epoch=epoch):
            if time.monotonic() - start >= seconds:
                break
            rng = np.random.default_rng([seed, epoch, step])
            rows = train_pairs[batch]
            q = np.stack([shifted_window(query_clips[i], num_samples, rng) for i in rows[:, 0]])
            with torch.no_grad():
                q_mel = mel(torch.from_numpy(q))
            if reference is None:
                other = torch.from_numpy(targets[rows[:, 1]])
            else:
                r = np.stack([shifted_window(reference_clips[i], num_samples, rng) for i in rows[:, 1]])
                with torch.no_grad():
                    r_mel = mel(torch.from_numpy(r))
                other = reference(r_mel)
            loss = info_nce(imitation(q_mel), other, temperature=0.07, groups=torch.from_numpy(rows[:, 1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return imitation.eval(), None if reference is None else reference.eval(), step


@torch.no_grad()
def peer_embed(model: PeerCNN, clips: list[np.ndarray]) -> np.ndarray:
    """16 kHz clips zero-padded or cut (keeping the start) to 4 s -> ``[N, D]`` L2-normalised."""
    mel = MelFrontEnd(PEER_MEL).eval()
    num_samples = int(PEER_CLIP_S * PEER_SAMPLE_RATE)
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
        "class@1": ev.class_at_1(ranked, q_labels, r_labels),
        "within_class_mrr": ev.within_class_mrr(ranked, true_ref, q_labels, r_labels),
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


def class_oracle(train_labels, train_vectors, q_labels, val_vectors, true_ref, r_labels) -> dict:
    """Target-space retrieval by a query that knows its class perfectly and nothing else.

    The query is the class prototype: the mean of the centred, normalised targets of that class's training
    references. References are ranked as a default index ranks them (centred on their mean). This is what any
    imitation encoder that only recognises the kind can reach in this space.
    """
    center = train_vectors.mean(axis=0)
    centred = train_vectors - center
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    prototypes = {}
    for label in set(train_labels):
        mean = centred[train_labels == label].mean(axis=0)
        prototypes[label] = mean / np.linalg.norm(mean)
    queries = np.stack([prototypes[label] for label in q_labels])
    return score(centred_similarity(queries, val_vectors), true_ref, q_labels, r_labels)


def make_split(args) -> tuple[Path, Path, object, object, object, float]:
    """The corpus, its full dataset, the training part as ``bench-train.csv`` and the held-out part."""
    refs = args.train_refs + args.val_refs
    corpus = args.corpus or args.work / f"{args.family}-{refs}x{args.imitations}-s{args.seed}"
    start = time.monotonic()
    if not (corpus / "pairs.csv").is_file():
        make_corpus(
            corpus,
            num_references=refs,
            imitations_per_reference=args.imitations,
            seed=args.seed,
            family=args.family,
        )
    synth_s = time.monotonic() - start
    dataset = open_dataset(corpus)
    train_set, val_set = split_by_reference(
        dataset, val_fraction=args.val_refs / len(dataset.references), seed=args.seed
    )
    train_csv = corpus / "bench-train.csv"
    if not train_csv.is_file():  # deterministic for (corpus, seed); parallel runs may read it meanwhile
        with atomic_path(train_csv) as tmp:
            write_pairs_csv(tmp, list(train_set.pairs), root=corpus)
    return corpus, train_csv, dataset, train_set, val_set, synth_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=list(FAMILIES), default="synth")
    parser.add_argument("--train-refs", type=int, default=100)
    parser.add_argument("--val-refs", type=int, default=60)
    parser.add_argument("--imitations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qvimclap-bench-align"))
    parser.add_argument("--minutes", type=float, help="peer training time (default: as long as ours took)")
    parser.add_argument("--set", action="append", default=[], help="override an AlignConfig field: name=json")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=json: also train ours with these overrides (on top of --set) and report it, for a sweep",
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--corpus", type=Path, help="use this pairs corpus instead of making one")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. corpus and split: ours trains on the training part only
    corpus, train_csv, dataset, train_set, val_set, synth_s = make_split(args)
    overrides = {}
    for item in args.set:
        name, value = item.split("=", 1)
        overrides[name] = json.loads(value)
    config = AlignConfig(data=str(train_csv), out=str(args.work / f"run-{args.family}"), **overrides)

    # 2. the targets of every reference (cached, outside the timed training)
    from qvimclap.models.aligned import SAMPLE_RATE
    from qvimclap.prepared import cache_dir_for, prepare_dataset
    from qvimclap.targets import clap_targets
    from qvimclap.train.model import load_target_embedder

    cache_dir = cache_dir_for(corpus)
    target = load_target_embedder(config)
    target_name = config.target_spec
    start = time.monotonic()
    all_refs = list(dataset.references)
    targets = clap_targets(all_refs, target, root=dataset.root, cache_dir=cache_dir)
    targets_s = time.monotonic() - start
    features_s = 0.0
    if config.target_view:  # the target's features of every imitation: cached with the targets, as align does
        start = time.monotonic()
        prepare_dataset(
            dataset,
            target=target,
            cache_dir=cache_dir,
            sample_rate=SAMPLE_RATE,
            max_duration_s=max(config.clip_duration_s, 10.0),
            view_features=True,
        )
        features_s = time.monotonic() - start

    # 3. ours, default settings
    start = time.monotonic()
    result = train_alignment(config, force=True, progress=False)
    align_s = time.monotonic() - start
    ours = {
        space: ev.evaluate_retrieval(val_set, result.run_dir, k=5, space=space, cache_dir=cache_dir)
        for space in ("target", "qvim")
    }
    towers = {}
    if config.target_view:  # the same run's towers without the view, for the record
        model = AlignedModel.from_pretrained(result.run_dir).towers_only()
        towers = {
            space: ev.evaluate_retrieval(val_set, model, k=5, space=space, cache_dir=cache_dir)
            for space in ("target", "qvim")
        }
    variants = {}
    for item in args.variant:  # the same budget and split, other settings: rows of the recipe sweep
        name, value = item.split("=", 1)
        settings = {
            **config.to_dict(),
            **json.loads(value),
            "out": str(args.work / f"run-{args.family}-{name}"),
        }
        start = time.monotonic()
        run = train_alignment(AlignConfig.from_dict(settings), force=True, progress=False)
        minutes = (time.monotonic() - start) / 60
        for space in ("qvim", "target"):
            report = ev.evaluate_retrieval(val_set, run.run_dir, k=5, space=space, cache_dir=cache_dir)
            label = f"variant {name} {value}, {space} space ({minutes:.1f} min, best epoch {run.best_epoch})"
            variants[label] = report.metrics

    # 4. the held-out table shared by every other row
    queries = [p.query_path for p in val_set.pairs]
    references = list(val_set.references)
    index = {r: i for i, r in enumerate(references)}
    true_ref = np.array([index[p.reference_path] for p in val_set.pairs])
    q_labels = np.array([p.label for p in val_set.pairs])
    r_labels = np.array([val_set.label_of(r) for r in references])
    r_index = {p: i for i, p in enumerate(all_refs)}
    val_targets = targets[[r_index[p] for p in references]]
    rows = {
        "ours, QVIM space": ours["qvim"].metrics,
        "ours, target space": ours["target"].metrics,
        **{f"ours' towers without the view, {name} space": r.metrics for name, r in towers.items()},
        **variants,
    }
    peer_s, peer_steps, target_peer_steps = 0.0, 0, 0
    if not args.skip_peer:
        all_queries = list(dataset.queries)
        q_index = {p: i for i, p in enumerate(all_queries)}
        train_pairs = np.array([(q_index[p.query_path], r_index[p.reference_path]) for p in train_set.pairs])
        query_clips = load_waveforms(all_queries, PEER_SAMPLE_RATE, 10.0)
        reference_clips = load_waveforms(all_refs, PEER_SAMPLE_RATE, 10.0)
        peer_s = 60 * args.minutes if args.minutes else align_s
        start = time.monotonic()
        imitation, reference, peer_steps = train_peer(
            train_pairs, query_clips, reference_clips, seconds=peer_s
        )
        peer_s = time.monotonic() - start
        q = peer_embed(imitation, [query_clips[q_index[p]] for p in queries])
        r = peer_embed(reference, [reference_clips[r_index[p]] for p in references])
        rows["naive CNN pair (InfoNCE)"] = score(centred_similarity(q, r), true_ref, q_labels, r_labels)
        train_targets = targets[np.unique(train_pairs[:, 1])]
        target_imitation, _, target_peer_steps = train_peer(
            train_pairs,
            query_clips,
            reference_clips,
            seconds=peer_s,
            targets=centered(targets, train_targets.mean(axis=0)),
        )
        q = peer_embed(target_imitation, [query_clips[q_index[p]] for p in queries])
        rows["naive CNN into the target space"] = score(
            centred_similarity(q, val_targets), true_ref, q_labels, r_labels
        )
    zero_shot = target.embed([load_audio(p, target.sample_rate) for p in queries])
    rows["zero-shot: target embedding of the imitation"] = score(
        centred_similarity(zero_shot, val_targets), true_ref, q_labels, r_labels
    )
    train_refs = list(train_set.references)
    rows["class oracle, target space"] = class_oracle(
        np.array([train_set.label_of(r) for r in train_refs]),
        targets[[r_index[p] for p in train_refs]],
        q_labels,
        val_targets,
        true_ref,
        r_labels,
    )
    baseline = handmade_baseline(queries, references, true_ref, q_labels, r_labels)
    if baseline is not None:
        rows["hand-made log-mel stats (baseline_logmel.py)"] = baseline
    chance = ours["target"].chance
    rows["chance"] = {key: chance[key] for key in rows["ours, QVIM space"]}

    # 5. table
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in overrides}
    print(
        f"family {args.family}: {len(dataset.references)} references x {args.imitations} imitations "
        f"(synth {synth_s:.0f} s, targets {targets_s:.0f} s, the view's features {features_s:.0f} s; "
        f"once per corpus, cached, outside the training time); training part {len(train_refs)} references, "
        f"held out {len(references)} references / {len(queries)} imitations; target {target_name}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"ours: AlignConfig defaults{' + ' + str(changed) if changed else ''} ({config.qvim}, "
        f"clip {config.clip_duration_s} s, {config.epochs} epochs, loss {config.loss_config.kind}): "
        f"{align_s / 60:.1f} min, best epoch {result.best_epoch}; "
        f"peers: {peer_s / 60:.1f} min each, {peer_steps} steps (pair), "
        f"{target_peer_steps} steps (into target)\n"
    )
    names = ["mrr", "recall@1", "recall@5", "recall@10", "class_ndcg", "class@1", "within_class_mrr"]
    print("| method | " + " | ".join(names) + " | MRR / chance |")
    print("|---|" + "---|" * (len(names) + 1))
    for method, row in rows.items():
        cells = " | ".join(f"{row[n]:.4f}" for n in names)
        print(f"| {method} | {cells} | {row['mrr'] / chance['mrr']:.2f}x |")
    print()
    qvim, tgt = rows["ours, QVIM space"]["mrr"], rows["ours, target space"]["mrr"]
    if "naive CNN pair (InfoNCE)" in rows:
        print(
            f"- QVIM space: {qvim / rows['naive CNN pair (InfoNCE)']['mrr']:.2f}x the naive CNN pair "
            "(bar > 1x)"
        )
    parts = [
        f"{tgt / rows['class oracle, target space']['mrr']:.2f}x the class oracle",
        f"{tgt / rows['zero-shot: target embedding of the imitation']['mrr']:.2f}x zero-shot",
    ]
    if "naive CNN into the target space" in rows:
        parts.append(f"{tgt / rows['naive CNN into the target space']['mrr']:.2f}x the naive CNN into it")
    print("- target space: " + ", ".join(parts) + " (bars > 1x)")
    print(f"- training time {align_s / 60:.1f} min (bar: 20 min)")


if __name__ == "__main__":
    main()
