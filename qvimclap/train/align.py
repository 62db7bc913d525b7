"""Train QVIM towers + a projection head into a frozen target embedder's space (``qvimclap align``).

:func:`train_alignment` is laid out as numbered steps, each delegating to the module of its concept:

1. the run folder (:mod:`~qvimclap.train.run_dir`) and the process group (:mod:`~qvimclap.train.distributed`);
2. the data (:mod:`~qvimclap.train.data`): the split by reference (no reference on both sides), the frozen
   targets of every reference (computed once into a cache, :mod:`qvimclap.targets`; CLAP never runs per step)
   and the decoded clips;
3. the aligned model built from the QVIM source (:mod:`~qvimclap.train.model`), AdamW with linear warm-up
   then cosine decay (:mod:`~qvimclap.train.optim`), or all of it resumed from the last epoch checkpoint;
4. the epochs: the encoder's mel augmentations (train mode), gradient clipping; loss terms, per-group gradient
   norms and the embedding spread logged every ``log_every`` steps;
5. after the first and last epochs and every ``validate_every_steps`` steps, rounded to whole epochs
   (:mod:`~qvimclap.train.validation`): precise BatchNorm statistics, validation MRR in the
   target space (imitation tower vs the references' targets; CLAP space by default) and in QVIM space
   (imitation tower vs reference tower), a collapse check, an epoch checkpoint, and the best model so far
   (highest validation MRR, the mean of both spaces) written to the run folder as an aligned model folder;
   then an early stop when ``patience`` epochs brought no better model or when another epoch would not end
   within ``max_minutes`` (a ceiling on the whole run; the cosine is fitted after the first epoch to end
   where the budget will stop the run);
6. a PNG of the curves and ``summary.json``.

The run folder ``out`` holds: ``config.json`` + ``model.safetensors`` (the best model; load it with
``AlignedModel.from_pretrained(out)``), ``align_config.json``, ``metrics.jsonl``, ``curves.png``,
``summary.json`` and ``checkpoints/epoch-NNN.safetensors`` (model, optimizer, scheduler, RNG states (CUDA's
too), history; the last two are kept; a safe format that is never unpickled).

Determinism: the pair order and the crop of each clip are drawn from ``(seed, epoch, index)``, the
augmentations from torch's RNG seeded with ``seed + rank`` and saved in every checkpoint, so ``resume=True``
after a kill continues to the same result as an uninterrupted run (up to float round-off).

Distributed: started by ``torchrun`` (``WORLD_SIZE > 1``), every process joins a gloo/nccl group, trains a
shard of each epoch's pairs under DistributedDataParallel (``batch_size`` is the global batch), and rank 0
alone validates, logs and writes files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qvimclap.device import resolve_device
from qvimclap.errors import QvimclapError
from qvimclap.models.view import TargetView
from qvimclap.train.config import AlignConfig, AlignResult, TrainingError
from qvimclap.train.data import (
    PairDataset,
    batch_files,
    batch_loader,
    collate_pairs,
    epoch_batches,
    load_waveforms,
    prepare_data,
    seeded_crop,
)
from qvimclap.train.distributed import barrier, from_rank0, gather_to_all, init_distributed
from qvimclap.train.losses import alignment_loss, needs_reference
from qvimclap.train.model import build_model, load_clap, load_target_embedder
from qvimclap.train.optim import (
    another_epoch_fits,
    budget_epochs,
    build_optimizer,
    fit_schedule_to_budget,
    group_grad_norms,
    warmup_cosine,
)
from qvimclap.train.run_dir import (
    CHECKPOINT_DIR,
    CURVES_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    TRAIN_CONFIG_NAME,
    append_metrics,
    latest_checkpoint,
    load_latest_checkpoint,
    plot_curves,
    prepare_run_dir,
    removed_on_failure,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
    write_metrics,
)
from qvimclap.train.validation import (
    COLLAPSE_SPREAD_RATIO,
    embed_clips,
    is_collapsed,
    mean_pairwise_cosine,
    recalibrate_batch_norm,
    retrieval_mrr,
    validate,
)
from qvimclap.train.view import fit_target_view

# The names this module always offered, now defined in the module of their concept.
__all__ = [
    "CHECKPOINT_DIR",
    "COLLAPSE_SPREAD_RATIO",
    "CURVES_NAME",
    "METRICS_NAME",
    "SUMMARY_NAME",
    "TRAIN_CONFIG_NAME",
    "AlignConfig",
    "AlignResult",
    "PairDataset",
    "TrainingError",
    "build_model",
    "collate_pairs",
    "embed_clips",
    "epoch_batches",
    "group_grad_norms",
    "init_distributed",
    "is_collapsed",
    "latest_checkpoint",
    "load_clap",
    "load_waveforms",
    "mean_pairwise_cosine",
    "plot_curves",
    "prepare_run_dir",
    "recalibrate_batch_norm",
    "retrieval_mrr",
    "save_checkpoint",
    "seeded_crop",
    "train_alignment",
    "validate",
    "warmup_cosine",
    "write_metrics",
]

logger = logging.getLogger(__name__)


def train_alignment(config: AlignConfig, *, resume: bool = False, force: bool = False, progress: bool = True):
    """Run (or resume) an alignment; returns an :class:`AlignResult` on rank 0 (None on other ranks)."""
    device = resolve_device(config.device)  # before any work: a wrong --device fails at once
    # 1. process group and run folder
    rank, world = init_distributed()
    out = Path(config.out)
    if config.batch_size % world:
        raise QvimclapError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    fresh = prepare_run_dir(out, config, resume=resume, force=force) if rank == 0 else False
    barrier(world)
    with removed_on_failure(out, fresh=fresh):  # a failure before the first checkpoint leaves no folder
        return _train(config, out, device, rank=rank, world=world, resume=resume, progress=progress)


def _train(
    config: AlignConfig,
    out: Path,
    device: torch.device,
    *,
    rank: int,
    world: int,
    resume: bool,
    progress: bool,
) -> AlignResult | None:
    """Steps 2-6 of :func:`train_alignment`."""
    start_time = time.monotonic()
    # 2. split, targets, clips
    target = load_target_embedder(config)
    data = prepare_data(config, target, rank=rank, world=world, progress=progress)
    train_data: PairDataset = data["train"]
    steps_per_epoch = len(
        epoch_batches(len(train_data), config.batch_size, seed=config.seed, epoch=0, world=world)
    )
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{config.data}: {len(train_data)} training pairs make no full batch of {config.batch_size}; "
            "lower --batch-size"
        )
    # 3. model, optimiser, schedule (or all of them from the last checkpoint)
    # the target view first (it needs no tower), so that a time budget covers it
    view = fit_target_view(data, target, seed=config.seed) if config.target_view and rank == 0 else None
    model = build_model(config, data["fingerprint"]).to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(trainable, config, steps_per_epoch)
    torch.manual_seed(config.seed + rank)
    state: dict[str, Any] = {"history": [], "best": {"epoch": 0, "val_mrr": -1.0}, "epoch": 0, "step": 0}
    if resume:
        state = _resume(out, model, optimizer, scheduler, state, rank=rank, world=world)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not needs_reference(config.loss_config) and not config.shared_towers,
        )
    if rank == 0:
        write_metrics(out, state["history"])
    run = _Run(config, out, data, model, train_model, optimizer, scheduler, device, rank, world, start_time)
    collapsed, stopped = False, None
    # 4-5. epochs, each followed by validation, a checkpoint and the best model so far; early stop by
    # validation (patience) or by the time budget
    first = state["epoch"] + 1
    budget_s = None if config.max_minutes is None else 60 * config.max_minutes
    train_times: list[float] = []
    validation_s = 0.0  # until the first validation says what one costs
    for epoch in range(first, config.epochs + 1):
        epoch_start = time.monotonic()
        state["step"] = run.train_epoch(epoch, state, progress=progress)
        trained = time.monotonic()
        train_times.append(trained - epoch_start)
        validates_now = _validates(epoch, steps_per_epoch, config)
        # the budget is a ceiling: no epoch starts that could not end (validated, and the view joined) in it;
        # epochs vary by a few seconds, so the slowest of the last three stands for the next, and joining
        # the view (loading the best model, validating it with the view) costs up to two validations
        out_of_time = from_rank0(
            budget_s is not None
            and not another_epoch_fits(
                trained - start_time,
                budget_s,
                train_s=max(train_times[-3:]),
                validation_s=validation_s,
                validates_now=validates_now,
                tail_s=2 * validation_s if view is not None else 0.0,
            ),
            world,
        )
        validated = out_of_time or validates_now
        if validated:
            # each rank's random streams go into the checkpoint, so that every rank resumes its own
            other_rngs = gather_to_all(rng_state() if rank else None, world)[1:]
            if rank == 0:
                collapsed = run.end_epoch(epoch, state, other_rngs)
            barrier(world)
            validation_s = time.monotonic() - trained
        if epoch == first and budget_s is not None:
            now = time.monotonic()
            # an epoch's cost: its training, and its share of the validations; the last epoch's validation
            # and the view's are set aside
            share = min(1.0, steps_per_epoch / config.validate_every_steps)
            epoch_s = train_times[-1] + share * validation_s
            tail_s = validation_s * (3 if view is not None else 1)
            last = budget_epochs(config.epochs, epoch, budget_s - (now - start_time) - tail_s, epoch_s)
            last = from_rank0(last, world)
            fit_schedule_to_budget(scheduler, last, steps_per_epoch)
            if rank == 0:
                logger.info("the time budget allows about %d epochs: the cosine now ends there", last)
                append_metrics(out, {"event": "schedule", "epoch": epoch, "cosine_ends_at_epoch": last})
        stopped = _stop_reason(
            config, epoch, state, validated=validated, out_of_time=out_of_time, rank=rank, world=world
        )
        if stopped is not None:
            logger.info("stopping after epoch %d: %s", epoch, stopped)
            break
    # 6. the target view (with --target-view), curves and summary
    if rank != 0:
        return None
    history, best = state["history"], state["best"]
    viewed = None
    if view is not None and not collapsed:
        viewed = _add_target_view(out, data, target, view)
    elapsed = time.monotonic() - start_time
    plot_curves(history, out / CURVES_NAME)
    summary = {
        "best_epoch": best["epoch"],
        "best": best,
        "elapsed_s": elapsed,
        "collapsed": collapsed,
        "stopped": stopped,
        "target_view": viewed,
    }
    write_json(out / SUMMARY_NAME, summary)
    return AlignResult(out, best["epoch"], best, history, elapsed, collapsed, stopped, viewed)


def _add_target_view(out: Path, data: dict[str, Any], target: Any, view: TargetView) -> dict[str, float]:
    """Join the trained target view to the best model, save it, and return its validation metrics (the
    towers' own are the best epoch's)."""
    from qvimclap.models.aligned import AlignedModel

    start = time.monotonic()
    model = AlignedModel.from_pretrained(out).with_target_view(view)
    metrics = validate(model, data["val"], target=target)
    model.save_pretrained(out)
    metrics = {**metrics, "seconds": time.monotonic() - start}
    append_metrics(out, {"event": "target_view", **metrics})
    logger.info(
        "target view: val_mrr %.4f (target %.4f, qvim %.4f)",
        metrics["val_mrr"],
        metrics["val_mrr_clap"],
        metrics["val_mrr_qvim"],
    )
    return metrics


def _validates(epoch: int, steps_per_epoch: int, config: AlignConfig) -> bool:
    """Whether ``epoch`` ends with validation and a checkpoint: the first, the last, and every epoch in
    which the step count passes a multiple of ``validate_every_steps`` (a function of the epoch alone, so
    that a resumed run validates where the uninterrupted one did)."""
    every = config.validate_every_steps
    passed = (epoch * steps_per_epoch) // every > ((epoch - 1) * steps_per_epoch) // every
    return passed or epoch in (1, config.epochs)


def _stop_reason(
    config: AlignConfig,
    epoch: int,
    state: dict[str, Any],
    *,
    validated: bool,
    out_of_time: bool,
    rank: int,
    world: int,
) -> str | None:
    """Why training stops after ``epoch`` (None: it goes on). Every process reaches the same answer: the
    validation results live on rank 0, so the patience rule is broadcast from there; ``out_of_time`` already
    was."""
    if out_of_time:
        return f"the time budget of {config.max_minutes} min had no room for another epoch"
    if not validated or config.patience is None:
        return None
    waited = epoch - state["best"]["epoch"] >= config.patience if rank == 0 else False
    if not from_rank0(waited, world):
        return None
    return f"no better validation MRR for {config.patience} epochs (best epoch {state['best']['epoch']})"


def _resume(
    out: Path, model, optimizer, scheduler, state: dict[str, Any], *, rank: int = 0, world: int = 1
) -> dict[str, Any]:
    """Load the newest checkpoint (if any) into the model, optimiser, schedule and RNGs; the run's state."""
    saved = load_latest_checkpoint(out)
    if saved is None:
        return state
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rngs = [saved["rng"], *saved.get("rng_other_ranks", [])]
    if len(rngs) != world:
        logger.warning(
            "%s was saved by %d process(es) and resumes on %d: random streams restart from rank 0's, so "
            "the run will not repeat an uninterrupted one exactly",
            out,
            len(rngs),
            world,
        )
    set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
    logger.info("resuming %s after epoch %d (step %d)", out, saved["epoch"], saved["step"])
    return {
        "history": saved["history"],
        "best": saved["best"],
        "epoch": saved["epoch"],
        "step": saved["step"],
    }


