"""CLAP audio embedding throughput on CPU: 10 s clips, batch 1 and 8, 2 threads.

Compares, in the same run, qvimclap's ClapEncoder (AudioLDM-style preprocessing at 16 kHz, batched, inference
mode) with transformers' ClapFeatureExtractor + ClapAudioModelWithProjection called naively (48 kHz input,
autograd on), and times the AudioLDM-style preprocessing and the feature extractor alone. Random weights
(``scratch``): the cost does not depend on the values. Run: ``.venv/bin/python bench/bench_clap.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

NUM_CLIPS = 8
REPEATS = 2
THREADS = 2


def best_time(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(THREADS)
    from qvimclap.models.clap import ClapEncoder, make_feature_extractor, prepare_audioldm_waveform

    encoder = ClapEncoder.from_pretrained("scratch")
    model, fe = encoder.model, make_feature_extractor()
    rng = np.random.default_rng(0)
    clips_16k = [(0.2 * rng.standard_normal(160_000)).astype(np.float32) for _ in range(NUM_CLIPS)]
    clips_48k = [(0.2 * rng.standard_normal(480_000)).astype(np.float32) for _ in range(NUM_CLIPS)]

    def naive(batch_size: int) -> None:
        for start in range(0, NUM_CLIPS, batch_size):
            inputs = fe(clips_48k[start : start + batch_size], sampling_rate=48_000, return_tensors="pt")
            model(**inputs).audio_embeds.detach()

    rows = []
    prep = best_time(lambda: [prepare_audioldm_waveform(c) for c in clips_16k]) / NUM_CLIPS
    feats = (
        best_time(lambda: [encoder.features([prepare_audioldm_waveform(c)]) for c in clips_16k]) / NUM_CLIPS
    )
    rows.append(
        ("AudioLDM-style preprocessing alone (16 kHz -> 48 kHz)", f"{prep * 1e3:.1f} ms/clip", "", "")
    )
    rows.append(("  + CLAP feature extractor (log-mel)", f"{feats * 1e3:.1f} ms/clip", "", ""))
    for batch_size in (1, 8):
        ours = best_time(lambda b=batch_size: encoder.embed(clips_16k, batch_size=b))
        ref = best_time(lambda b=batch_size: naive(b))
        rows.append(
            (
                f"embed, batch {batch_size}",
                f"{NUM_CLIPS / ours:.2f} emb/s",
                f"{NUM_CLIPS / ref:.2f} emb/s",
                f"{ref / ours:.2f}x",
            )
        )
    print(f"CLAP HTSAT-tiny, {NUM_CLIPS} clips of 10 s, {THREADS} CPU threads, best of {REPEATS}\n")
    print("| what | qvimclap | naive transformers | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
