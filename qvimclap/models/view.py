"""The target's own view of the audio, added to an aligned model's towers (``align --target-view``).

The towers are trained from little data; the frozen target embedder was trained on a great deal. A
:class:`TargetView` lets an :class:`~qvimclap.models.aligned.AlignedModel` use both:

- a reference's view is its target embedding itself;
- an imitation's view is what small MLPs (``members`` of them, different seeds, averaged) make of the target
  network's features of the imitation (:func:`target_features`), trained into the training references'
  targets with align's loss (:func:`qvimclap.train.view.fit_target_view`).

A tower's vector and its view are joined as directions from ``center`` (the training targets' mean, inside the
unit sphere): the result is the unit vector that lies from the centre along the sum of the two unit
directions, a unit vector in the target space as every tower output is, which an index centred near the
training targets' mean ranks by that sum. Measured in bench/results/recipe_sweep.md ("Session 14").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qvimclap.config import require_known_keys
from qvimclap.errors import CheckpointError

#: What :func:`target_features` computes: every block's statistics where the target offers them, else its
#: embedding.
FEATURE_KINDS = ("layer-statistics", "embedding")


@dataclass(frozen=True)
class TargetViewConfig:
    """Sizes of a :class:`TargetView`: ``feature_dim`` inputs (of kind ``features``), ``members`` MLPs with
    ``hidden_dim`` units, ``embedding_dim`` outputs."""

    feature_dim: int
    embedding_dim: int
    features: str = "embedding"
    hidden_dim: int = 256
    members: int = 5

    def __post_init__(self) -> None:
        if self.features not in FEATURE_KINDS:
            raise CheckpointError(
                f"target view features must be one of {FEATURE_KINDS}, got {self.features!r}"
            )
        if min(self.feature_dim, self.embedding_dim, self.hidden_dim, self.members) < 1:
            raise CheckpointError(f"target view sizes must be >= 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetViewConfig:
        require_known_keys(cls, data, "target view config", CheckpointError)
        return cls(**data)


def member(config: TargetViewConfig) -> nn.Sequential:
    """One MLP of the imitation view (the dropout acts in training only)."""
    return nn.Sequential(
        nn.Linear(config.feature_dim, config.hidden_dim),
        nn.GELU(),
        nn.Dropout(0.2),
        nn.Linear(config.hidden_dim, config.embedding_dim),
    )


class TargetView(nn.Module):
    """Feature standardisation, the imitation MLPs and the geometry of the training targets."""

    def __init__(self, config: TargetViewConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(member(config) for _ in range(config.members))
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        self.register_buffer("center", torch.zeros(config.embedding_dim))
        self.requires_grad_(False)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def direction(self, vectors: torch.Tensor) -> torch.Tensor:
        """Unit directions of ``[N, D]`` target-space vectors from the centre."""
        return nn.functional.normalize(vectors - self.center, dim=-1, eps=1e-8)

    @torch.no_grad()
    def imitation_direction(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, F]`` target features of imitations -> ``[N, D]`` unit directions (the members' mean)."""
        x = self.standardise(features.to(self.center))
        return nn.functional.normalize(
            torch.stack([self.direction(m(x)) for m in self.members]).mean(0), dim=-1, eps=1e-8
        )

    @torch.no_grad()
    def join(self, tower: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """A tower's ``[N, D]`` vectors and their views' unit directions -> ``[N, D]`` unit vectors: where the
        ray from the centre along the sum of the two directions meets the unit sphere."""
        both = nn.functional.normalize(self.direction(tower) + view, dim=-1, eps=1e-8)
        along = both @ self.center  # solve |center + a * both| = 1 for a > 0 (|center| < 1)
        a = -along + (along**2 - self.center @ self.center + 1).clamp(min=0).sqrt()
        return self.center + a[:, None] * both


def feature_kind(target: Any) -> str:
    return "layer-statistics" if hasattr(target, "layer_statistics") else "embedding"


def target_features(target: Any, waveforms: Sequence[np.ndarray]) -> np.ndarray:
    """``[N, F]`` float32 features of clips at the target's rate, of :func:`feature_kind`."""
    if feature_kind(target) == "layer-statistics":
        return target.layer_statistics(waveforms)
    return target.embed(waveforms)
