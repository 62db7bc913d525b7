"""The QVIM encoder: EfficientAT log-mel front end + mn, as in the AES AIMLA 2025 QVIM baseline.

Two lines to embed a vocal imitation::

    encoder = QvimEncoder.from_pretrained("baseline.ckpt")  # or "mn10_as_mAP_471.pt", "scratch:mn04"
    vectors = encoder.embed([waveform_32k])  # [1, 960] float32, L2-normalised

Input policy (the published models'): mono, 32 kHz, zero-padded or cut (keeping the start) to
``duration_s = 10``. The mn is fully convolutional with global pooling, so other lengths work: set
``QvimConfig(duration_s=...)`` (e.g. 5.0 for short queries); the published checkpoints were trained on 10 s.

Checkpoints accepted by :meth:`QvimEncoder.from_pretrained` (local files only; nothing is downloaded):

- EfficientAT tagger ``mnXX_as_mAP_*.pt``: ``features.*``, ``classifier.*`` (527 classes; 120 for QBV's
  VocalSketch pre-training). Download URLs: :data:`PUBLISHED_CHECKPOINTS`.
- QVIM baseline Lightning ``.ckpt`` (qvim-baseline ``ex_qvim.py``; no public URL): ``state_dict`` holding
  ``tau``, ``imitation_encoder.*``, ``reference_encoder.*``. ``tower=`` picks one.
- QBV dual encoder (github.com/Jonathan-Greif/QBV, ``resources/ct_nt_xent_fold0mn10d10s32_01.pt``): ``im.*``
  and ``rec.*`` (``ref.*`` accepted), 476 (coarse) or 120 (fine) classes; ``--single`` models have only
  ``im.*``, which then serves both towers.
- A folder from :meth:`QvimEncoder.save_pretrained`: ``config.json`` + ``model.safetensors``.

Every layout is converted to EfficientAT keys, the width and class count are read from tensor shapes, and the
weights are loaded strictly; a mismatch raises :class:`~qvimclap.errors.CheckpointError` naming the keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qvimclap.audio import check_mono
from qvimclap.config import require_known_keys
from qvimclap.device import module_device
from qvimclap.errors import CheckpointError
from qvimclap.models.base import (
    WEIGHTS_NAME,
    l2_normalize,
    load_strict,
    read_model_folder,
    write_model_folder,
)
from qvimclap.models.mel import MelConfig, MelFrontEnd
from qvimclap.models.mn import MN_WIDTHS, MNConfig, MobileNetV3, width_from_embedding_dim

logger = logging.getLogger(__name__)

MODEL_TYPE = "qvim_encoder"
TOWERS = ("imitation", "reference")
#: Seed of the ``scratch:mnXX`` initialisation (the same random weights on every machine).
SCRATCH_SEED = 0

_EFFICIENTAT_RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
#: Known download locations of the published weights (fetch them elsewhere and pass the local path).
PUBLISHED_CHECKPOINTS: dict[str, str] = {
    "mn01_as": _EFFICIENTAT_RELEASE + "mn01_as_mAP_298.pt",
    "mn02_as": _EFFICIENTAT_RELEASE + "mn02_as_mAP_378.pt",
    "mn04_as": _EFFICIENTAT_RELEASE + "mn04_as_mAP_432.pt",
    "mn05_as": _EFFICIENTAT_RELEASE + "mn05_as_mAP_443.pt",
    "mn10_as": _EFFICIENTAT_RELEASE + "mn10_as_mAP_471.pt",
    "mn20_as": _EFFICIENTAT_RELEASE + "mn20_as_mAP_478.pt",
    "mn30_as": _EFFICIENTAT_RELEASE + "mn30_as_mAP_482.pt",
    "mn40_as": _EFFICIENTAT_RELEASE + "mn40_as_mAP_484.pt",
    "mn40_as_ext": _EFFICIENTAT_RELEASE + "mn40_as_ext_mAP_487.pt",
    # The QVIM baseline checkpoint has no public URL: train it with qvim-baseline (ex_qvim.py) or ask the
    # challenge organisers; QBV dual encoders are published in github.com/Jonathan-Greif/QBV (resources/).
}


@dataclass(frozen=True)
class QvimConfig:
    """Everything needed to rebuild a :class:`QvimEncoder`: architecture, front end and input policy.

    ``duration_s``: every clip is zero-padded at the end or cut (keeping the start) to this many seconds
    before the front end (10.0 for the published models).
    """

    mn: MNConfig = field(default_factory=MNConfig)
    mel: MelConfig = field(default_factory=MelConfig)
    duration_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")

    @property
    def num_samples(self) -> int:
        return int(round(self.duration_s * self.mel.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        return {"mn": self.mn.to_dict(), "mel": self.mel.to_dict(), "duration_s": self.duration_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QvimConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CheckpointError`."""
        require_known_keys(cls, data, "QVIM encoder config", CheckpointError)
        return cls(
            mn=MNConfig.from_dict(dict(data.get("mn", {}))),
            mel=MelConfig.from_dict(dict(data.get("mel", {}))),
            duration_s=float(data.get("duration_s", 10.0)),
        )