@dataclass
class _Run:
    """The pieces one epoch needs, so that the epoch's two halves read as functions of (epoch, state)."""

    config: AlignConfig
    out: Path
    data: dict[str, Any]
    model: nn.Module
    train_model: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    rank: int
    world: int
    start_time: float

    def __post_init__(self) -> None:
        model, data, device = self.model, self.data, self.device
        self.loss_config = self.config.loss_config
        self.use_reference = needs_reference(self.loss_config)
        self.groups = model.parameter_groups()
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.all_targets = data["targets"].to(device)
        train_refs = np.unique(data["train"].pairs[:, 1])
        # bf16 autocast for the towers on a GPU (faster, equal validation MRR: see the README); not on the CPU
        self.bf16 = self.config.bf16 and device.type == "cuda"
        # the training references' targets: the negatives of target_negatives="all" (validation references
        # are never among them) and, averaged, the centre; bank_row maps a reference index to its row
        self.bank = self.all_targets[train_refs]
        self.center = self.bank.mean(0)
        self.bank_row = torch.full((len(self.all_targets),), -1, dtype=torch.long, device=device)
        rows = torch.arange(len(train_refs), device=device)
        self.bank_row[torch.as_tensor(train_refs, device=device)] = rows
        self.reference_kind = data["reference_kind"].to(device)
        self.bank_kind = self.reference_kind[torch.as_tensor(train_refs, device=device)]

    def train_epoch(self, epoch: int, state: dict[str, Any], *, progress: bool) -> int:
        """Step 4 for one epoch; returns the global step count after it.

        Batches come from a DataLoader over the epoch's seeded batch order (workers, pinned memory and
        non-blocking copies on a GPU). The host never waits for the device between steps: the finite-loss
        check, the gradient norms and the logged values are read every ``log_every`` steps (and at the end
        of the epoch); a non-finite loss then stops the run naming the first offending batch's files.
        """
        from tqdm.auto import tqdm

        config, train_data, step = self.config, self.data["train"], state["step"]
        train_data.set_epoch(epoch)
        batches = epoch_batches(
            len(train_data),
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world,
        )
        loader = batch_loader(train_data, batches, device=self.device, num_workers=config.num_workers)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not progress or self.rank != 0,
            leave=False,
        )
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, pair index) not yet checked
        for batch in bar:
            reference_index = batch["reference_index"].to(self.device, non_blocking=True)
            imitation_audio = batch["imitation"].to(self.device, non_blocking=True)
            reference_audio = (
                batch["reference"].to(self.device, non_blocking=True) if self.use_reference else None
            )
            targets = self.all_targets[reference_index]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                imitation, reference = self.train_model(imitation_audio, reference_audio)
            imitation = imitation.float()  # the loss and the targets stay float32
            reference = None if reference is None else reference.float()
            loss, terms = alignment_loss(
                imitation,
                reference,
                targets,
                self.loss_config,
                groups=reference_index,
                center=self.center,
                bank=self.bank,
                bank_index=self.bank_row[reference_index],
                bank_kind=self.bank_kind,
                kind=self.reference_kind[reference_index],
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            check = step % config.log_every == 0 or step == 1
            log = check and self.rank == 0
            norms = group_grad_norms(self.groups) if log else {}
            nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            pending.append((step, loss.detach(), batch["pair_index"]))
            if check:
                self._check_finite(pending, epoch)
            if log:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                row = {
                    "event": "train",
                    "epoch": epoch,
                    "step": step,
                    "lr": self.scheduler.get_last_lr()[0],
                    "loss": loss.item(),
                    **{f"loss/{k}": v.item() for k, v in terms.items()},
                    **{f"grad_norm/{k}": v for k, v in norms.items()},
                    "batch_mean_cosine": mean_pairwise_cosine(imitation.detach()),
                }
                state["history"].append(row)
                append_metrics(self.out, row)
        self._check_finite(pending, epoch)
        return step

    def _check_finite(self, pending: list[tuple[int, torch.Tensor, torch.Tensor]], epoch: int) -> None:
        """Raise naming the first batch in ``pending`` whose loss is not finite (one host-device sync)."""
        if not pending:
            return
        losses = torch.stack([loss for _, loss, _ in pending]).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step, loss, pair_index = pending[int(bad[0])]
            files = batch_files(self.data["train"], pair_index, self.data["paths"])
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}; "
                f"batch files: {files}; check these files or lower --lr"
            )
        pending.clear()

    def end_epoch(self, epoch: int, state: dict[str, Any], other_rngs: list[dict[str, Any]]) -> bool:
        """Step 5 on rank 0: precise BN, validation, collapse check, best model, checkpoint (with the random
        states of ranks 1.. in ``other_rngs``); collapsed?"""
        config, model, val = self.config, self.model, self.data["val"]
        recalibrate_batch_norm(
            model, self.data["train"], num_batches=config.bn_batches, batch_size=config.batch_size
        )
        metrics = validate(model, val)
        model.train()
        collapsed = is_collapsed(metrics)
        if collapsed:
            logger.warning(
                "epoch %d: embeddings collapsed (mean cosine between different imitations %.5f, between "
                "their targets %.5f); lower --lr",
                epoch,
                metrics["val_mean_cosine"],
                metrics["targets_mean_cosine"],
            )
        row = {
            "event": "val",
            "epoch": epoch,
            "step": state["step"],
            **metrics,
            "chance_mrr": val["chance_mrr"],
            "collapsed": collapsed,
            "elapsed_s": time.monotonic() - self.start_time,
        }
        state["history"].append(row)
        append_metrics(self.out, row)
        logger.info(
            "epoch %d: val MRR clap %.4f qvim %.4f (chance %.4f)",
            epoch,
            metrics["val_mrr_clap"],
            metrics["val_mrr_qvim"],
            val["chance_mrr"],
        )
        if metrics["val_mrr"] > state["best"]["val_mrr"]:
            state["best"] = {"epoch": epoch, **metrics}
            model.save_pretrained(self.out)
        save_checkpoint(
            self.out,
            {
                "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "rng_other_ranks": other_rngs,
                "epoch": epoch,
                "step": state["step"],
                "history": state["history"],
                "best": state["best"],
            },
            epoch=epoch,
            keep=config.keep_checkpoints,
        )
        return collapsed
