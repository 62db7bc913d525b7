"""Throughput of the QVIM encoder on 10 s clips: batched ``embed`` vs embedding one clip at a time.

Run: ``.venv/bin/python bench/bench_qvim.py [--num-clips 16] [--repeats 2] [--threads 2]``

For mn04 and mn10 (seeded scratch weights; speed does not depend on the values) this embeds the same clips
(a) one at a time, ``[encoder.embed([clip]) for clip in clips]`` (the reference way: one forward per file),
(b) with ``embed(clips, batch_size=1)`` and (c) with ``embed(clips, batch_size=16)``, interleaving the three
``--repeats`` times and keeping each one's best time, so the ratios compare runs made side by side on the same
(noisy, shared) machine. Each model runs in its own process, so its peak RSS is its own. Prints markdown.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time


def _measure(model: str, num_clips: int, repeats: int, threads: int) -> dict:
    import numpy as np
    import torch

    from qvimclap.models.qvim import QvimEncoder

    torch.set_num_threads(threads)
    encoder = QvimEncoder.from_pretrained(f"scratch:{model}")
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(320000)).astype(np.float32) for _ in range(num_clips)]
    ways = {
        "one_at_a_time": lambda: np.concatenate([encoder.embed([clip]) for clip in clips]),
        "batch_1": lambda: encoder.embed(clips, batch_size=1),
        "batch_16": lambda: encoder.embed(clips, batch_size=16),
    }
    encoder.embed(clips[:2], batch_size=2)  # warm-up (allocator, kernels)
    best = dict.fromkeys(ways, float("inf"))
    outputs = {}
    for _ in range(repeats):
        for name, run in ways.items():
            start = time.perf_counter()
            outputs[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    max_diff = float(np.abs(outputs["batch_16"] - outputs["one_at_a_time"]).max())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"model": model, "seconds": best, "max_diff": max_diff, "peak_rss_mib": peak_mib}


def _child(args: tuple, queue: mp.Queue) -> None:
    queue.put(_measure(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["mn04", "mn10"])
    args = parser.parse_args()

    context = mp.get_context("spawn")
    rows = []
    for model in args.models:
        queue = context.Queue()
        process = context.Process(
            target=_child, args=((model, args.num_clips, args.repeats, args.threads), queue)
        )
        process.start()
        rows.append(queue.get())
        process.join()

    setup = f"{args.num_clips} clips of 10 s at 32 kHz, {args.threads} threads, best of {args.repeats}"
    print(f"QVIM encoder, {setup}")
    print()
    print("| model | way | clips/s | vs one at a time | max abs diff vs one at a time | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        base = row["seconds"]["one_at_a_time"]
        for way, seconds in row["seconds"].items():
            diff = "0" if way == "one_at_a_time" else (f"{row['max_diff']:.1e}" if way == "batch_16" else "-")
            print(
                f"| {row['model']} | {way} | {args.num_clips / seconds:.2f} | {base / seconds:.2f}x "
                f"| {diff} | {row['peak_rss_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
