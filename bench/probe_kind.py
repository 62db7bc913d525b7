"""What pretrained features of the imitation would buy in the target space: a diagnosis, not a recipe.

The class-oracle bar (bench_align.py) is a question of recognising the imitated kind from 240 training
imitations. On one family's split (the same corpus and split as the bars) this measures, on the held-out
imitations:

1. the kind a linear probe (logistic regression, trained on the training imitations) recognises from the
   frozen aisfx embedding of the imitation, and from hand-made log-mel statistics (bench/baseline_logmel.py);
2. retrieval in the aisfx space by an adapter on the frozen aisfx embedding of the imitation: a small MLP
   trained into the centred targets with align's loss (cross-entropy over every training target at 0.07,
   plus the kind term), seconds of training;
3. with ``--run`` (an aligned model trained on this split's training part, e.g. bench_align.py's
   ``run-<family>``), that model's queries, and the sum of its normalised queries and the adapter's;

next to the zero-shot row and the class oracle. The rows are scored as bench_align.py scores its rows, and
each is split by whether its top hit is of the imitated kind: the MRR of either part, and the class@1 at which
that row would reach the class oracle's MRR if only its kind recognition improved.
The adapter rows come twice: on the aisfx embedding (one adapter), and on statistics of every layer of the
aisfx network (:func:`layer_statistics`; the mean over ``--adapters`` adapters of different seeds).

    .venv/bin/python bench/probe_kind.py --family foley --run /tmp/qvimclap-bench-align/run-foley
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_logmel  # noqa: E402
import bench_align as ba  # noqa: E402

from qvimclap import evaluation as ev  # noqa: E402
from qvimclap.audio import load_audio  # noqa: E402
from qvimclap.models.aligned import SAMPLE_RATE, AlignedModel  # noqa: E402
from qvimclap.models.target import load_target  # noqa: E402
from qvimclap.train.losses import bank_cross_entropy, kind_cross_entropy  # noqa: E402


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def layer_statistics(encoder, waveform: np.ndarray) -> np.ndarray:
    """The frozen aisfx network's layer statistics of one clip (:meth:`AisfxEncoder.layer_statistics`)."""
    return encoder.layer_statistics([waveform])[0]


def kind_split(similarity, true_ref, q_labels, r_labels, oracle_mrr: float) -> dict:
    """The MRR of the queries whose top hit is of the imitated kind, of the others, and the class@1 at which
    those two MRRs would average to ``oracle_mrr`` (above 1: out of reach by kind recognition alone)."""
    ranked = ev.rank_by_similarity(similarity)
    reciprocal = 1.0 / ev.true_ranks(ranked, true_ref)
    right = r_labels[ranked[:, 0]] == q_labels
    mrr_right, mrr_wrong = reciprocal[right].mean(), reciprocal[~right].mean()
    return {
        "mrr_kind_right": float(mrr_right),
        "mrr_kind_wrong": float(mrr_wrong),
        "class@1_for_oracle": float((oracle_mrr - mrr_wrong) / (mrr_right - mrr_wrong)),
    }