class QvimEncoder(nn.Module):
    """Waveforms ``[B, T]`` float32 mono 32 kHz -> pooled mn embedding ``[B, D]`` (unnormalised).

    ``forward`` is differentiable end to end (front end + mn); front-end augmentations and dropout run only in
    training mode. ``embed`` implements :class:`~qvimclap.models.base.AudioEmbedder` (eval mode, no grad,
    L2-normalised float32 numpy).
    """

    def __init__(
        self, config: QvimConfig | None = None, *, source: str = "scratch", space: str | None = None
    ) -> None:
        super().__init__()
        self.config = config or QvimConfig()
        self.source = source
        # Both towers of one two-tower checkpoint embed into one space; None means this tower's own weights.
        self.space = space
        self.mel = MelFrontEnd(self.config.mel)
        self.mn = MobileNetV3(self.config.mn)

    # -- AudioEmbedder -----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.mel.sample_rate

    @property
    def embedding_dim(self) -> int:
        return self.config.mn.embedding_dim

    def fingerprint(self) -> dict[str, Any]:
        """What produced this encoder's embeddings (see :mod:`qvimclap.fingerprint`)."""
        from qvimclap import __version__
        from qvimclap.fingerprint import state_dict_sha256

        weights = state_dict_sha256(self.mn.state_dict())
        mel = self.config.mel
        # every setting that changes eval-mode outputs (the augmentation ranges do not)
        preprocessing = {
            "sample_rate": self.sample_rate,
            "duration_s": self.config.duration_s,
            "pad": "zero-end",
            "crop": "start",
            "n_mels": mel.n_mels,
            "n_fft": mel.n_fft,
            "win_length": mel.win_length,
            "hop_length": mel.hop_length,
            "fmin": mel.fmin,
            "fmax": mel.fmax_effective,
            "preemphasis": mel.preemphasis,
        }
        return {
            "encoder": "qvim",
            "model": self.config.mn.name,
            "weights_sha256": weights,
            "preprocessing": preprocessing,
            "dim": self.embedding_dim,
            "space": self.space or "qvim:" + weights[:12],
            "qvimclap_version": __version__,
        }

    def embed(self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Float32 mono ``[T]`` arrays, 32 kHz, any lengths -> ``[N, D]`` float32, L2-normalised, in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in range(0, len(waveforms), batch_size):
                    batch = self.prepare_batch(waveforms[start : start + batch_size])
                    chunks.append(self(batch).float().cpu().numpy())
        finally:
            self.train(was_training)
        if not chunks:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        vectors = np.concatenate(chunks)
        if not np.isfinite(vectors).all():
            raise CheckpointError(
                f"{self.source}: the encoder produced non-finite embeddings; the weights are corrupt"
            )
        return l2_normalize(vectors)

    # -- model -------------------------------------------------------------------------------------

    def prepare_batch(self, waveforms: Sequence[np.ndarray]) -> Tensor:
        """The input policy: each ``[T]`` array is zero-padded / cut to ``duration_s`` -> ``[B, T]`` float32.

        The tensor lands on the device of the model's parameters.
        """
        num_samples = self.config.num_samples
        batch = np.zeros((len(waveforms), num_samples), dtype=np.float32)
        for i, wave in enumerate(waveforms):
            clip = check_mono(wave, f"waveform {i}")[:num_samples]
            batch[i, : clip.shape[0]] = clip
        return torch.from_numpy(batch).to(self._device())

    def forward(self, waveforms: Tensor) -> Tensor:
        """``[B, T]`` float mono 32 kHz (already padded/cut) -> ``[B, embedding_dim]`` (model dtype)."""
        # The tagger head is skipped: its logits are unused here, and DistributedDataParallel refuses
        # parameters that get no gradient.
        mel = self.mel(self._cast(waveforms))  # [B, n_mels, frames]
        return self.mn.forward_features(mel.unsqueeze(1)).mean(dim=(2, 3))  # [B, D, F', T'] -> [B, D]

    def forward_with_logits(self, waveforms: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, T]`` -> ``(logits [B, num_classes], embedding [B, embedding_dim])``."""
        mel = self.mel(self._cast(waveforms))  # [B, n_mels, frames]
        return self.mn(mel.unsqueeze(1))

    def _cast(self, waveforms: Tensor) -> Tensor:
        """To the parameters' device and dtype: the front end computes in the model's dtype."""
        param = next(self.mn.parameters())
        return waveforms.to(device=param.device, dtype=param.dtype)

    def _device(self) -> torch.device:
        return module_device(self.mn)

    # -- persistence -------------------------------------------------------------------------------

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``save_dir``; each file is replaced atomically.

        Returns ``save_dir``; :meth:`from_pretrained` on it rebuilds an identical encoder."""
        from qvimclap import __version__

        config = {
            "model_type": MODEL_TYPE,
            "qvimclap_version": __version__,
            "source": self.source,
            "space": self.space,
            **self.config.to_dict(),
        }
        return write_model_folder(save_dir, config, self.mn.state_dict())

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        tower: str = "imitation",
        model: str | None = None,
        duration_s: float | None = None,
    ) -> QvimEncoder:
        """Load an encoder from a local checkpoint or build a seeded random one.

        ``source``: ``"scratch:mnXX"`` (any published width; random, seeded with :data:`SCRATCH_SEED`), an
        EfficientAT ``.pt`` state_dict, the QVIM baseline Lightning ``.ckpt``, a QBV dual-encoder file, or a
        folder from :meth:`save_pretrained`. ``tower`` picks ``"imitation"`` or ``"reference"`` from two-tower
        files. ``model`` (e.g. ``"mn10"``), if given, must match the width found in the file. ``duration_s``
        overrides the input policy (default 10 s, or the saved folder's). Raises :class:`CheckpointError`.
        """
        if tower not in TOWERS:
            raise CheckpointError(f"tower={tower!r} is not one of {TOWERS}")
        text = str(source)
        if text.startswith("scratch"):
            encoder = cls._from_scratch(text)
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise CheckpointError(_missing_source_message(text))
            if path.is_dir():
                encoder = cls._from_folder(path)
            else:
                encoder = cls._from_checkpoint_file(path, tower=tower)
        if model is not None and MNConfig.from_name(model).name != encoder.config.mn.name:
            raise CheckpointError(
                f"{text}: this is an {encoder.config.mn.name} checkpoint, you asked for {model}; "
                f"pass model={encoder.config.mn.name!r} or the {model} file"
            )
        if duration_s is not None:
            encoder.config = QvimConfig(mn=encoder.config.mn, mel=encoder.config.mel, duration_s=duration_s)
        return encoder.eval()

    @classmethod
    def _from_scratch(cls, source: str) -> QvimEncoder:
        match = re.fullmatch(r"scratch:(mn\d\d)", source)
        if match is None or match.group(1) not in MN_WIDTHS:
            raise CheckpointError(
                f"{source!r}: a random encoder is named 'scratch:mnXX' with XX one of "
                f"{', '.join(n[2:] for n in MN_WIDTHS)} (e.g. 'scratch:mn04')"
            )
        encoder = cls(QvimConfig(mn=MNConfig.from_name(match.group(1))), source=source)
        encoder.mn.reset_parameters(torch.Generator().manual_seed(SCRATCH_SEED))
        return encoder

    @classmethod
    def _from_folder(cls, folder: Path) -> QvimEncoder:
        data, state = read_model_folder(folder, model_type=MODEL_TYPE, writer="QvimEncoder.save_pretrained")
        space = data.pop("space", None)
        encoder = cls(QvimConfig.from_dict(data), source=str(folder), space=space)
        load_strict(encoder.mn, state, folder / WEIGHTS_NAME)
        return encoder

    @classmethod
    def _from_checkpoint_file(cls, path: Path, *, tower: str) -> QvimEncoder:
        state_dict = read_state_dict(path)
        mn_state, layout = extract_mn_state_dict(state_dict, tower=tower, path=path)
        mn_config = infer_mn_config(mn_state, path=path)
        two_towers = layout != "efficientat"
        encoder = cls(
            QvimConfig(mn=mn_config),
            source=f"{path}#{tower}" if two_towers else str(path),
            space=_checkpoint_space(state_dict) if two_towers else None,
        )
        load_strict(encoder.mn, mn_state, path)
        logger.info("loaded %s (%s layout, %s tower) from %s", mn_config.name, layout, tower, path)
        return encoder


