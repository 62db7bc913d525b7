"""The aiSFX sound-effects embedding (Ma & Lerch, ISMIR 2022), reimplemented: front end + 9-layer CNN.

"Representation Learning for the Automatic Indexing of Sound Effects Libraries": a CNN trained across nine
commercial sound-effects libraries labelled with the Universal Category System. Its weights (CC BY 4.0) ship
in the ``aisfx`` wheel as ``aisfx/models/checkpoint.pth``; install it with ``pip install --no-deps aisfx``
(its pinned requirements do not install next to ours). Only that file is used, never the package's code.

Two lines to embed a sound::

    encoder = AisfxEncoder.from_pretrained()        # the checkpoint inside the installed aisfx package
    vectors = encoder.embed([waveform_44k])         # [1, 512] float32, L2-normalised

The pipeline, as the paper's own (Essentia) front end and ``aisfx.inference`` compute it:

1. mono float32 at **44.1 kHz**, used as it is (no gain or normalisation: Essentia's EasyLoader applies none);
2. frames of 2048 samples every 1024, the first centred on sample 0 (1024 zeros before the clip), one more
   frame after every 1024 samples (``ceil(T / 1024) + 1`` frames), zeros past the end (Essentia's
   FrameCutter); a symmetric Hann window; power spectrum ``|rfft|^2`` (1025 bins);
3. 96 triangular mel bands, 0 to 22050 Hz, triangles linear in the HTK mel scale, each band's weights summing
   to 1 (Essentia's MelBands with ``warping`` weighting and ``unit_sum`` normalisation);
4. ``log10(10000 * mel + 1)``, divided by 9.4578 (the paper's min/max normalisation, minimum 0);
5. blocks of 100 frames (2.32 s) every 50 frames; a clip shorter than a block is one block padded with
   zeros (silence); the last, partial block of a longer clip is dropped, as the package does (its tail is
   partly in the block before; ``partial_block="keep"`` zero-pads it instead, which retrieves worse);
6. per block, the CNN: four blocks of two 3x3 conv + BatchNorm + ReLU (64, 128, 256, 512 channels), 2x2 max
   pooling after the first three; mean over frequency, max over time -> ``[512]``;
7. per clip, the mean of the block embeddings (the package stops at per-block vectors), L2-normalised.

The pooling and the partial-block rule were chosen by zero-shot retrieval on both built-in corpus families
(``bench/bench_aisfx.py``; the table is in the README): dropping the zero-padded partial block puts a
reference's nearest reference in its own kind 97-99% of the time (92-99% when kept); the mean ties the
max on that and beats the mean of normalised blocks, and their imitation MRRs are within noise.

``AisfxEncoder.embed_blocks`` returns the per-block vectors for other poolings.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qvimclap.audio import check_mono
from qvimclap.config import require_known_keys
from qvimclap.device import module_device
from qvimclap.errors import CheckpointError, MissingDependencyError
from qvimclap.models.base import l2_normalize, load_strict, read_model_folder, write_model_folder
from qvimclap.models.mel import kaldi_mel_banks

logger = logging.getLogger(__name__)

MODEL_TYPE = "aisfx_encoder"
MODEL_NAME = "aisfx-cnn9"
#: Where the weights live inside the installed ``aisfx`` package, and how to get them.
PACKAGE_NAME = "aisfx"
PACKAGE_CHECKPOINT = ("models", "checkpoint.pth")
INSTALL_HINT = "pip install --no-deps aisfx"
#: Blocks per forward pass: bounds memory (the first conv block holds ~2.5 MB of activations per block)
#: when long clips come in a batch (a 60 s clip is 51 blocks).
MAX_BLOCKS_PER_PASS = 64
POOLINGS = ("mean", "max", "mean_normalized")
PARTIAL_BLOCKS = ("keep", "drop")
#: The CrossNet wrapper of the published file: the embedding network, then one classifier head per library.
_EMBEDDING_PREFIX = "embedding_net."
_CLASSIFIER_PREFIX = "fc."


@dataclass(frozen=True)
class AisfxConfig:
    """Everything that rebuilds an :class:`AisfxEncoder`: front end, blocking, clip pooling, width.

    ``spec_max``: log-mel values are divided by it (the paper's min/max normalisation over all its
    spectrograms, minimum 0). ``partial_block``: ``"keep"`` zero-pads the last incomplete block,
    ``"drop"`` discards it as the package does (a clip shorter than one block always gives one block).
    ``pooling``: ``"mean"`` of the block embeddings, their ``"max"``, or ``"mean_normalized"`` (the mean of
    L2-normalised blocks).
    """

    sample_rate: int = 44_100
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float = 22_050.0
    log_scale: float = 10_000.0
    spec_max: float = 9.457798957824707
    block_frames: int = 100
    block_hop_frames: int = 50
    partial_block: str = "drop"
    pooling: str = "mean"
    base_channels: int = 64

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise CheckpointError(f"pooling {self.pooling!r} is not known; use one of {', '.join(POOLINGS)}")
        if self.partial_block not in PARTIAL_BLOCKS:
            raise CheckpointError(
                f"partial_block {self.partial_block!r} is not known; use one of {', '.join(PARTIAL_BLOCKS)}"
            )
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise CheckpointError(f"need 0 <= fmin < fmax <= sample_rate / 2, got {self.fmin}, {self.fmax}")
        if min(self.block_frames, self.block_hop_frames, self.hop_length, self.base_channels) < 1:
            raise CheckpointError("block_frames, block_hop_frames, hop_length and base_channels must be >= 1")

    @property
    def embedding_dim(self) -> int:
        return 8 * self.base_channels

    def preprocessing(self) -> dict[str, Any]:
        """Every setting that changes embeddings, except the network (recorded in fingerprints)."""
        data = asdict(self)
        data.pop("base_channels")
        return data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AisfxConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CheckpointError`."""
        require_known_keys(cls, data, "aisfx config", CheckpointError)
        return cls(**data)


