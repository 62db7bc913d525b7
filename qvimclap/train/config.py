"""What an alignment run is given (:class:`AlignConfig`, saved as ``align_config.json``) and what it returns
(:class:`AlignResult`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qvimclap.config import require_known_keys
from qvimclap.errors import QvimclapError
from qvimclap.train.losses import LossConfig


class TrainingError(QvimclapError):
    """Training cannot go on (non-finite loss, nothing to train on)."""


@dataclass(frozen=True)
class AlignConfig:
    """Every setting of an alignment run; saved as ``align_config.json``; unknown keys raise.

    The defaults are the CPU recipe chosen on two corpus families on a 2-core CPU (README, "The recipe on two
    corpus families"): scratch mn02 towers and batch 16 make the most updates in a few minutes.
    ``clip_duration_s`` is the model's input policy (zero-pad or cut to this length); training takes seeded
    random crops of this length from longer clips. ``qvim`` is any QVIM source (``scratch:mn04``, an
    EfficientAT ``.pt``, the QVIM baseline ``.ckpt``, a saved folder); ``clap`` any CLAP source (``scratch``,
    a transformers folder, a LAION ``.pt``, an AudioLDM ``.ckpt``).

    ``target`` names the frozen embedder the model is aligned into by an embedder spec (``clap:scratch``,
    ``clap:<path>``, ``aisfx``, ``aisfx:<path>``); None means ``clap:<clap>``, so ``clap`` is shorthand for
    a CLAP target and ``clap_preprocessing`` applies to CLAP targets only. Training runs at most ``epochs``
    epochs and stops earlier after ``patience`` epochs without a better validation MRR, or after the last
    epoch that can end within ``max_minutes`` of wall time (a ceiling on the whole run,
    its data preparation included; at least one epoch runs; the best epoch is kept either way).
    """

    data: str
    out: str
    qvim: str = "scratch:mn02"
    clap: str = "scratch"
    clap_preprocessing: str = "audioldm"
    shared_towers: bool = True
    head: str = "linear"
    loss: dict[str, Any] = field(default_factory=lambda: LossConfig().to_dict())
    clip_duration_s: float = 4.0
    epochs: int = 100
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    val_fraction: float = 0.2
    seed: int = 0
    log_every: int = 10
    keep_checkpoints: int = 2
    bn_batches: int = 8
    #: Validation (precise BatchNorm, validation MRR, best model, checkpoint) follows the first and the last
    #: epoch and every epoch in which the step count passes a multiple of this; so every epoch on real data,
    #: and every few epochs on small data, where an epoch of 15 steps otherwise spends a quarter of its time
    #: validating.
    validate_every_steps: int = 50
    time_mask_fraction: float = 0.2
    #: training places a clip shorter than ``clip_duration_s`` at a random offset (else at the start)
    random_pad: bool = True
    #: training plays each imitation at a seeded random speed in [1 / (1 + x), 1 + x] (pitch and tempo
    #: together, as people imitate one sound higher or lower, faster or slower); 0 turns it off
    speed_perturb: float = 0.3
    cache_dir: str | None = None
    device: str = "auto"
    target: str | None = None
    patience: int | None = 20
    max_minutes: float | None = None
    #: DataLoader worker processes (None: 4 when training on a GPU, 0 on the CPU).
    num_workers: int | None = None
    #: bf16 autocast for the QVIM towers when training on a GPU (ignored on the CPU); targets stay float32.
    bf16: bool = True
    #: Join the target's own view of the audio to both towers (:mod:`qvimclap.models.view`): the frozen
    #: target network's features of each imitation, mapped by small MLPs into the targets (trained before the
    #: towers, inside ``max_minutes``). The features cost one target forward pass per imitation, once: they
    #: are cached with the targets; embedding costs one per clip. None: on for an aisfx target, where it was
    #: measured (bench/results/recipe_sweep.md), off for a CLAP; the config records what it resolved to.
    target_view: bool | None = None
    #: The preset these settings were resolved from (:mod:`qvimclap.train.presets`), for the record.
    preset: str | None = None

    def __post_init__(self) -> None:
        from qvimclap.models.target import parse_target, target_view_by_default

        LossConfig.from_dict(self.loss)  # validates
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise QvimclapError(f"{f.name} must be a finite number, got {value}")
        parse_target(self.target_spec)  # validates
        if self.target_view is None:
            object.__setattr__(self, "target_view", target_view_by_default(self.target_spec))
        if (self.patience is not None and self.patience < 1) or (
            self.max_minutes is not None and self.max_minutes <= 0
        ):
            raise QvimclapError(
                f"patience must be >= 1 and max_minutes > 0 (or unset), got {self.patience} and "
                f"{self.max_minutes}"
            )
        if self.validate_every_steps < 1:
            raise QvimclapError(f"validate_every_steps must be >= 1, got {self.validate_every_steps}")
        if self.epochs < 1 or self.batch_size < 2:
            raise QvimclapError(
                f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}"
            )
        if not 0 <= self.speed_perturb < 1:
            raise QvimclapError(f"speed_perturb must be in [0, 1), got {self.speed_perturb}")
        if self.lr <= 0 or self.clip_duration_s <= 0:
            raise QvimclapError(
                f"lr and clip_duration_s must be > 0, got {self.lr} and {self.clip_duration_s}"
            )
        if self.head not in ("linear", "mlp"):
            raise QvimclapError(f"head must be 'linear' or 'mlp', got {self.head!r}")

    @property
    def target_spec(self) -> str:
        """The target embedder's spec: ``target``, else the CLAP named by ``clap``."""
        return self.target or f"clap:{self.clap}"

    @property
    def loss_config(self) -> LossConfig:
        return LossConfig.from_dict(self.loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignConfig:
        require_known_keys(cls, data, "align config")
        return cls(**data)


@dataclass
class AlignResult:
    """What a run produced."""

    run_dir: Path
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, Any]]
    elapsed_s: float
    collapsed: bool
    #: why training ended before ``epochs`` (patience, the time budget), or None
    stopped: str | None = None
    #: with ``target_view``: the validation metrics of the saved model, towers and view joined
    target_view: dict[str, float] | None = None