# -- checkpoint reading and conversion -------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.pt`` / ``.ckpt`` / ``.safetensors`` file; unwraps ``{"state_dict": ...}``, ``{"model": ...}``
    and a ``module.`` prefix. Only tensors are unpickled (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    import argparse

    try:
        # Lightning checkpoints may pickle an argparse.Namespace of hyper-parameters next to the tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or one that cannot be read safely ({first[:200]}); "
            "expected an EfficientAT .pt, a QVIM baseline .ckpt or a QBV .pt. If you trust the file, re-save "
            "its tensors: torch.save(torch.load(p, weights_only=False)['state_dict'], 'weights.pt')"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _checkpoint_space(state_dict: Mapping[str, Tensor]) -> str:
    """One space id for every tower of a two-tower checkpoint: the hash of all its tensors."""
    from qvimclap.fingerprint import state_dict_sha256

    tensors = {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
    return "qvim:" + state_dict_sha256(tensors)[:12]


#: Tower prefixes per two-tower layout (QBV's code names the reference tower ``rec``; ``ref`` is accepted).
_TWO_TOWER_PREFIXES = {
    "qvim-baseline": {"imitation": ("imitation_encoder.",), "reference": ("reference_encoder.",)},
    "qbv": {"imitation": ("im.",), "reference": ("rec.", "ref.")},
}


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """``"efficientat"``, ``"qvim-baseline"``, ``"qbv"`` or ``"unknown"``, from the key prefixes."""
    keys = list(state_dict)
    if any(k.startswith("imitation_encoder.") for k in keys):
        return "qvim-baseline"
    if any(k.startswith("im.features.") for k in keys):
        return "qbv"
    if any(k.startswith("features.") for k in keys):
        return "efficientat"
    return "unknown"


def extract_mn_state_dict(
    state_dict: Mapping[str, Tensor], *, tower: str = "imitation", path: Path | str = "checkpoint"
) -> tuple[dict[str, Tensor], str]:
    """The mn state_dict of one tower, in EfficientAT key layout, and the layout name found."""
    layout = detect_layout(state_dict)
    if layout == "unknown":
        sample = ", ".join(list(state_dict)[:4]) or "no keys"
        raise CheckpointError(
            f"{path}: not an EfficientAT/QVIM checkpoint (first keys: {sample}); expected 'features.*' "
            "(EfficientAT), 'imitation_encoder.*' (QVIM baseline) or 'im.*' (QBV)"
        )
    if layout == "efficientat":
        if tower != "imitation":
            raise CheckpointError(
                f"{path}: an EfficientAT tagger has a single tower; tower='reference' needs a two-tower "
                "checkpoint (QVIM baseline .ckpt or QBV dual encoder)"
            )
        return {k: v for k, v in state_dict.items() if k.startswith(("features.", "classifier."))}, layout
    prefixes = _TWO_TOWER_PREFIXES[layout][tower]
    found = next((p for p in prefixes if any(k.startswith(p) for k in state_dict)), None)
    if found is None and layout == "qbv":
        found = "im."  # a QBV "--single" model shares one encoder between both domains
        logger.info("%s: QBV single-encoder file; the reference tower is the imitation tower", path)
    if found is None:
        raise CheckpointError(f"{path}: has no {tower} tower (no keys starting with {' or '.join(prefixes)})")
    return {k[len(found) :]: v for k, v in state_dict.items() if k.startswith(found)}, layout


def infer_mn_config(mn_state: Mapping[str, Tensor], *, path: Path | str = "checkpoint") -> MNConfig:
    """Width and class count from tensor shapes (the last conv's channels are unique per published width)."""
    last = mn_state.get("features.16.0.weight")
    head = mn_state.get("classifier.5.bias")
    if last is None or head is None:
        missing = [k for k, v in (("features.16.0.weight", last), ("classifier.5.bias", head)) if v is None]
        raise CheckpointError(
            f"{path}: missing {', '.join(missing)}; not an EfficientAT mn with the 'mlp' head "
            "(fully-convolutional and attention heads are not supported)"
        )
    name = width_from_embedding_dim(int(last.shape[0]))
    if name is None:
        raise CheckpointError(
            f"{path}: last conv has {last.shape[0]} channels, which matches no published width "
            f"({', '.join(f'{n}: {MNConfig.from_name(n).embedding_dim}' for n in MN_WIDTHS)})"
        )
    return MNConfig.from_name(name, num_classes=int(head.shape[0]))


def _missing_source_message(source: str) -> str:
    if source.startswith(("http://", "https://")) or source in PUBLISHED_CHECKPOINTS:
        url = PUBLISHED_CHECKPOINTS.get(source, source)
        name = url.rsplit("/", 1)[-1]
        return (
            f"{source!r}: qvimclap never downloads weights; fetch {url} on a machine with network access, "
            f"copy it here (e.g. to ./checkpoints/{name}) and pass that path"
        )
    return (
        f"{source!r}: no such file or folder; pass a local EfficientAT .pt, QVIM baseline .ckpt, QBV .pt, "
        "a saved encoder folder, or 'scratch:mnXX' (download URLs: models.qvim.PUBLISHED_CHECKPOINTS)"
    )
