"""The aligned model: QVIM towers + projection heads that map audio into a frozen target embedder's space.

An :class:`AlignedModel` holds an imitation tower and a reference tower (EfficientAT MobileNetV3 encoders,
:class:`~qvimclap.models.qvim.QvimEncoder`; one shared module or two) and a projection head per tower (shared
when the towers are). Both towers map ``[B, T]`` float32 mono 32 kHz to ``[B, 512]`` L2-normalised vectors in
the space of the frozen embedder whose embeddings were the training targets (a CLAP by default, or any
target :mod:`qvimclap.models.target` loads, such as ``aisfx``); :attr:`AlignedConfig.target_spec` and
:attr:`AlignedConfig.clap_fingerprint` record which.

An input longer than the clip length is embedded whole: windows of the clip length, each embedded, pooled
(:mod:`qvimclap.models.windows`; ``AlignedConfig.long_input`` says how).

A saved model is a folder with ``config.json`` (everything needed to rebuild it: tower configs, head, input
policy, target and its fingerprint) and ``model.safetensors``::

    model = AlignedModel.from_pretrained("runs/demo")
    queries = model.embedder("imitation").embed([waveform_32k])  # [1, 512] float32, the target space
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qvimclap.audio import pad_or_crop
from qvimclap.config import require_known_keys
from qvimclap.device import module_device
from qvimclap.errors import AudioError, CheckpointError
from qvimclap.fingerprint import state_dict_sha256
from qvimclap.models.base import CONFIG_NAME, WEIGHTS_NAME, l2_normalize, read_safetensors, write_model_folder
from qvimclap.models.heads import HeadConfig, ProjectionHead
from qvimclap.models.view import TargetView, TargetViewConfig, target_features
from qvimclap.models.windows import LONG_INPUT_POLICIES, pool_windows, split_windows

MODEL_TYPE = "qvimclap-aligned"
TOWERS = ("imitation", "reference")
SAMPLE_RATE = 32000
#: How an input longer than the clip length is embedded, unless a model folder says otherwise. Measured best
#: in CLAP space on the built-in corpus (README, "Queries of any length"). Folders written before the policy
#: was recorded get it too: their weights do not depend on it (training takes random crops), it embeds all of
#: a query instead of its first seconds, and the fingerprint changes, so vectors stored under the old policy
#: are refused rather than mixed with new ones.
DEFAULT_LONG_INPUT = "windows-mean"


@dataclass(frozen=True)
class AlignedConfig:
    """Everything needed to rebuild an :class:`AlignedModel` (weights aside).

    ``imitation_tower`` / ``reference_tower`` are QVIM encoder configs (``QvimConfig.to_dict()``);
    ``reference_tower`` is None when the towers share one module. ``clip_duration_s`` is the towers' input
    length: a shorter clip is zero-padded to it. ``long_input`` says how a longer one is embedded (one of
    :data:`~qvimclap.models.windows.LONG_INPUT_POLICIES`; the windowed policies step ``window_hop_s``
    seconds, default half the clip). ``target`` is the embedder spec of the targets (``clap:scratch``,
    ``aisfx``, ...; empty in folders saved before targets other than CLAP existed, meaning
    ``clap:<clap_source>``). ``clap_fingerprint`` is the fingerprint of the target embedder (named for CLAP,
    the first target); its ``space`` is the space this model's embeddings live in. ``clap_source`` /
    ``clap_preprocessing`` describe a CLAP target. ``target_view`` (a
    :class:`~qvimclap.models.view.TargetViewConfig` dict, or None) adds the target's own view of the audio to
    both towers' vectors (:mod:`qvimclap.models.view`).
    """

    imitation_tower: dict[str, Any]
    head: dict[str, Any]
    reference_tower: dict[str, Any] | None = None
    clip_duration_s: float = 10.0
    clap_source: str = "scratch"
    clap_preprocessing: str = "audioldm"
    clap_fingerprint: dict[str, Any] = field(default_factory=dict)
    qvim_source: str = "scratch:mn04"
    long_input: str = DEFAULT_LONG_INPUT
    window_hop_s: float | None = None
    target: str = ""
    target_view: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.clip_duration_s <= 0:
            raise CheckpointError(f"clip_duration_s must be > 0, got {self.clip_duration_s}")
        if self.long_input not in LONG_INPUT_POLICIES:
            raise CheckpointError(
                f"long_input must be one of {', '.join(LONG_INPUT_POLICIES)}, got {self.long_input!r}"
            )
        if self.window_hop_s is not None and not 0 < self.window_hop_s <= self.clip_duration_s:
            raise CheckpointError(
                f"window_hop_s must be > 0 and at most clip_duration_s ({self.clip_duration_s}) so that no "
                f"audio is skipped, got {self.window_hop_s}"
            )
        HeadConfig.from_dict(self.head)  # validates early
        if self.target_view is not None:
            TargetViewConfig.from_dict(self.target_view)

    @property
    def hop_s(self) -> float:
        """Seconds between the starts of consecutive windows of a long input."""
        return self.window_hop_s if self.window_hop_s is not None else self.clip_duration_s / 2

    @property
    def shared_towers(self) -> bool:
        return self.reference_tower is None

    @property
    def space(self) -> str:
        return str(self.clap_fingerprint.get("space", "clap:unknown"))

    @property
    def target_spec(self) -> str:
        """The embedder spec of the target space (``clap:<source>`` for folders that predate ``target``)."""
        return self.target or f"clap:{self.clap_source}"

    @property
    def target_fingerprint(self) -> dict[str, Any]:
        return dict(self.clap_fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignedConfig:
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type != MODEL_TYPE:
            raise CheckpointError(f"config is of model_type {model_type!r}, expected {MODEL_TYPE!r}")
        require_known_keys(cls, data, "aligned model config", CheckpointError)
        return cls(**data)


def _qvim():
    # Imported here: the QVIM encoder module is heavy-ish and this file is imported by light callers.
    from qvimclap.models import qvim

    return qvim


def _build_tower(config: dict[str, Any]) -> nn.Module:
    qvim = _qvim()
    return qvim.QvimEncoder(qvim.QvimConfig.from_dict(config))


def _tower_config(encoder: nn.Module, duration_s: float) -> dict[str, Any]:
    # The tower's own input policy is set to the aligned model's, so a tower saved on its own behaves the
    # same.
    return {**encoder.config.to_dict(), "duration_s": float(duration_s)}


def _tower_dim(encoder: nn.Module) -> int:
    return int(encoder.embedding_dim)


def _tower_name(config: dict[str, Any] | None) -> str:
    return _qvim().QvimConfig.from_dict(config).mn.name if config else "mn"


def _pooled(encoder: nn.Module, waveforms: torch.Tensor) -> torch.Tensor:
    """The QVIM encoder's pooled embedding ``[B, D]`` without its AudioSet classifier (unused here: skipping
    it saves time and leaves no parameter without a gradient, which DistributedDataParallel would refuse)."""
    mel = encoder.mel(waveforms)  # [B, n_mels, frames]
    return encoder.mn.forward_features(mel.unsqueeze(1)).mean(dim=(2, 3))  # [B, D, F', T'] -> [B, D]


class AlignedModel(nn.Module):
    """QVIM towers + heads into the target space. ``forward`` is the training step's model call."""

    def __init__(self, config: AlignedConfig) -> None:
        super().__init__()
        self.config = config
        self.imitation_tower = _build_tower(config.imitation_tower)
        self.imitation_head = ProjectionHead(HeadConfig.from_dict(config.head))
        if config.shared_towers:
            self.reference_tower, self.reference_head = self.imitation_tower, self.imitation_head
        else:
            self.reference_tower = _build_tower(config.reference_tower)  # type: ignore[arg-type]
            self.reference_head = ProjectionHead(HeadConfig.from_dict(config.head))
        for tower in (self.imitation_tower, self.reference_tower):
            tower.mn.classifier.requires_grad_(False)  # kept for strict loading, never trained
        self.target_view = (
            None if config.target_view is None else TargetView(TargetViewConfig.from_dict(config.target_view))
        )

    def with_target_view(self, view: TargetView) -> AlignedModel:
        """This model's weights and ``view`` as a new model (its config records the view)."""
        model = type(self)(dataclasses.replace(self.config, target_view=view.config.to_dict()))
        model.load_state_dict(
            {**_unique_state_dict(self), **{f"target_view.{k}": v for k, v in view.state_dict().items()}},
            strict=False,
        )
        return model.to(module_device(self.imitation_head)).train(self.training)

    @classmethod
    def from_towers(
        cls,
        imitation_tower: nn.Module,
        reference_tower: nn.Module | None,
        *,
        head: HeadConfig | dict[str, Any] | str = "linear",
        clip_duration_s: float = 10.0,
        clap_source: str = "scratch",
        clap_preprocessing: str = "audioldm",
        clap_fingerprint: dict[str, Any] | None = None,
        qvim_source: str = "scratch:mn04",
        long_input: str = DEFAULT_LONG_INPUT,
        window_hop_s: float | None = None,
        target: str = "",
    ) -> AlignedModel:
        """Wrap existing QVIM encoders (their weights are kept); ``reference_tower=None`` shares the
        imitation one.

        ``head`` is a :class:`HeadConfig`, its dict, or a kind (``"linear"``/``"mlp"``) sized to the towers.
        ``target`` is the target's embedder spec (default ``clap:<clap_source>``); ``clap_fingerprint`` the
        target embedder's fingerprint.
        """
        in_dim = _tower_dim(imitation_tower)
        if reference_tower is not None and _tower_dim(reference_tower) != in_dim:
            raise CheckpointError(
                f"imitation and reference towers differ in embedding size ({in_dim} vs "
                f"{_tower_dim(reference_tower)}); use towers of the same width"
            )
        if isinstance(head, str):
            head = HeadConfig(in_dim=in_dim, kind=head)
        head_dict = head.to_dict() if isinstance(head, HeadConfig) else dict(head)
        config = AlignedConfig(
            imitation_tower=_tower_config(imitation_tower, clip_duration_s),
            reference_tower=None
            if reference_tower is None
            else _tower_config(reference_tower, clip_duration_s),
            head=head_dict,
            clip_duration_s=clip_duration_s,
            clap_source=clap_source,
            clap_preprocessing=clap_preprocessing,
            clap_fingerprint=dict(clap_fingerprint or {}),
            qvim_source=qvim_source,
            long_input=long_input,
            window_hop_s=window_hop_s,
            target=target,
        )
        model = cls(config)
        model.imitation_tower.load_state_dict(imitation_tower.state_dict())
        if reference_tower is not None:
            model.reference_tower.load_state_dict(reference_tower.state_dict())
        return model

    def towers_only(self) -> AlignedModel:
        """This model without its target view (the towers' own vectors), as a new model."""
        model = type(self)(dataclasses.replace(self.config, target_view=None))
        model.load_state_dict(
            {k: v for k, v in _unique_state_dict(self).items() if not k.startswith("target_view.")},
            strict=False,
        )
        return model.to(module_device(self.imitation_head)).train(self.training)

    # -- model calls -----------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def embedding_dim(self) -> int:
        return int(self.config.head["out_dim"])

    @property
    def num_samples(self) -> int:
        return int(round(self.config.clip_duration_s * SAMPLE_RATE))

    def encode(self, waveforms: torch.Tensor, tower: str = "imitation") -> torch.Tensor:
        """``[B, T]`` float32 mono 32 kHz -> ``[B, 512]`` float32 L2-normalised, through one tower."""
        if tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
        encoder = self.imitation_tower if tower == "imitation" else self.reference_tower
        head = self.imitation_head if tower == "imitation" else self.reference_head
        waveforms = waveforms.to(module_device(head))  # batches are built on the CPU
        return nn.functional.normalize(head(_pooled(encoder, waveforms)), dim=-1, eps=1e-8)

    def forward(
        self, imitations: torch.Tensor, references: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed a training batch: ``[B, T]`` imitations and (optionally) ``[B, T]`` references -> two ``[B,
        512]``.

        With shared towers both halves go through the encoder as one ``[2B, T]`` batch (one call, same
        weights).
        """
        if references is None:
            return self.encode(imitations, "imitation"), None
        if self.config.shared_towers and imitations.shape[1] == references.shape[1]:
            both = self.encode(torch.cat([imitations, references]), "imitation")  # [2B, 512]
            return both[: len(imitations)], both[len(imitations) :]
        return self.encode(imitations, "imitation"), self.encode(references, "reference")

    def input_windows(self, waveform: np.ndarray) -> np.ndarray:
        """The input policy for one ``[T]`` float32 clip -> ``[W, num_samples]`` windows to embed and pool.

        A clip of at most ``clip_duration_s`` is one zero-padded window; a longer one is cut to its start
        (``long_input="start"``), kept whole (``"whole"``: ``[1, T]``), or split into windows.
        """
        waveform = np.asarray(waveform, dtype=np.float32)
        if self.config.long_input == "start" or waveform.shape[-1] <= self.num_samples:
            return pad_or_crop(waveform, self.num_samples)[None]
        if self.config.long_input == "whole":
            return waveform[None]
        hop = max(1, int(round(self.config.hop_s * SAMPLE_RATE)))
        return split_windows(waveform, self.num_samples, hop)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group, for per-group gradient norms: ``head``, ``imitation_tower``,
        ``reference_tower``."""
        groups = {
            "head": _trainable(self.imitation_head),
            "imitation_tower": _trainable(self.imitation_tower),
        }
        if not self.config.shared_towers:
            groups["head"] += _trainable(self.reference_head)
            groups["reference_tower"] = _trainable(self.reference_tower)
        return groups

    def embedder(self, tower: str = "imitation", *, target: Any = None) -> AlignedEmbedder:
        """An :class:`~qvimclap.models.base.AudioEmbedder` over one tower (evaluation mode, no gradients).

        A model with a target view loads its target embedder when it first embeds, unless ``target`` (that
        embedder, already loaded) is given.
        """
        if tower not in TOWERS:
            raise CheckpointError(f"tower must be one of {', '.join(TOWERS)}, got {tower!r}")
        return AlignedEmbedder(self, tower, target=target)

    # -- persistence -----------------------------------------------------------------------------------------

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_dir`` (each written atomically)."""
        return write_model_folder(
            save_dir, self.config.to_dict(), _unique_state_dict(self), metadata={"model_type": MODEL_TYPE}
        )

    @classmethod
    def from_pretrained(cls, source: str | Path) -> AlignedModel:
        """Load a folder written by :meth:`save_pretrained`; strict: missing or unexpected keys raise."""
        source = Path(source)
        config_path, weights_path = source / CONFIG_NAME, source / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise CheckpointError(
                f"{source}: not an aligned model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "train one with `qvimclap align`"
            )
        try:
            config = AlignedConfig.from_dict(json.loads(config_path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{config_path}: not a valid aligned model config ({err})") from None
        model = cls(config)
        state = read_safetensors(weights_path)
        expected = set(_unique_state_dict(model))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_path}: weights do not match the config (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}); the folder is damaged or from another version"
            )
        model.load_state_dict(state, strict=False)  # shared towers: the alias keys are the same tensors
        model.eval()
        return model


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _unique_state_dict(model: AlignedModel) -> dict[str, torch.Tensor]:
    """The state_dict without the alias keys of shared towers (``reference_*`` point at ``imitation_*``)."""
    state = model.state_dict()
    if model.config.shared_towers:
        state = {k: v for k, v in state.items() if not k.startswith(("reference_tower.", "reference_head."))}
    return state


def is_aligned_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding an aligned model's ``config.json``."""
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


class AlignedEmbedder:
    """One tower of an :class:`AlignedModel` as an :class:`~qvimclap.models.base.AudioEmbedder` (CLAP
    space)."""

    def __init__(self, model: AlignedModel, tower: str, *, target: Any = None) -> None:
        self.model = model
        self.tower = tower
        self.sample_rate = SAMPLE_RATE
        self.embedding_dim = model.embedding_dim
        self._fingerprint: dict[str, Any] | None = None
        self._target = target

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            from qvimclap import __version__

            model = self.model
            encoder = model.imitation_tower if self.tower == "imitation" else model.reference_tower
            head = model.imitation_head if self.tower == "imitation" else model.reference_head
            weights = {f"tower.{k}": v for k, v in encoder.state_dict().items()}
            weights.update({f"head.{k}": v for k, v in head.state_dict().items()})
            tower_config = (
                model.config.imitation_tower if self.tower == "imitation" else model.config.reference_tower
            )
            self._fingerprint = {
                "encoder": "aligned",
                "model": f"{_tower_name(tower_config)}+{model.config.head['kind']}",
                "weights_sha256": state_dict_sha256(weights),
                "preprocessing": {
                    "sample_rate": SAMPLE_RATE,
                    "clip_duration_s": model.config.clip_duration_s,
                    "pad": "zero-end",
                    **_long_input_fingerprint(model.config),
                    "tower": tower_config,
                },
                "dim": self.embedding_dim,
                "space": model.config.space,
                "clap_source": model.config.clap_source,
                "qvimclap_version": __version__,
            }
            if model.target_view is not None:
                self._fingerprint["target_view"] = {
                    "features": model.target_view.config.features,
                    "weights_sha256": state_dict_sha256(model.target_view.state_dict()),
                }
        return dict(self._fingerprint)

    @torch.no_grad()
    def embed(
        self,
        waveforms: Sequence[np.ndarray],
        *,
        batch_size: int = 16,
        view_inputs: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 mono ``[T]`` arrays at 32 kHz, any lengths -> ``[N, 512]`` float32 L2-normalised, in input
        order.

        Each clip becomes its windows (:meth:`AlignedModel.input_windows`); ``batch_size`` windows of one
        length go through the tower at a time (eval mode: a window's embedding does not depend on its batch),
        and each clip's window embeddings are pooled as ``long_input`` says. ``view_inputs``: for a model
        with a target view, what the target makes of the clips when already computed (the imitation tower:
        their target features; the reference tower: their target embeddings), in input order.
        """
        if not len(waveforms):
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        windows = [self.model.input_windows(w) for w in waveforms]  # N x [W_i, T_i]
        was_training = self.model.training
        self.model.eval()
        how = "max" if self.model.config.long_input == "windows-max" else "mean"
        try:
            window_vectors = self._embed_windows(windows, batch_size)  # N x [W_i, 512]
            embeddings = np.stack([pool_windows(v, how) for v in window_vectors])
            if self.model.target_view is not None and np.isfinite(embeddings).all():
                embeddings = self._join_view(l2_normalize(embeddings), waveforms, view_inputs)
        finally:
            self.model.train(was_training)
        if not np.isfinite(embeddings).all():
            if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                raise CheckpointError("the aligned model holds NaN or Inf weights; the folder is damaged")
            # Finite weights: the clip is what overflowed; the caller names its file.
            bad = int(np.flatnonzero(~np.isfinite(embeddings).all(axis=1))[0])
            raise AudioError(f"waveform {bad}: the model produced NaN or Inf for this clip")
        return l2_normalize(embeddings)

    def target(self) -> Any:
        """The frozen target embedder of a model with a target view, loaded once; refused when it is not the
        one the model was aligned to."""
        if self._target is None:
            from qvimclap.models.target import load_target

            config = self.model.config
            self._target = load_target(config.target_spec, clap_preprocessing=config.clap_preprocessing)
            self._target.to(module_device(self.model.imitation_head))
        got, want = self._target.fingerprint().get("space"), self.model.config.space
        if got != want:
            raise CheckpointError(
                f"the model's target view needs its target {self.model.config.target_spec!r} of space "
                f"{want!r}, but that embeds into {got!r}; the target's weights have changed since `align`"
            )
        return self._target

    def _join_view(
        self, embeddings: np.ndarray, waveforms: Sequence[np.ndarray], inputs: np.ndarray | None
    ) -> np.ndarray:
        """Each clip's tower vector joined with the target's view of it (:mod:`qvimclap.models.view`)."""
        view = self.model.target_view
        assert view is not None
        if inputs is None:
            inputs = self._view_inputs(waveforms)
        inputs_t = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
        if self.tower == "imitation":
            directions = view.imitation_direction(inputs_t)
        else:
            directions = view.direction(inputs_t.to(view.center))
        tower = torch.from_numpy(embeddings).to(view.center)
        return view.join(tower, directions).float().cpu().numpy()

    def _view_inputs(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """The target's features (imitation tower) or embeddings (reference tower) of 32 kHz clips."""
        from qvimclap.audio import resample

        target = self.target()
        clips = [
            resample(np.asarray(w, dtype=np.float32), SAMPLE_RATE, target.sample_rate) for w in waveforms
        ]
        return target_features(target, clips) if self.tower == "imitation" else target.embed(clips)

    def _embed_windows(self, windows: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        """Every window through the tower, in batches of windows of equal length; ``[W_i, 512]`` per clip."""
        flat = [w for clip in windows for w in clip]
        lengths = np.array([w.shape[-1] for w in flat])
        out = np.zeros((len(flat), self.embedding_dim), dtype=np.float32)
        for length in np.unique(lengths):  # one length unless long_input == "whole"
            rows = np.flatnonzero(lengths == length)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = torch.from_numpy(np.stack([flat[j] for j in chunk]))  # [b, T]
                out[chunk] = self.model.encode(batch, self.tower).float().cpu().numpy()
        return np.split(out, np.cumsum([len(clip) for clip in windows])[:-1])


def _long_input_fingerprint(config: AlignedConfig) -> dict[str, Any]:
    """The fingerprint keys of the long-input policy; ``"start"`` keeps the keys of the folders written
    before the policy was recorded, so their stores stay valid when the policy is unchanged."""
    if config.long_input == "start":
        return {"crop": "start"}
    hop = config.hop_s if config.long_input.startswith("windows") else None
    return {"long_input": config.long_input, "window_hop_s": hop}
