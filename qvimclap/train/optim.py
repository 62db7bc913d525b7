"""Optimisation: AdamW with linear warm-up then cosine decay, and per-group gradient norms for the log."""

from __future__ import annotations

import math

import torch
from torch import nn

from qvimclap.train.config import AlignConfig


class WarmupCosine:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at
    ``total_steps``.

    A callable object rather than a closure, so that the scheduler's state_dict (and every checkpoint) keeps
    ``total_steps``, which :func:`fit_schedule_to_budget` may shorten after the first epoch.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float) -> None:
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


warmup_cosine = WarmupCosine


def budget_epochs(epochs: int, epoch: int, remaining_s: float, epoch_s: float) -> int:
    """The epoch after which a time-budgeted run will stop: a run starts another epoch only when it can end
    within the budget, so after ``epoch`` (with ``remaining_s`` of the budget left for epochs of
    ``epoch_s`` each) as many whole epochs as fit still run; never more than ``epochs``."""
    more = math.floor(max(0.0, remaining_s) / max(epoch_s, 1e-9))
    return max(epoch, min(epochs, epoch + more))


def another_epoch_fits(
    elapsed_s: float,
    budget_s: float,
    *,
    train_s: float,
    validation_s: float,
    validates_now: bool,
    tail_s: float,
) -> bool:
    """Whether a run that has trained for ``elapsed_s`` can train another epoch and still end within
    ``budget_s``: this epoch's validation if it has one (``validates_now``), the next epoch's training
    (``train_s``) and its validation (it would be the last, and the last always validates), and what follows
    the last epoch (``tail_s``)."""
    ahead = (validation_s if validates_now else 0.0) + train_s + validation_s + tail_s
    return elapsed_s + ahead <= budget_s


def fit_schedule_to_budget(
    scheduler: torch.optim.lr_scheduler.LambdaLR, epochs: int, steps_per_epoch: int
) -> None:
    """Make the cosine end where a time-budgeted run will stop (``epochs`` epochs) instead of at
    ``config.epochs``: a run cut by its budget then still anneals its learning rate."""
    schedule = scheduler.lr_lambdas[0]
    assert isinstance(schedule, WarmupCosine)
    schedule.total_steps = max(schedule.warmup_steps + 1, epochs * steps_per_epoch)


def build_optimizer(
    trainable: list[nn.Parameter], config: AlignConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``trainable`` and its schedule (per step) over ``config.epochs`` epochs."""
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(round(config.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total_steps, warmup, config.min_lr_ratio)
    )
    return optimizer, scheduler


def group_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """L2 norm of the gradients of each parameter group (0 for a group without gradients)."""
    norms = {}
    for name, params in groups.items():
        grads = [p.grad.detach() for p in params if p.grad is not None]
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0
    return norms
