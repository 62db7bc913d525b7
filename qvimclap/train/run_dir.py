"""The run folder: its creation and resume checks, epoch checkpoints, the metrics log, curves and summary.

``out`` holds ``config.json`` + ``model.safetensors`` (the best model), ``align_config.json``,
``metrics.jsonl``, ``curves.png``, ``summary.json`` and ``checkpoints/epoch-NNN.pt`` (the newest ``keep``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvimclap.errors import StoreError
from qvimclap.files import atomic_path
from qvimclap.train.config import AlignConfig

CHECKPOINT_DIR = "checkpoints"
TRAIN_CONFIG_NAME = "align_config.json"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
SUMMARY_NAME = "summary.json"


def prepare_run_dir(out: Path, config: AlignConfig, *, resume: bool, force: bool) -> None:
    """Create the run folder, or check it for ``resume``; an existing run needs ``force`` to be replaced."""
    config_path = out / TRAIN_CONFIG_NAME
    if resume:
        if not config_path.is_file():
            raise StoreError(
                f"{out}: nothing to resume (no {TRAIN_CONFIG_NAME}); drop --resume to start a run"
            )
        saved = AlignConfig.from_dict(json.loads(config_path.read_text()))
        given, before = config.to_dict(), saved.to_dict()
        given["data"], before["data"] = str(Path(config.data).resolve()), str(Path(saved.data).resolve())
        diff = [k for k in given if k not in ("out", "device") and given[k] != before[k]]
        if diff:
            raise StoreError(
                f"{out}: --resume with different settings ({', '.join(diff)}); "
                "repeat the original command with --resume, or start a new run with --force"
            )
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            raise StoreError(f"{out}: already exists; pass --force to replace it or --resume to continue it")
        if not config_path.is_file():
            raise StoreError(
                f"{out}: not empty and not a qvimclap run folder; refusing to delete it, pick another"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, config.to_dict())


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(out: Path, state: dict[str, Any], *, epoch: int, keep: int) -> Path:
    """Write ``checkpoints/epoch-NNN.pt`` atomically and remove all but the newest ``keep``."""
    folder = out / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch-{epoch:03d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINT_DIR).glob("epoch-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state :func:`save_checkpoint` wrote."""
    return torch.load(path, map_location="cpu", weights_only=False)


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """(Re)write ``metrics.jsonl`` from the history (one JSON object a line)."""
    with atomic_path(out / METRICS_NAME) as tmp:
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def append_metrics(out: Path, row: dict[str, Any]) -> None:
    with open(out / METRICS_NAME, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """PNG of the training loss (per logged step) and the validation MRR (per epoch, both spaces)."""
    from qvimclap.plots import new_figure, save_figure

    train = [h for h in history if h["event"] == "train"]
    val = [h for h in history if h["event"] == "val"]
    fig = new_figure(figsize=(10, 3.6))
    ax_loss, ax_val = fig.subplots(1, 2)
    ax_loss.plot([h["step"] for h in train], [h["loss"] for h in train], label="total")
    for term in ("imitation_clap", "reference_clap", "imitation_reference"):
        key = f"loss/{term}"
        if train and key in train[0]:
            ax_loss.plot([h["step"] for h in train], [h[key] for h in train], label=term, alpha=0.7)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.legend(fontsize=7)
    for key, label in (("val_mrr_clap", "target space"), ("val_mrr_qvim", "QVIM space")):
        ax_val.plot([h["epoch"] for h in val], [h[key] for h in val], marker="o", label=label)
    if val:
        ax_val.axhline(val[0]["chance_mrr"], color="grey", linestyle=":", label="chance")
    ax_val.set(xlabel="epoch", ylabel="MRR", title="validation MRR")
    ax_val.legend(fontsize=7)
    return save_figure(fig, path)
