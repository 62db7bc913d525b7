"""EfficientAT MobileNetV3 ("mn"): the audio tagger of Schmid et al. (2023), written without torchvision.

The module tree reproduces the published ``mnXX_as_mAP_*.pt`` state_dicts key for key (``features.N...``,
``classifier.2``, ``classifier.5``), so those files load with ``strict=True``. ``forward`` takes a log-mel
``[B, 1, n_mels, frames]`` and returns ``(logits [B, num_classes], embedding [B, 6 * C_last])``, where the
embedding is the global average of the last feature map (384-d for mn04, 960-d for mn10, 1920-d for mn20).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from qvimclap.config import require_known_keys
from qvimclap.errors import CheckpointError

#: The published widths; the name is ``mn`` + ten times the width multiplier.
MN_WIDTHS: dict[str, float] = {
    "mn01": 0.1,
    "mn02": 0.2,
    "mn04": 0.4,
    "mn05": 0.5,
    "mn06": 0.6,
    "mn08": 0.8,
    "mn10": 1.0,
    "mn12": 1.2,
    "mn14": 1.4,
    "mn16": 1.6,
    "mn20": 2.0,
    "mn30": 3.0,
    "mn40": 4.0,
}

#: AudioSet classes of the published taggers; Greif et al.'s QBV models use 476 (coarse) or 120 (fine).
AUDIOSET_CLASSES = 527


class BlockRow(NamedTuple):
    """One inverted-residual row of Table 1 of the MobileNetV3 paper (channels before width scaling)."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (Hardswish)
    stride_slot: int | None  # index into MNConfig.strides, or None for stride 1


#: The MobileNetV3-Large table used by EfficientAT (stride slots are the four downsampling stages C1..C4).
MOBILENET_V3_LARGE: tuple[BlockRow, ...] = (
    BlockRow(16, 3, 16, 16, False, "RE", None),
    BlockRow(16, 3, 64, 24, False, "RE", 0),  # C1
    BlockRow(24, 3, 72, 24, False, "RE", None),
    BlockRow(24, 5, 72, 40, True, "RE", 1),  # C2
    BlockRow(40, 5, 120, 40, True, "RE", None),
    BlockRow(40, 5, 120, 40, True, "RE", None),
    BlockRow(40, 3, 240, 80, False, "HS", 2),  # C3
    BlockRow(80, 3, 200, 80, False, "HS", None),
    BlockRow(80, 3, 184, 80, False, "HS", None),
    BlockRow(80, 3, 184, 80, False, "HS", None),
    BlockRow(80, 3, 480, 112, True, "HS", None),
    BlockRow(112, 3, 672, 112, True, "HS", None),
    BlockRow(112, 5, 672, 160, True, "HS", 3),  # C4
    BlockRow(160, 5, 960, 160, True, "HS", None),
    BlockRow(160, 5, 960, 160, True, "HS", None),
)
_HEAD_HIDDEN = 1280  # before width scaling
_SE_DIM_INDEX = {"c": 1, "f": 2, "t": 3}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``value`` (TF rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_out_size(size: int, *, kernel: int, stride: int, dilation: int = 1) -> int:
    padding = (kernel - 1) // 2 * dilation
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)


