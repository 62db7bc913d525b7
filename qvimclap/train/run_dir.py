"""The run folder: its creation and resume checks, epoch checkpoints, the metrics log, curves and summary.

``out`` holds ``config.json`` + ``model.safetensors`` (the best model), ``align_config.json``,
``metrics.jsonl``, ``curves.png``, ``summary.json`` and ``checkpoints/epoch-NNN.safetensors`` (the newest
``keep``; tensors + JSON, never a pickle: :mod:`~qvimclap.train.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvimclap.errors import CheckpointError, StoreError
from qvimclap.files import atomic_path
from qvimclap.train.checkpoint import SUFFIX, load_state, save_state
from qvimclap.train.config import AlignConfig

CHECKPOINT_DIR = "checkpoints"
TRAIN_CONFIG_NAME = "align_config.json"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
SUMMARY_NAME = "summary.json"

logger = logging.getLogger(__name__)


def prepare_run_dir(out: Path, config: AlignConfig, *, resume: bool, force: bool) -> bool:
    """Create the run folder, or check it for ``resume``; True when a fresh folder was made.

    An existing run needs ``force`` to be replaced, unless it never finished an epoch (nothing but
    ``align_config.json`` and logs: a run killed early, which :func:`removed_on_failure` could not clean).
    """
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: is a file, not a run folder; pick another --out")
    config_path = out / TRAIN_CONFIG_NAME
    if resume:
        if not config_path.is_file():
            raise StoreError(
                f"{out}: nothing to resume (no {TRAIN_CONFIG_NAME}); drop --resume to start a run"
            )
        saved = AlignConfig.from_dict(json.loads(config_path.read_text()))
        given, before = config.to_dict(), saved.to_dict()
        given["data"], before["data"] = str(Path(config.data).resolve()), str(Path(saved.data).resolve())
        diff = [k for k in given if k not in ("out", "device", "num_workers") and given[k] != before[k]]
        if diff:
            raise StoreError(
                f"{out}: --resume with different settings ({', '.join(diff)}); "
                "repeat the original command with --resume, or start a new run with --force"
            )
        return False
    if out.exists() and any(out.iterdir()):
        if not force and not _unfinished_run(out):
            raise StoreError(f"{out}: already exists; pass --force to replace it or --resume to continue it")
        if not config_path.is_file():
            raise StoreError(
                f"{out}: not empty and not a qvimclap run folder; refusing to delete it, pick another"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, config.to_dict())
    return True


def _unfinished_run(out: Path) -> bool:
    """A qvimclap run folder without a checkpoint or a model: nothing in it is worth keeping."""
    return (
        (out / TRAIN_CONFIG_NAME).is_file()
        and latest_checkpoint(out) is None
        and not any((out / CHECKPOINT_DIR).glob("epoch-*"))
        and not (out / "model.safetensors").exists()
    )


@contextmanager
def removed_on_failure(out: Path, *, fresh: bool) -> Iterator[None]:
    """Remove a fresh run folder when the run fails before its first checkpoint (left behind, it would make
    the next run ask for ``--force``); a run with a checkpoint stays for ``--resume``."""
    try:
        yield
    except BaseException:
        if fresh and _unfinished_run(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def rng_state() -> dict[str, Any]:
    """Every random state a run draws from: torch's CPU and CUDA generators (the mel masks draw on the
    model's device), numpy's and python's."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, state: dict[str, Any], *, epoch: int, keep: int) -> Path:
    """Write ``checkpoints/epoch-NNN.safetensors`` atomically (:mod:`~qvimclap.train.checkpoint`) and remove
    all but the newest ``keep``."""
    folder = out / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    path = save_state(folder / f"epoch-{epoch:03d}{SUFFIX}", state)
    for old in sorted(folder.glob(f"epoch-*{SUFFIX}"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINT_DIR).glob(f"epoch-*{SUFFIX}"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state :func:`save_checkpoint` wrote (never unpickles)."""
    return load_state(path)


def load_latest_checkpoint(out: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint's state, or None when the run has none yet.

    A damaged one (truncated by a full disk, zero bytes) is skipped with a warning for the one before it.
    A pickled ``.pt`` checkpoint (qvimclap before the safe format, or planted) is refused, never loaded.
    """
    folder = out / CHECKPOINT_DIR
    pickled = sorted(folder.glob("epoch-*.pt"))
    if pickled:
        raise CheckpointError(
            f"{pickled[-1]}: a pickled checkpoint (an older qvimclap's, or not qvimclap's); it is not loaded "
            "because unpickling can run code; start the run again with --force"
        )
    found = sorted(folder.glob(f"epoch-*{SUFFIX}"), reverse=True)
    for i, path in enumerate(found):
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            fallback = found[i + 1].name if i + 1 < len(found) else None
            if fallback is None:
                raise CheckpointError(
                    f"{err}; no intact checkpoint is left in {folder}; start the run again with --force"
                ) from None
            logger.warning("%s; resuming from %s instead", err, fallback)
    return None


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