def kind_probe(x_train, y_train, x_test, y_test) -> float:
    """Held-out accuracy of a logistic regression on standardised features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float((probe.fit(x_train, y_train).predict(x_test) == y_test).mean())


def train_adapter(
    features, target_row, bank, bank_kind, kind, center, *, steps=600, seed=0
) -> torch.nn.Module:
    """An MLP from standardised frozen features to the target space, trained as align trains its head: its
    output, centred on ``center``, against the centred training targets ``bank`` with the cross-entropy over
    all of them (tau 0.07) and the kind term (the mass on the imitated sound's kind)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(features.shape[1], 256),
        torch.nn.GELU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(256, bank.shape[1]),
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    x, bank_t = torch.from_numpy(features).float(), torch.from_numpy(bank).float()
    center_t, rows = torch.from_numpy(center).float(), torch.from_numpy(target_row)
    codes = {name: i for i, name in enumerate(sorted(set(bank_kind)))}
    bank_codes = torch.tensor([codes[name] for name in bank_kind])
    kind_codes = torch.tensor([codes[name] for name in kind])
    for _ in range(steps):
        batch = torch.randint(0, len(x), (32,))
        out = net(x[batch] + 0.1 * torch.randn(32, x.shape[1])) - center_t
        loss = bank_cross_entropy(out, bank_t, rows[batch]) + kind_cross_entropy(
            out, bank_t, bank_codes, kind_codes[batch], temperature=0.07
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["synth", "foley"], default="foley")
    parser.add_argument("--run", type=Path, help="an aligned model trained on this split's training part")
    parser.add_argument("--seed", type=int, default=0, help="corpus and split seed (as bench_align.py)")
    parser.add_argument("--train-refs", type=int, default=100, help="as bench_align.py")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qvimclap-bench-align"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--adapters", type=int, default=5, help="adapters averaged on layer stats")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    split_args = argparse.Namespace(
        family=args.family,
        train_refs=args.train_refs,
        val_refs=60,
        imitations=3,
        seed=args.seed,
        work=args.work,
        corpus=None,
    )
    _, _, _, train_set, val_set, _ = ba.make_split(split_args)
    target = load_target("aisfx")

    def decode(paths) -> list[np.ndarray]:
        return [load_audio(p, target.sample_rate) for p in paths]

    train_refs, val_refs = list(train_set.references), list(val_set.references)
    train_queries = [p.query_path for p in train_set.pairs]
    val_queries = [p.query_path for p in val_set.pairs]
    y_train = np.array([p.label for p in train_set.pairs])
    q_labels = np.array([p.label for p in val_set.pairs])
    r_labels = np.array([val_set.label_of(r) for r in val_refs])
    true_ref = np.array([val_refs.index(p.reference_path) for p in val_set.pairs])
    train_waves, val_waves = decode(train_queries), decode(val_queries)  # each imitation decoded once
    x_train, x_val = target.embed(train_waves), target.embed(val_waves)
    t_train, t_val = target.embed(decode(train_refs)), target.embed(decode(val_refs))
    l_train = np.stack([layer_statistics(target, w) for w in train_waves])
    l_val = np.stack([layer_statistics(target, w) for w in val_waves])

    mel = baseline_logmel
    bank_mel = mel.mel_filterbank(mel.NUM_MELS, mel.N_FFT, mel.SAMPLE_RATE)
    print(f"family {args.family}: kinds recognised from held-out imitations by a linear probe")
    print(f"- frozen aisfx embedding: {kind_probe(x_train, y_train, x_val, q_labels):.3f}")
    print(f"- frozen aisfx layer statistics: {kind_probe(l_train, y_train, l_val, q_labels):.3f}")
    stats_train, stats_val = mel.features(train_queries, bank_mel), mel.features(val_queries, bank_mel)
    print(f"- hand-made log-mel statistics: {kind_probe(stats_train, y_train, stats_val, q_labels):.3f}")
    print(f"- majority kind: {max(np.mean(q_labels == k) for k in set(q_labels)):.3f}\n")

    center = t_train.mean(axis=0)
    bank = l2(t_train - center)
    bank_kind = np.array([train_set.label_of(r) for r in train_refs])
    target_row = np.array([train_refs.index(p.reference_path) for p in train_set.pairs])

    def adapt(features, held_out, seed: int) -> np.ndarray:
        mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
        net = train_adapter((features - mean) / std, target_row, bank, bank_kind, y_train, center, seed=seed)
        with torch.no_grad():
            return net(torch.from_numpy((held_out - mean) / std).float()).numpy()

    adapted = adapt(x_train, x_val, 0)

    def unit(vectors: np.ndarray) -> np.ndarray:  # centred as a default index centres: on the references
        return l2(vectors - t_val.mean(axis=0))

    oracle = ba.class_oracle(bank_kind, t_train, q_labels, t_val, true_ref, r_labels)

    def row(queries: np.ndarray) -> dict:  # the cosine of unit() vectors: bench_align.centred_similarity
        similarity = l2(queries) @ unit(t_val).T
        return {
            **ba.score(similarity, true_ref, q_labels, r_labels),
            **kind_split(similarity, true_ref, q_labels, r_labels, oracle["mrr"]),
        }

    rows = {
        "zero-shot: aisfx embedding of the imitation": row(unit(x_val)),
        "adapter on the frozen aisfx embedding": row(unit(adapted)),
    }
    layered = l2(np.mean([unit(adapt(l_train, l_val, seed)) for seed in range(args.adapters)], axis=0))
    rows[f"adapters on the aisfx layer statistics (mean of {args.adapters})"] = row(layered)
    if args.run is not None:
        model = AlignedModel.from_pretrained(args.run).eval()
        ours = model.embedder("imitation").embed([load_audio(p, SAMPLE_RATE) for p in val_queries])
        rows[f"ours ({args.run.name})"] = row(unit(ours))
        rows["ours + adapter (sum of their unit vectors)"] = row(unit(ours) + unit(adapted))
        rows["ours + layer-statistics adapters (sum of their unit vectors)"] = row(unit(ours) + layered)
    rows["class oracle"] = oracle
    names = ["mrr", "class@1", "within_class_mrr", "mrr_kind_right", "mrr_kind_wrong", "class@1_for_oracle"]
    print("| aisfx space, held out | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for method, metrics in rows.items():
        cells = (f"{metrics[n]:.4f}" if n in metrics else "-" for n in names)
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
