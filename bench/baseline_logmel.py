"""Hand-made retrieval baseline on the built-in corpus: log-mel statistics and cosine similarity.

Makes a synthetic corpus (200 references x 3 imitations by default), describes every clip by the mean and the
standard deviation over time of its log-mel spectrogram (16 kHz, 64 bands), ranks the references by cosine
similarity to each imitation and prints MRR, recall@k and class NDCG against chance. The corpus is meant to
defeat this baseline (imitations move pitch into a vocal range, change timbre to voice and warp timing), so
the numbers should stay near chance; a learned encoder has to pick up envelope, contour and rhythm instead.

    .venv/bin/python bench/baseline_logmel.py [--refs 200] [--imitations 3] [--seed 0] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from qvimclap import evaluation as ev
from qvimclap.audio import load_audio
from qvimclap.data import open_dataset
from qvimclap.data.synth import make_corpus

SAMPLE_RATE = 16000
N_FFT, HOP, NUM_MELS = 512, 160, 64


def mel_filterbank(num_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """``[num_mels, n_fft // 2 + 1]`` triangular filters on the HTK mel scale, 0 Hz to Nyquist."""

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    edges_mel = np.linspace(0, mel(np.array(sample_rate / 2)), num_mels + 2)
    edges = 700 * (10 ** (edges_mel / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0, np.minimum(lower, upper))


def log_mel(x: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """float32 mono 16 kHz ``[T]`` -> ``[frames, num_mels]`` log power."""
    x = np.pad(x, (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return np.log(power @ fb.T + 1e-8)


def features(paths: list[Path], fb: np.ndarray) -> np.ndarray:
    """``[N, 2 * num_mels]``: mean and std over time of the log-mel of each file."""
    rows = []
    for path in paths:
        m = log_mel(load_audio(path, SAMPLE_RATE, allow_silent=True), fb)
        rows.append(np.concatenate([m.mean(0), m.std(0)]))
    return np.stack(rows)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def scores(similarity: np.ndarray, true_ref: np.ndarray, q_labels: np.ndarray, r_labels: np.ndarray) -> dict:
    ranked = ev.rank_by_similarity(similarity)
    ranks = ev.true_ranks(ranked, true_ref)
    # Within kind: rank only among the references of the query's own kind (telling instances apart).
    same_kind = q_labels[:, None] == r_labels[None, :]
    within = ev.true_ranks(ev.rank_by_similarity(np.where(same_kind, similarity, -np.inf)), true_ref)
    return {
        "MRR within kind": ev.mrr(within),
        "MRR": ev.mrr(ranks),
        "R@1": ev.recall_at_k(ranks, 1),
        "R@5": ev.recall_at_k(ranks, 5),
        "R@10": ev.recall_at_k(ranks, 10),
        "class NDCG": ev.class_ndcg(ranked, q_labels, r_labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=200)
    parser.add_argument("--imitations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=Path, help="use this corpus folder instead of making one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start, start_cpu = time.perf_counter(), time.process_time()
        corpus = args.corpus or make_corpus(
            Path(tmp) / "corpus",
            num_references=args.refs,
            imitations_per_reference=args.imitations,
            seed=args.seed,
        )
        synth_s, synth_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        dataset = open_dataset(corpus)
        ref_index = {r: i for i, r in enumerate(dataset.references)}
        true_ref = np.array([ref_index[p.reference_path] for p in dataset.pairs])
        q_labels = np.array([p.label for p in dataset.pairs])
        r_labels = np.array([dataset.label_of(r) for r in dataset.references])

        start = time.perf_counter()
        fb = mel_filterbank(NUM_MELS, N_FFT, SAMPLE_RATE)
        q_feat = features([p.query_path for p in dataset.pairs], fb)
        r_feat = features(list(dataset.references), fb)
        feature_s = time.perf_counter() - start

    center = np.concatenate([q_feat, r_feat]).mean(0)
    scale = np.concatenate([q_feat, r_feat]).std(0) + 1e-8
    rows = {
        "log-mel mean+std, cosine": scores(cosine(q_feat, r_feat), true_ref, q_labels, r_labels),
        "log-mel mean+std, z-scored, cosine": scores(
            cosine((q_feat - center) / scale, (r_feat - center) / scale), true_ref, q_labels, r_labels
        ),
        "log-mel mean only, z-scored, cosine": scores(
            cosine(
                (q_feat - center)[:, :NUM_MELS] / scale[:NUM_MELS],
                (r_feat - center)[:, :NUM_MELS] / scale[:NUM_MELS],
            ),
            true_ref,
            q_labels,
            r_labels,
        ),
    }
    num_refs = len(dataset.references)
    kind_sizes = {label: int((r_labels == label).sum()) for label in set(r_labels)}
    chance = {
        "MRR within kind": float(np.mean([ev.chance_mrr(kind_sizes[label]) for label in q_labels])),
        "MRR": ev.chance_mrr(num_refs),
        "R@1": ev.chance_recall_at_k(num_refs, 1),
        "R@5": ev.chance_recall_at_k(num_refs, 5),
        "R@10": ev.chance_recall_at_k(num_refs, 10),
        "class NDCG": ev.chance_class_ndcg(q_labels, r_labels),
    }

    print(
        f"corpus: {num_refs} references, {len(dataset.pairs)} imitations, {len(dataset.labels)} kinds "
        f"(made in {synth_s:.1f} s wall, {synth_cpu_s:.1f} s CPU; features in {feature_s:.1f} s)\n"
    )
    names = [n for n in chance if n != "MRR within kind"] + ["MRR within kind"]
    print("| method | " + " | ".join(names) + " | MRR / chance |")
    print("|---|" + "---|" * (len(names) + 1))
    for method, row in {**rows, "chance (random ranking)": chance}.items():
        cells = " | ".join(f"{row[n]:.4f}" for n in names)
        print(f"| {method} | {cells} | {row['MRR'] / chance['MRR']:.2f}x |")


if __name__ == "__main__":
    main()
