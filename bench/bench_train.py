"""The training loop at VimSketch shape: today's loop (``--old-commit``, default the commit before the
restructure) against the current one, in the same run, on the same corpus and CPU threads.

For each loop and batch size, a fresh process runs ``train_alignment`` (mn10 towers, 10 s clips, a scratch
CLAP whose targets are cached beforehand for both loops) and stops after ``--steps`` steps; it reports the
time from calling ``train_alignment`` to the first step's loss, and steps/s over the steps after the first.
The current loop is run twice: ``cold`` (its prepared audio cache deleted first: it decodes every clip
once) and ``warm`` (the cache from the cold run: what every later run, ``--resume`` and DDP rank gets).
Then both loops run 2 steps under 2-process gloo DDP (1 thread each); each process reports its peak RSS.

The old loop runs from ``git archive <commit>`` extracted under ``--work``, with PYTHONPATH pointing at it.

    flock /tmp/qvimclap-heavy.lock .venv/bin/python bench/bench_train.py [--refs 540 --imitations 23]
        [--batch-sizes 16 64] [--ddp-batch 16] [--loops old,new] [--steps 4] [--threads 2]
        [--old-commit 29bb7e1] [--work DIR]

A worker that fails (the old loop is killed for memory at VimSketch shape with batch 64 on 24 GB) is a row
saying so, not the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- the worker: one process, one loop -----------------------------------------------------------------------


class _Stop(Exception):
    pass


def _run_steps(spec: dict, rank: int = 0) -> dict:
    """Run ``train_alignment`` until ``spec['steps']`` losses were computed; timings and peak RSS."""
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    import qvimclap.train.align as align_module

    stamps: list[float] = []
    real_loss = align_module.alignment_loss

    def counting_loss(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        out[0].detach().sum().item()  # the step's forward has really run
        stamps.append(time.perf_counter())
        if len(stamps) > spec["steps"]:
            raise _Stop
        return out

    align_module.alignment_loss = counting_loss
    config = align_module.AlignConfig(**spec["config"])
    start = time.perf_counter()
    try:
        align_module.train_alignment(config, force=True, progress=False)
    except _Stop:
        pass
    steps = len(stamps) - 1
    return {
        "rank": rank,
        "first_step_s": stamps[0] - start,
        "steps_per_s": (steps - 1) / (stamps[steps - 1] - stamps[0]) if steps > 1 else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "package": str(Path(align_module.__file__).parents[2]),  # which tree really ran
    }


def _ddp_rank(rank: int, world: int, port: int, spec: dict, out_dir: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    result = _run_steps(spec, rank)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def worker(spec: dict) -> None:
    if spec.get("ddp"):
        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out_dir = spec["config"]["out"] + "-ranks"
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        mp.spawn(_ddp_rank, args=(2, port, spec, out_dir), nprocs=2, join=True)
        print(json.dumps([json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in (0, 1)]))
    else:
        print(json.dumps(_run_steps(spec)))


# -- the driver ----------------------------------------------------------------------------------------------


def _old_tree(commit: str, work: Path) -> Path:
    """The package at ``commit``, extracted by ``git archive`` (not a checkout: the worktree is untouched)."""
    tree = work / f"old-{commit}"
    if not (tree / "qvimclap").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, "qvimclap"], check=True, capture_output=True
        ).stdout
        archive_path = work / f"old-{commit}.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(tree, filter="data")
    return tree


def _spawn(spec: dict, pythonpath: Path) -> dict | list:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(pythonpath),
    )
    if proc.returncode != 0:  # a row of its own (the old loop runs out of memory at VimSketch shape)
        killed = proc.returncode in (-9, 137) or "Killed" in proc.stderr
        reason = "killed (out of memory)" if killed else f"exit {proc.returncode}"
        print(f"worker failed ({pythonpath}): {reason}\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
        return {"failed": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--refs", type=int, default=540)
    parser.add_argument("--imitations", type=int, default=23)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 64], help="single-process rows")
    parser.add_argument("--ddp-batch", type=int, default=16, help="batch of the 2-process DDP rows (0: none)")
    parser.add_argument("--loops", default="old,new", help="which loops to run: old, new or both")
    parser.add_argument("--steps", type=int, default=4, help="Steps timed after the first.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qvim", default="scratch:mn10")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--old-commit", default="29bb7e1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/qvimclap-bench-train"))
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    from qvimclap.data.synth import make_corpus
    from qvimclap.models.clap import ClapEncoder
    from qvimclap.prepared import cache_dir_for, prepare_dataset

    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.work / f"corpus-{args.refs}x{args.imitations}"
    if not (corpus / "pairs.csv").is_file():
        t = time.perf_counter()
        make_corpus(
            corpus, num_references=args.refs, imitations_per_reference=args.imitations, seed=0, force=True
        )
        print(f"synth {corpus}: {time.perf_counter() - t:.0f} s", flush=True)
    old = _old_tree(args.old_commit, args.work)
    # the targets of both loops are cached first (not timed): this bench is about the loop
    clap = ClapEncoder.from_pretrained("scratch")
    prepare_dataset(corpus, target=clap, device="cpu")
    loops = args.loops.split(",")
    if "old" in loops:
        warm_old = {"threads": args.threads, "steps": 1, "config": _config(args, corpus, 2, "warm-old")}
        _spawn(warm_old, old)
    runs = [("old", old, False)] if "old" in loops else []
    runs += [("new cold", REPO, True), ("new warm", REPO, False)] if "new" in loops else []
    rows = []
    for batch in args.batch_sizes:
        for label, tree, clear in runs:
            if clear:
                for folder in cache_dir_for(corpus).glob("audio-*"):
                    shutil.rmtree(folder)
            spec = {
                "threads": args.threads,
                "steps": args.steps + 1,
                "config": _config(args, corpus, batch, label),
            }
            result = _spawn(spec, tree)
            rows.append((batch, label, result))
            print(batch, label, json.dumps(result), flush=True)
    ddp = {}
    ddp_runs = [("old", old)] if "old" in loops else []
    ddp_runs += [("new warm", REPO)] if "new" in loops else []
    for label, tree in ddp_runs if args.ddp_batch else []:
        spec = {
            "threads": 1,
            "steps": 2,
            "ddp": True,
            "config": _config(args, corpus, args.ddp_batch, label + "-ddp"),
        }
        ddp[label] = _spawn(spec, tree)
        print("ddp", label, json.dumps(ddp[label]), flush=True)
    print()
    print(
        f"corpus {args.refs} refs x {args.imitations} imitations "
        f"({args.refs * (args.imitations + 1)} clips), "
        f"{args.qvim}, {args.clip_seconds:g} s clips, {args.threads} threads; old = {args.old_commit} "
        f"(git archive, PYTHONPATH), new = this tree"
    )
    print()
    print("| batch | loop | start to first step (s) | steps/s | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for batch, label, r in rows:
        if "failed" in r:
            print(f"| {batch} | {label} | {r['failed']} | | |")
            continue
        print(
            f"| {batch} | {label} | {r['first_step_s']:.1f} | {r['steps_per_s']:.3f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    print()
    print(
        f"| 2-process DDP (batch {args.ddp_batch}, 1 thread each) | peak RSS rank 0 (MB) "
        "| peak RSS rank 1 (MB) | start to first step (s) |"
    )
    print("|---|---|---|---|")
    for label, ranks in ddp.items():
        if isinstance(ranks, dict):  # the worker failed
            print(f"| {label} | {ranks['failed']} | | |")
            continue
        print(
            f"| {label} | {ranks[0]['peak_rss_mb']:.0f} | {ranks[1]['peak_rss_mb']:.0f} | "
            f"{max(r['first_step_s'] for r in ranks):.1f} |"
        )


def _config(args, corpus: Path, batch: int, label: str) -> dict:
    return {
        "data": str(corpus),
        "out": str(args.work / "runs" / f"{label.replace(' ', '-')}-{batch}"),
        "qvim": args.qvim,
        "clip_duration_s": args.clip_seconds,
        "batch_size": batch,
        "epochs": 1,
        "log_every": 1000,
        "device": "cpu",
    }


if __name__ == "__main__":
    main()
