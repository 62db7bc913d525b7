"""Projection heads: map a QVIM encoder's pooled embedding into the target's 512-d space (CLAP's by default).

Two kinds, picked by :class:`HeadConfig.kind`:

- ``"linear"``: one affine map ``in_dim -> out_dim``;
- ``"mlp"``: the project log's two-layer adapter ``in_dim -> hidden_dim -> out_dim`` (960 -> 1024 -> 512 for
  mn10) with a GELU between the layers.

Heads return unnormalised ``[B, out_dim]`` float32; the aligned model L2-normalises after the head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qvimclap.config import require_known_keys
from qvimclap.errors import CheckpointError

HEAD_KINDS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of a projection head; round-trips through :meth:`to_dict` / :meth:`from_dict`."""

    in_dim: int
    out_dim: int = 512
    kind: str = "linear"
    hidden_dim: int = 1024
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise CheckpointError(f"head kind {self.kind!r} is not known; use one of {', '.join(HEAD_KINDS)}")
        if self.in_dim <= 0 or self.out_dim <= 0 or self.hidden_dim <= 0:
            raise CheckpointError(
                f"head dimensions must be positive, got in_dim={self.in_dim}, out_dim={self.out_dim}, "
                f"hidden_dim={self.hidden_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise CheckpointError(f"head dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        require_known_keys(cls, data, "head config", CheckpointError)
        return cls(**data)


class ProjectionHead(nn.Module):
    """``[B, in_dim]`` float32 -> ``[B, out_dim]`` float32 (unnormalised)."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        if config.kind == "linear":
            self.layers = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.in_dim, config.out_dim))
        else:
            self.layers = nn.Sequential(
                nn.Linear(config.in_dim, config.hidden_dim),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden_dim, config.out_dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"projection head expects [B, {self.config.in_dim}], got {list(x.shape)}")
        return self.layers(x)
