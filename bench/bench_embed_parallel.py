"""Embedding throughput under torchrun: clips/s with 1 and 2 processes (or any --procs), and their ratio.

    flock /tmp/qvimclap-heavy.lock .venv/bin/python bench/bench_embed_parallel.py          # 2 cores, CPU
    .venv/bin/python bench/bench_embed_parallel.py --procs 1,2,4,8 --clips 2000 --workers 4  # a GPU machine

Each run is ``torchrun --nproc-per-node P -m qvimclap.cli embed CORPUS --out S.h5`` on a fresh output, the
command a user runs; clips/s is the number of clips over the command's wall-clock time, so it includes
starting P Python processes and loading P models (a few seconds): it is what a user waits for. On a machine
with GPUs every process takes its own (``LOCAL_RANK``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qvimclap.data.synth import make_corpus  # noqa: E402


def run(procs: int, corpus: Path, out: Path, args: argparse.Namespace) -> float:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-port", "0",
        "-m", "qvimclap.cli", "embed", str(corpus), "--encoder", args.encoder, "--out", str(out),
        "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--no-progress",
    ]  # fmt: skip
    # torchrun's default of one thread per process: P processes share the cores instead of fighting for them
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or max(1, (os.cpu_count() or 1) // procs))}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="process counts to compare")
    parser.add_argument("--clips", type=int, default=96, help="reference clips in the built-in corpus")
    parser.add_argument("--encoder", default="qvim:scratch:mn04")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes per rank")
    parser.add_argument("--threads", type=int, default=0, help="OMP threads per process (0: cores / procs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus", num_references=args.clips, imitations_per_reference=1)
        rows = []
        for procs in [int(p) for p in args.procs.split(",")]:
            seconds = run(procs, corpus, Path(tmp) / f"out{procs}" / "lib.h5", args)
            rows.append((procs, seconds, args.clips / seconds))
    print(f"\n{args.clips} clips, {args.encoder}, batch {args.batch_size}, {args.workers} decoding worker(s)")
    print(f"{os.cpu_count()} cores; wall-clock of the whole torchrun command\n")
    print("| processes | seconds | clips/s | × 1 process |")
    print("|---:|---:|---:|---:|")
    for procs, seconds, rate in rows:
        print(f"| {procs} | {seconds:.1f} | {rate:.2f} | {rate / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