# -- front end ---------------------------------------------------------------------------------------------


def essentia_mel_bank(config: AisfxConfig, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Essentia's MelBands weights ``[n_mels, n_fft // 2 + 1]`` (htkMel, ``warping``, ``unit_sum``).

    Triangles linear in the mel scale between equally spaced mel edges are Kaldi's banks (a constant factor
    on the mel scale, 1127 ln vs 2595 log10, cancels in every ratio); Essentia then scales each band to sum 1.
    """
    bank = kaldi_mel_banks(
        config.n_mels, config.n_fft, config.sample_rate, config.fmin, config.fmax, dtype=dtype
    )  # [n_mels, n_fft // 2 + 1], the Nyquist column 0 as in Essentia (its triangle ends there)
    return bank / bank.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)


def num_frames(num_samples: int, config: AisfxConfig) -> int:
    """Essentia's FrameCutter count: a frame starts every hop from ``-n_fft / 2`` while inside the clip."""
    return math.ceil(num_samples / config.hop_length) + 1


class AisfxFrontEnd(nn.Module):
    """Waveform ``[T]`` float32 mono 44.1 kHz -> normalised log-mel ``[frames, n_mels]`` (steps 2-4).

    No parameters; the window and mel bank are non-persistent buffers (nothing in the state_dict).
    """

    def __init__(self, config: AisfxConfig) -> None:
        super().__init__()
        self.config = config
        window = torch.hann_window(config.n_fft, periodic=False, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_bank", essentia_mel_bank(config).float(), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        cfg = self.config
        frames = num_frames(waveform.shape[-1], cfg)
        left = cfg.n_fft // 2
        right = (frames - 1) * cfg.hop_length + cfg.n_fft - left - waveform.shape[-1]
        x = nn.functional.pad(waveform, (left, right))  # [left + T + right]
        x = x.unfold(-1, cfg.n_fft, cfg.hop_length) * self.window  # [frames, n_fft]
        spectrum = torch.fft.rfft(x)  # [frames, n_fft // 2 + 1]
        power = spectrum.real.square() + spectrum.imag.square()
        mel = power @ self.mel_bank.T  # [frames, n_mels]
        return torch.log10(cfg.log_scale * mel + 1.0) / cfg.spec_max


def block_starts(frames: int, config: AisfxConfig) -> list[int]:
    """First frame of each block of a ``frames``-long spectrogram (``aisfx.preprocessing.blocking`` rule)."""
    size, hop = config.block_frames, config.block_hop_frames
    count = math.ceil((frames - size) / hop + 1)
    if config.partial_block == "drop" and (frames - size) % hop != 0:
        count -= 1
    return [i * hop for i in range(max(count, 1))]


def to_blocks(spectrogram: Tensor, config: AisfxConfig) -> Tensor:
    """``[frames, n_mels]`` -> ``[num_blocks, block_frames, n_mels]``, zero-padded past the end."""
    starts = block_starts(spectrogram.shape[0], config)
    needed = starts[-1] + config.block_frames
    padded = nn.functional.pad(spectrogram, (0, 0, 0, max(needed - spectrogram.shape[0], 0)))
    return torch.stack([padded[s : s + config.block_frames] for s in starts])


# -- network -----------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias) with BatchNorm and ReLU; parameter names as in the checkpoint."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class AisfxCNN(nn.Module):
    """Blocks ``[B, frames, n_mels]`` -> block embeddings ``[B, 8 * base_channels]`` (the paper's 512-d).

    The DCASE cross-task 9-layer CNN: conv blocks of 64, 128, 256, 512 channels, 2x2 max pooling after the
    first three, then the mean over frequency and the max over time.
    """

    def __init__(self, base_channels: int = 64) -> None:
        super().__init__()
        widths = [1, base_channels, 2 * base_channels, 4 * base_channels, 8 * base_channels]
        self.conv_block1 = ConvBlock(widths[0], widths[1])
        self.conv_block2 = ConvBlock(widths[1], widths[2])
        self.conv_block3 = ConvBlock(widths[2], widths[3])
        self.conv_block4 = ConvBlock(widths[3], widths[4])

    def forward(self, blocks: Tensor) -> Tensor:
        x = blocks.unsqueeze(1)  # [B, 1, frames, n_mels]
        for conv_block in (self.conv_block1, self.conv_block2, self.conv_block3):
            x = nn.functional.max_pool2d(conv_block(x), kernel_size=2)  # halves frames and bands
        x = self.conv_block4(x)  # [B, C, frames / 8, n_mels / 8]
        return x.mean(dim=3).amax(dim=2)  # [B, C]


def pool_blocks(blocks: Tensor, pooling: str) -> Tensor:
    """One clip's block embeddings ``[num_blocks, D]`` -> ``[D]`` (before the final L2 normalisation)."""
    if pooling == "mean":
        return blocks.mean(dim=0)
    if pooling == "max":
        return blocks.amax(dim=0)
    if pooling == "mean_normalized":
        return nn.functional.normalize(blocks, dim=1).mean(dim=0)
    raise CheckpointError(f"pooling {pooling!r} is not known; use one of {', '.join(POOLINGS)}")


# -- the embedder ------------------------------------------------------------------------------------------


class AisfxEncoder(nn.Module):
    """The aiSFX embedding as an :class:`~qvimclap.models.base.AudioEmbedder`: 44.1 kHz clips -> ``[N, 512]``.

    Build it with :meth:`from_pretrained`. Frozen and in eval mode; float32 on the CPU until moved.
    """

    def __init__(self, config: AisfxConfig | None = None, *, source: str = "<memory>") -> None:
        super().__init__()
        self.config = config or AisfxConfig()
        self.source = source
        self.front_end = AisfxFrontEnd(self.config)
        self.cnn = AisfxCNN(self.config.base_channels)
        self._weights_sha256: str | None = None
        self.eval().requires_grad_(False)

    # -- AudioEmbedder -----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def device(self) -> torch.device:
        return module_device(self.cnn)

    def fingerprint(self) -> dict[str, Any]:
        """Encoder, network, weights hash, preprocessing (front end, blocks, pooling), dim and space."""
        from qvimclap import __version__

        sha = self.weights_sha256()
        return {
            "encoder": "aisfx",
            "model": MODEL_NAME
            if self.config.base_channels == 64
            else f"aisfx-cnn9-{self.config.base_channels}",
            "weights_sha256": sha,
            "preprocessing": self.config.preprocessing(),
            "dim": self.embedding_dim,
            "space": "aisfx:" + sha[:12],
            "source": self.source,
            "qvimclap_version": __version__,
        }

    def weights_sha256(self) -> str:
        """SHA-256 of the CNN's state_dict (computed once: the network is frozen)."""
        from qvimclap.fingerprint import state_dict_sha256

        if self._weights_sha256 is None:
            self._weights_sha256 = state_dict_sha256(self.cnn.state_dict())
        return self._weights_sha256

    def embed(self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Float32 mono ``[T]`` clips at 44.1 kHz, any length -> ``[N, 512]`` float32 L2-normalised, in order.

        ``batch_size`` clips share one forward pass; batching changes nothing beyond float32 round-off.
        """
        pooled = [
            pool_blocks(torch.from_numpy(blocks), self.config.pooling)
            for blocks in self.embed_blocks(waveforms, batch_size=batch_size)
        ]
        if not pooled:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        vectors = torch.stack(pooled).numpy()
        if not np.isfinite(vectors).all():
            raise CheckpointError(
                f"{self.source}: aisfx produced non-finite embeddings; the weights are corrupt"
            )
        return l2_normalize(vectors)

    @torch.inference_mode()
    def embed_blocks(self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16) -> list[np.ndarray]:
        """Clips -> one float32 ``[num_blocks, 512]`` array of unnormalised block embeddings per clip."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: list[np.ndarray] = []
        for start in range(0, len(waveforms), batch_size):
            batch = [
                to_blocks(self.front_end(self._as_tensor(w, start + i)), self.config)
                for i, w in enumerate(waveforms[start : start + batch_size])
            ]
            counts = [b.shape[0] for b in batch]
            blocks = torch.cat(batch)  # [sum(counts), block_frames, n_mels]
            vectors = torch.cat([self.cnn(part).float().cpu() for part in blocks.split(MAX_BLOCKS_PER_PASS)])
            out.extend(chunk.numpy() for chunk in torch.split(vectors, counts))
        return out

    @torch.inference_mode()
    def layer_statistics(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Clips -> ``[N, 2 * 3 * (64 + 128 + 256 + 512)]`` float32: every conv block's output on each
        block of the clip, averaged over frequency, as its mean, max and standard deviation over time; then
        the mean and the max of those over the clip's blocks. A richer view of the clip than the embedding
        (the target view's features, :mod:`qvimclap.models.view`)."""
        cnn, outputs = self.cnn, []
        conv_blocks = (cnn.conv_block1, cnn.conv_block2, cnn.conv_block3, cnn.conv_block4)
        hooks = [
            block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in conv_blocks
        ]
        rows = []
        try:
            for i, waveform in enumerate(waveforms):
                outputs.clear()
                cnn(to_blocks(self.front_end(self._as_tensor(waveform, i)), self.config))
                stats = []
                for out in outputs:  # [blocks, C, frames, bands]
                    over_time = out.float().mean(dim=3)
                    stats.append(torch.cat([over_time.mean(2), over_time.amax(2), over_time.std(2)], dim=1))
                per_block = torch.cat(stats, dim=1)  # [blocks, D]
                rows.append(torch.cat([per_block.mean(0), per_block.amax(0)]).cpu().numpy())
        finally:
            for hook in hooks:
                hook.remove()
        width = 2 * 3 * 15 * self.config.base_channels  # (1 + 2 + 4 + 8) * base channels, 3 stats, 2 pools
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), dtype=np.float32)

    def forward(self, waveform: Tensor) -> Tensor:
        """One clip ``[T]`` float32 44.1 kHz -> its pooled, unnormalised embedding ``[512]``."""
        blocks = to_blocks(self.front_end(waveform), self.config)
        return pool_blocks(self.cnn(blocks), self.config.pooling)

    def _as_tensor(self, waveform: np.ndarray, index: int) -> Tensor:
        x = check_mono(waveform, f"waveform {index}")
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    # -- persistence -------------------------------------------------------------------------------

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``save_dir``; each file replaced atomically."""
        from qvimclap import __version__

        config = {
            "model_type": MODEL_TYPE,
            "qvimclap_version": __version__,
            "source": self.source,
            **self.config.to_dict(),
        }
        return write_model_folder(save_dir, config, self.cnn.state_dict())

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        pooling: str | None = None,
        partial_block: str | None = None,
    ) -> AisfxEncoder:
        """Load the aiSFX weights: ``None`` (or ``""``) for the checkpoint inside the installed ``aisfx``
        package, the published ``checkpoint.pth`` anywhere, or a folder from :meth:`save_pretrained`.

        ``pooling`` and ``partial_block`` override those settings (:class:`AisfxConfig`). Raises
        :class:`MissingDependencyError` when the package is needed and absent, :class:`CheckpointError` for a
        file that is not the aiSFX checkpoint.
        """
        path = packaged_checkpoint() if source in (None, "") else Path(str(source)).expanduser()
        if path.is_dir():
            config, state, source_name = _read_folder(path)
        elif path.is_file():
            config, state, source_name = AisfxConfig(), read_checkpoint(path), str(path)
        else:
            raise CheckpointError(
                f"aisfx source {str(source)!r}: no such file or folder; pass the aiSFX checkpoint.pth, a "
                "folder saved by AisfxEncoder.save_pretrained, or nothing for the installed package's "
                f"({INSTALL_HINT})"
            )
        overrides = {"pooling": pooling, "partial_block": partial_block}
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        encoder = cls(config, source=source_name)
        load_strict(encoder.cnn, state, path, mismatch="not the aiSFX network")
        return encoder.eval()


def _read_folder(folder: Path) -> tuple[AisfxConfig, dict[str, Tensor], str]:
    """A :meth:`AisfxEncoder.save_pretrained` folder -> its config, weights and source name."""
    data, state = read_model_folder(folder, model_type=MODEL_TYPE, writer="AisfxEncoder.save_pretrained")
    return AisfxConfig.from_dict(data), state, str(folder)


# -- the published checkpoint ------------------------------------------------------------------------------


def packaged_checkpoint() -> Path:
    """The checkpoint inside the installed ``aisfx`` package, found without importing the package's code."""
    spec = importlib.util.find_spec(PACKAGE_NAME)  # a top-level name: nothing is imported
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*PACKAGE_CHECKPOINT)
        if path.is_file():
            return path
    if spec is None:
        raise MissingDependencyError(f"the aisfx embedder needs the aisfx package's weights: {INSTALL_HINT}")
    raise MissingDependencyError(
        f"the installed aisfx package has no {'/'.join(PACKAGE_CHECKPOINT)}; reinstall it: {INSTALL_HINT}"
    )


def _numpy_scalar() -> Any:
    try:  # numpy >= 2 moved numpy.core to numpy._core; the checkpoint was pickled under the old name
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def _allowed_globals() -> list[Any]:
    """What the published file pickles besides tensors: its per-library class counts are numpy int64
    scalars (``numpy.core.multiarray.scalar`` of an int64 ``dtype``; numpy 2 writes the same function as
    ``numpy._core.multiarray.scalar``). Nothing else is allowed."""
    scalar = _numpy_scalar()
    return [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, np.dtypes.Int64DType]


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """The embedding network's state_dict from the published ``checkpoint.pth``, read safely.

    The file is a pickle of ``(CrossNet state_dict, {library: (index, num_classes)})``; it is unpickled with
    ``weights_only=True`` and only the globals of :func:`_allowed_globals`, so a file that would run code is
    refused. The CrossNet's classifier heads (``fc.*``, one per training library) are dropped and the
    ``embedding_net.`` prefix is removed; a bare state_dict of the network is accepted too.
    """
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: {_load_failure(err)}") from None
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Mapping):
        obj = obj[0]  # (state_dict, ds_dict): the published layout
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not the aiSFX checkpoint (a state_dict and its "
            "libraries' class counts)"
        )
    state = {str(k): v for k, v in obj.items()}
    if any(k.startswith(_EMBEDDING_PREFIX) for k in state):
        state = {
            k.removeprefix(_EMBEDDING_PREFIX): v
            for k, v in state.items()
            if not k.startswith(_CLASSIFIER_PREFIX)
        }
    return state


def _load_failure(err: Exception) -> str:
    """One line for a checkpoint torch cannot read: refused for safety, or not a checkpoint at all."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)|got <class '([^']+)'>", text)
    if refused:
        return (
            f"refused: unpickling it needs {refused.group(1) or refused.group(2)}, which a weights-only load "
            f"does not allow (it could run code); this is not the published aiSFX checkpoint ({INSTALL_HINT})"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = text.strip().splitlines()
    first = detail.group(1) if detail else lines[0] if lines else type(err).__name__
    return (
        f"not a readable PyTorch checkpoint, truncated or corrupt ({first[:160]}); reinstall: {INSTALL_HINT}"
    )
