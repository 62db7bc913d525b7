"""One-shot GPU check of the training loop, inside 10 minutes on one CUDA GPU.

Run from the repository root with the machine's own Python (3.12 with CUDA torch); qvimclap is used from this
checkout (no install). Missing dependencies (faiss, soundfile, soxr, diffusers, ...) are installed from a
local folder of wheels, with no network: ``pip install --no-index --find-links WHEELS``.

1. make a built-in corpus (``--refs`` x ``--imitations``) and prepare it (decode + CLAP targets on the GPU);
2. train mn10 towers at 10 s clips, batch ``--batch-size``, for ``--epochs`` epochs, with bf16 autocast and
   then in float32: steps/s (training steps only), the share of wall time the GPU is busy (nvidia-smi samples
   every 0.2 s during training), and the validation MRR of each (equal MRR is the bar for bf16 by default);
3. run the CUDA tests (``tests/test_align_cuda.py``: resume equals the uninterrupted run, float32 and bf16);
4. print a table and write ``gpu_check.json`` into ``--out`` (default ``$OUT`` when set).

    python bench/gpu_check.py --wheels /path/to/wheels [--out DIR]
    python bench/gpu_check.py --tiny --device cpu          # a CPU smoke run of the same script (seconds)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: import name -> distribution, for qvimclap's dependencies a CUDA machine's Python may lack
DEPENDENCIES = {
    "numpy": "numpy",
    "safetensors": "safetensors",
    "faiss": "faiss-cpu",
    "h5py": "h5py",
    "typer": "typer",
    "soundfile": "soundfile",
    "soxr": "soxr",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "transformers": "transformers",
    "diffusers": "diffusers",
    "pytest": "pytest",
}


def install_missing(wheels: Path | None) -> list[str]:
    """pip-install, from ``wheels`` only, every dependency that does not import; the names installed."""
    missing = [dist for module, dist in DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        if wheels is None:
            raise SystemExit(f"missing {missing}; pass --wheels DIR (a folder of wheels for them)")
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            *missing,
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return missing


class GpuBusy:
    """Samples nvidia-smi's GPU utilisation every 0.2 s while active; ``share`` is their mean / 100."""

    def __init__(self, index: int) -> None:
        self.index, self.samples, self._stop = index, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = [
            "nvidia-smi",
            f"--id={self.index}",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
        ]
        while not self._stop.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)

    def __enter__(self) -> GpuBusy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def share(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def train_once(corpus: Path, out: Path, args, *, bf16: bool) -> dict:
    """One training run; steps/s over its training steps (validation excluded), its best validation MRR."""
    import torch

    import qvimclap.train.align as align_module

    stamps: list[float] = []
    real_loss = align_module.alignment_loss

    def stamped(*a, **k):
        stamps.append(time.perf_counter())
        return real_loss(*a, **k)

    align_module.alignment_loss = stamped
    config = align_module.AlignConfig(
        data=str(corpus),
        out=str(out),
        qvim=args.qvim,
        clip_duration_s=args.clip_seconds,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        device=args.device,
        bf16=bf16,
        log_every=50,
    )
    device_index = torch.device(args.device).index or 0 if args.device.startswith("cuda") else None
    start = time.perf_counter()
    busy = GpuBusy(device_index) if device_index is not None else None
    try:
        if busy:
            busy.__enter__()
        result = align_module.train_alignment(config, force=True, progress=False)
    finally:
        if busy:
            busy.__exit__()
        align_module.alignment_loss = real_loss
    wall = time.perf_counter() - start
    steps_per_epoch = len(stamps) // args.epochs
    # steps/s inside epochs (from each epoch's first to last step), so validation and start-up do not count
    spans = [stamps[(e + 1) * steps_per_epoch - 1] - stamps[e * steps_per_epoch] for e in range(args.epochs)]
    return {
        "bf16": bf16 and args.device.startswith("cuda"),
        "steps": len(stamps),
        "steps_per_s": (steps_per_epoch - 1) * args.epochs / sum(spans) if sum(spans) > 0 else float("nan"),
        "wall_s": wall,
        "gpu_busy_share": busy.share if busy else None,
        "val_mrr_clap": result.best_val["val_mrr_clap"],
        "val_mrr_qvim": result.best_val["val_mrr_qvim"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheels", type=Path, help="Folder of wheels for missing dependencies (no network).")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--refs", type=int, default=120)
    parser.add_argument("--imitations", type=int, default=8)
    parser.add_argument("--qvim", default="scratch:mn10")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--tiny", action="store_true", help="A smoke run: 8 refs x 2, mn01, 1 s clips, batch 4."
    )
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.refs, args.imitations, args.qvim, args.clip_seconds, args.batch_size = (
            8,
            2,
            "scratch:mn01",
            1.0,
            4,
        )
    clock = time.perf_counter()
    installed = install_missing(args.wheels)
    sys.path.insert(0, str(REPO))
    import torch

    from qvimclap.data.synth import make_corpus
    from qvimclap.models.clap import ClapEncoder
    from qvimclap.prepared import prepare_dataset

    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "installed": installed,
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    work = Path(tempfile.mkdtemp(prefix="qvimclap-gpu-check-"))
    t = time.perf_counter()
    corpus = make_corpus(work / "corpus", num_references=args.refs, imitations_per_reference=args.imitations)
    report["synth_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prepare_dataset(corpus, target=ClapEncoder.from_pretrained("scratch"), device=args.device)
    report["prepare_s"] = time.perf_counter() - t
    report["runs"] = [
        train_once(corpus, work / f"run-{m}", args, bf16=m == "bf16") for m in ("bf16", "float32")
    ]
    if not args.skip_tests:
        t = time.perf_counter()
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_align_cuda.py"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
        )
        report["cuda_tests"] = {
            "exit_code": tests.returncode,
            "summary": (tests.stdout.strip().splitlines() or [""])[-1],
            "s": time.perf_counter() - t,
        }
    report["total_s"] = time.perf_counter() - clock
    print(
        f"\n{report['device']}, torch {report['torch']}; synth {report['synth_s']:.0f} s, "
        f"prepare {report['prepare_s']:.0f} s; {args.refs} refs x {args.imitations}, {args.qvim}, "
        f"{args.clip_seconds:g} s clips, batch {args.batch_size}, {args.epochs} epochs\n"
    )
    print("| precision | steps/s | GPU busy | wall (s) | val MRR clap | val MRR qvim |")
    print("|---|---|---|---|---|---|")
    for run in report["runs"]:
        busy = "n/a" if run["gpu_busy_share"] is None else f"{100 * run['gpu_busy_share']:.0f}%"
        print(
            f"| {'bf16' if run['bf16'] else 'float32'} | {run['steps_per_s']:.2f} | {busy} | "
            f"{run['wall_s']:.0f} | {run['val_mrr_clap']:.4f} | {run['val_mrr_qvim']:.4f} |"
        )
    if "cuda_tests" in report:
        print(f"\nCUDA tests (resume equality, float32 and bf16): {report['cuda_tests']['summary']}")
    print(f"total {report['total_s']:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
