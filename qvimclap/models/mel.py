"""The EfficientAT log-mel front end (``AugmentMelSTFT``), reimplemented without torchaudio.

Waveform ``[B, T]`` float mono 32 kHz -> log-mel ``[B, n_mels, 1 + (T - 1) // hop_length]``, in the
input's dtype:

1. pre-emphasis ``y[n] = x[n + 1] - 0.97 x[n]`` (length ``T - 1``, no padding);
2. STFT, ``n_fft`` 1024, hop 320, symmetric Hann window of 800 samples centred in 1024, ``center=True``
   with reflect padding; power ``re^2 + im^2``;
3. Kaldi-style triangular mel bank (128 bands, ``fmin`` to ``fmax``; a zero column for the Nyquist bin);
4. ``log(mel + 1e-5)``, then the "fast normalisation" ``(x + 4.5) / 5``.

In training mode only, as the QVIM baseline does: ``fmin`` / ``fmax`` are jittered per batch, and one
frequency mask (up to ``freq_mask`` bands) and one time mask (up to ``time_mask`` frames) zero the log-mel
before the normalisation. Unlike torchaudio on a 3-D input (which draws one mask for the whole batch despite
``iid_masks=True``), the masks here are drawn per example, which is what ``iid_masks`` asks for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qvimclap.config import require_known_keys
from qvimclap.errors import CheckpointError

#: Added to the mel power before the log, as in the reference front end.
LOG_OFFSET = 1e-5


@dataclass(frozen=True)
class MelConfig:
    """Settings of :class:`MelFrontEnd`; the defaults are the published EfficientAT / QVIM-baseline ones.

    ``fmax=None`` means ``sample_rate // 2 - fmax_aug_range // 2`` (15000 Hz at 32 kHz), the reference's rule,
    so that the training-time jitter of ``fmax`` never crosses the Nyquist frequency.
    """

    sample_rate: int = 32000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    fmin: float = 0.0
    fmax: float | None = None
    preemphasis: float = 0.97
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    freq_mask: int = 2
    time_mask: int = 200

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length={self.win_length} must not exceed n_fft={self.n_fft}")
        if self.fmin_aug_range < 1 or self.fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 means no jitter)")
        if not 0 <= self.fmin < self.fmax_effective <= self.sample_rate / 2:
            raise ValueError(
                f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, fmax={self.fmax_effective}"
            )

    @property
    def fmax_effective(self) -> float:
        """The upper edge of the mel bank in eval mode, in Hz."""
        if self.fmax is None:
            return float(self.sample_rate // 2 - self.fmax_aug_range // 2)
        return float(self.fmax)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CheckpointError`."""
        require_known_keys(cls, data, "mel config", CheckpointError)
        return cls(**data)


def _mel_scale(freq_hz: Tensor) -> Tensor:
    return 1127.0 * torch.log(1.0 + freq_hz / 700.0)