@dataclass(frozen=True)
class MNConfig:
    """Architecture of an EfficientAT mn model; the defaults give ``mn10_as``.

    ``se_dims``: letters of the dimensions squeeze-excitation runs on ("c" channel, "f" frequency, "t" time;
    the published models use "c"); several are fused with ``se_agg``. ``input_dim_f`` / ``input_dim_t`` only
    matter for "f" / "t" SE, which fix the input size.
    """

    width_mult: float = 1.0
    num_classes: int = AUDIOSET_CLASSES
    se_dims: str = "c"
    se_agg: str = "max"
    se_r: int = 4
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    dropout: float = 0.2
    in_channels: int = 1
    input_dim_f: int = 128
    input_dim_t: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(self.strides))  # JSON gives a list
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {self.width_mult}")
        if not self.se_dims or any(d not in _SE_DIM_INDEX for d in self.se_dims):
            raise ValueError(f"se_dims must be letters of 'cft', got {self.se_dims!r}")
        if self.se_agg not in ("max", "avg", "add", "min"):
            raise ValueError(f"se_agg must be max, avg, add or min, got {self.se_agg!r}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MNConfig:
        """``"mn10"`` (or ``"mn10_as"``) -> the config of that width; ``overrides`` set other fields."""
        key = name.lower()[:4]
        if key not in MN_WIDTHS:
            raise CheckpointError(f"unknown mn model {name!r}; known widths: {', '.join(MN_WIDTHS)}")
        return cls(width_mult=MN_WIDTHS[key], **overrides)

    @property
    def name(self) -> str:
        """``mnXX`` from the width (``mn04`` for 0.4); non-standard widths give ``mn_w0.45``."""
        for name, width in MN_WIDTHS.items():
            if math.isclose(width, self.width_mult):
                return name
        return f"mn_w{self.width_mult:g}"

    def channels(self, value: int) -> int:
        return make_divisible(value * self.width_mult, 8)

    @property
    def embedding_dim(self) -> int:
        return 6 * self.channels(MOBILENET_V3_LARGE[-1].out_channels)

    @property
    def head_hidden(self) -> int:
        return self.channels(_HEAD_HIDDEN)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["strides"] = list(self.strides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MNConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CheckpointError`."""
        require_known_keys(cls, data, "mn config", CheckpointError)
        return cls(**data)


def width_from_embedding_dim(embedding_dim: int) -> str | None:
    """The published width whose embedding is ``embedding_dim`` channels (unique per width), or None."""
    for name, width in MN_WIDTHS.items():
        if MNConfig(width_mult=width).embedding_dim == embedding_dim:
            return name
    return None


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d(eps 1e-3, momentum 0.01) + optional activation; "same" padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: type[nn.Module] | None = nn.Hardswish,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE over one dimension of ``[B, C, F, T]``: mean over the other two, bottleneck MLP, sigmoid gate."""

    def __init__(self, input_dim: int, squeeze_dim: int, se_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim, squeeze_dim)
        self.fc2 = nn.Linear(squeeze_dim, input_dim)
        self.pool_dims = [d for d in (1, 2, 3) if d != se_dim]

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(self.pool_dims, keepdim=True)  # e.g. [B, C, 1, 1] for channel SE
        shape = scale.shape
        scale = self.fc2(torch.relu(self.fc1(scale.flatten(1))))
        return torch.sigmoid(scale).view(shape) * x


class ConcurrentSEBlock(nn.Module):
    """One SE per dimension in ``se_dims``, run side by side and fused element-wise with ``se_agg``."""

    def __init__(self, dims: tuple[int, int, int], config: MNConfig) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList()
        for letter in config.se_dims:
            index = _SE_DIM_INDEX[letter]
            input_dim = dims[index - 1]
            squeeze_dim = make_divisible(input_dim // config.se_r, 8)
            self.conc_se_layers.append(SqueezeExcitation(input_dim, squeeze_dim, index))
        self.agg = config.se_agg

    def forward(self, x: Tensor) -> Tensor:
        outs = torch.stack([layer(x) for layer in self.conc_se_layers], dim=0)
        if self.agg == "max":
            return outs.max(dim=0).values
        if self.agg == "min":
            return outs.min(dim=0).values
        if self.agg == "avg":
            return outs.mean(dim=0)
        return outs.sum(dim=0)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (kxk, strided) -> optional SE -> project (1x1, linear), plus a residual
    connection when stride 1 keeps the shape."""

    def __init__(self, row: BlockRow, config: MNConfig, stride: int, f_dim: int, t_dim: int) -> None:
        super().__init__()
        in_ch, expanded, out_ch = (
            config.channels(c) for c in (row.in_channels, row.expanded, row.out_channels)
        )
        activation = nn.Hardswish if row.activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvNormActivation(in_ch, expanded, 1, activation=activation))
        layers.append(
            ConvNormActivation(
                expanded, expanded, row.kernel, stride=stride, groups=expanded, activation=activation
            )
        )
        if row.use_se:
            layers.append(ConcurrentSEBlock((expanded, f_dim, t_dim), config))
        layers.append(ConvNormActivation(expanded, out_ch, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """EfficientAT's mn: log-mel ``[B, 1, F, T]`` -> ``(logits [B, num_classes], embedding [B, D])``.

    Weights start from EfficientAT's initialisation (Kaiming-normal fan-out convs, N(0, 0.01) linears) drawn
    from torch's global RNG; call :meth:`reset_parameters` with a generator for a reproducible draw.
    """

    def __init__(self, config: MNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MNConfig()
        first_channels = config.channels(MOBILENET_V3_LARGE[0].in_channels)
        layers: list[nn.Module] = [ConvNormActivation(config.in_channels, first_channels, 3, stride=2)]
        f_dim = conv_out_size(config.input_dim_f, kernel=3, stride=2)
        t_dim = conv_out_size(config.input_dim_t, kernel=3, stride=2)
        for row in MOBILENET_V3_LARGE:
            stride = 1 if row.stride_slot is None else config.strides[row.stride_slot]
            f_dim = conv_out_size(f_dim, kernel=row.kernel, stride=stride)
            t_dim = conv_out_size(t_dim, kernel=row.kernel, stride=stride)
            layers.append(InvertedResidual(row, config, stride, f_dim, t_dim))
        last_in = config.channels(MOBILENET_V3_LARGE[-1].out_channels)
        layers.append(ConvNormActivation(last_in, config.embedding_dim, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(config.embedding_dim, config.head_hidden),
            nn.Hardswish(),
            nn.Dropout(p=config.dropout),
            nn.Linear(config.head_hidden, config.num_classes),
        )
        self.reset_parameters()

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """EfficientAT's initialisation; pass a seeded CPU ``generator`` for a reproducible draw."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
                std = math.sqrt(2.0 / fan_out)  # kaiming_normal_(mode="fan_out", ReLU gain)
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, mel: Tensor) -> Tensor:
        """``[B, 1, F, T]`` -> last feature map ``[B, embedding_dim, F', T']``."""
        return self.features(mel)

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        if mel.ndim == 3:  # [B, F, T] -> [B, 1, F, T]
            mel = mel.unsqueeze(1)
        fmap = self.features(mel)
        embedding = fmap.mean(dim=(2, 3))  # global average pool -> [B, embedding_dim]
        logits = self.classifier(fmap)
        return logits, embedding