def kaldi_mel_banks(
    n_mels: int,
    n_fft: int,
    sample_rate: int,
    fmin: float,
    fmax: float,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Triangular Kaldi mel filters ``[n_mels, n_fft // 2 + 1]``, as torchaudio's ``kaldi.get_mel_banks``.

    Triangles are linear in the mel scale ``1127 ln(1 + f / 700)``, equally spaced between ``fmin`` and
    ``fmax`` (Hz), without area normalisation; no VTLN warping. Kaldi leaves out the Nyquist bin, so the
    last column is zero (the reference pads it). Computed in ``dtype``: float32 and float64 banks differ by
    ~1e-5, as in the reference (band edges from Python floats, the bin grid in the default dtype).
    """
    num_fft_bins = n_fft // 2
    mel_low, mel_high = (1127.0 * math.log(1.0 + f / 700.0) for f in (fmin, fmax))
    mel_delta = (mel_high - mel_low) / (n_mels + 1)
    band = torch.arange(n_mels, dtype=dtype).unsqueeze(1)  # [n_mels, 1]
    left = mel_low + band * mel_delta
    center = mel_low + (band + 1.0) * mel_delta
    right = mel_low + (band + 2.0) * mel_delta
    bin_mel = _mel_scale((sample_rate / n_fft) * torch.arange(num_fft_bins, dtype=dtype)).unsqueeze(
        0
    )  # [1, F]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    bank = torch.clamp(torch.minimum(up, down), min=0.0)  # [n_mels, n_fft // 2]
    return nn.functional.pad(bank, (0, 1))  # the zero Nyquist column -> [n_mels, n_fft // 2 + 1]


class MelFrontEnd(nn.Module):
    """Waveform ``[B, T]`` (float32/float64, mono, ``config.sample_rate``) -> log-mel ``[B, n_mels, frames]``.

    Has no parameters or persistent buffers (so it adds nothing to a state_dict); it computes in the dtype of
    its input. Gradients flow through it. Augmentations run only in training mode, from torch's global RNG.
    """

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        self._cache: dict[tuple[Any, ...], Tensor] = {}

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` (pre-emphasis drops one sample; the STFT is centred)."""
        return 1 + (num_samples - 1) // self.config.hop_length

    def forward(self, waveforms: Tensor) -> Tensor:
        if waveforms.ndim != 2:
            raise ValueError(f"expected waveforms [B, T], got shape {tuple(waveforms.shape)}")
        cfg = self.config
        power = self.power_spectrogram(waveforms)  # [B, n_fft // 2 + 1, frames]
        fmin, fmax = self._band_edges()
        bank = self._bank(fmin, fmax, waveforms.dtype, waveforms.device)
        mel = torch.matmul(bank, power)  # [B, n_mels, frames]
        logmel = torch.log(mel + LOG_OFFSET)
        if self.training:
            logmel = _mask_along(logmel, dim=1, max_width=cfg.freq_mask)
            logmel = _mask_along(logmel, dim=2, max_width=cfg.time_mask)
        return (logmel + 4.5) / 5.0

    def power_spectrogram(self, waveforms: Tensor) -> Tensor:
        """Pre-emphasis, STFT and power: ``[B, T]`` -> ``[B, n_fft // 2 + 1, 1 + (T - 1) // hop]``."""
        cfg = self.config
        x = waveforms[:, 1:] - cfg.preemphasis * waveforms[:, :-1]  # [B, T - 1]
        window = self._window(waveforms.dtype, waveforms.device)
        spec = torch.stft(
            x,
            cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def _band_edges(self) -> tuple[float, float]:
        cfg = self.config
        fmin, fmax = cfg.fmin, cfg.fmax_effective
        if (
            self.training
        ):  # the reference's jitter: fmin up by < fmin_aug_range, fmax within +-fmax_aug_range/2
            fmin = fmin + int(torch.randint(cfg.fmin_aug_range, (1,)).item())
            fmax = fmax + cfg.fmax_aug_range // 2 - int(torch.randint(cfg.fmax_aug_range, (1,)).item())
        return fmin, fmax

    def _bank(self, fmin: float, fmax: float, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = ("bank", fmin, fmax, dtype, device)
        if key not in self._cache:
            if len(self._cache) > 64:  # jittered training banks would otherwise pile up
                self._cache.clear()
            cfg = self.config
            bank = kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, fmin, fmax, dtype=dtype)
            self._cache[key] = bank.to(device)
        return self._cache[key]

    def _window(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = ("window", dtype, device)
        if key not in self._cache:
            window = torch.hann_window(self.config.win_length, periodic=False, dtype=dtype)
            self._cache[key] = window.to(device)
        return self._cache[key]

    def extra_repr(self) -> str:
        c = self.config
        return f"sample_rate={c.sample_rate}, n_mels={c.n_mels}, fmin={c.fmin}, fmax={c.fmax_effective}"


def _mask_along(x: Tensor, *, dim: int, max_width: int) -> Tensor:
    """Zero one random stripe per example along ``dim`` of ``[B, F, T]`` (torchaudio's ``mask_along_axis``
    rule: width ``floor(u * max_width)``, start ``floor(v * (size - u * max_width))``).

    ``max_width`` is capped at ``size``, so a clip shorter than the time mask (not the case for the 10 s
    clips of the published recipe) is never masked past its end."""
    if max_width <= 0:
        return x
    batch, size = x.shape[0], x.shape[dim]
    width = torch.rand(batch, device=x.device) * min(max_width, size)
    start = (torch.rand(batch, device=x.device) * (size - width)).long()
    end = start + width.long()
    position = torch.arange(size, device=x.device)
    keep = (position < start[:, None]) | (position >= end[:, None])  # [B, size]
    keep = keep.unsqueeze(2) if dim == 1 else keep.unsqueeze(1)
    return x * keep.to(x.dtype)
