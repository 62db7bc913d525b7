"""The CLAP audio encoder that defines the 512-d target space, computed the way AudioLDM computed it.

AudioLDM was trained on the audio embeddings of its OWN CLAP (the weights inside the original AudioLDM
``.ckpt``; on the hub as ``sanchit-gandhi/clap-htsat-unfused-s-full-v2``). This module runs that CLAP
through transformers' ``ClapAudioModelWithProjection`` + ``ClapFeatureExtractor``, with the feature-extractor
settings of the published models set explicitly (the class defaults differ), and returns ``[N, 512]`` float32
L2-normalised embeddings.

Two preprocessings (``ClapEncoder.from_pretrained(..., preprocessing=...)``):

``"audioldm"`` (default; for alignment targets), input mono **16 kHz**, as AudioLDM built its conditions:
    1. remove the mean of the whole clip;
    2. keep the first 10.24 s (163840 samples) or zero-pad to 10.24 s at the end (AudioLDM's segment length);
    3. a window that is silent now (peak below -60 dBFS, e.g. a DC-only clip) raises SilentAudioError;
    4. peak-normalise to 0.5: ``x / (max|x| + 1e-8) * 0.5``;
    5. resample to 48 kHz with soxr (AudioLDM used torchaudio's sinc resampler: a negligible difference);
    6. keep the first 10 s (480000 samples). AudioLDM's CLAP took a uniformly RANDOM 10 s window of the
       10.24 s, so its training conditions jittered by up to 0.24 s; we always take offset 0, one of the
       windows it drew, so the same clip always gives the same embedding;
    7. CLAP's log-mel (64 Slaney bands, 50 Hz to 14 kHz, hop 480, in dB) and the HTSAT forward pass.

``"plain"``, input mono **48 kHz**, as LAION's CLAP is used for retrieval: no normalisation; clips longer than
    10 s keep their first 10 s (CLAP's own ``rand_trunc`` would take a random window); shorter clips are
    repeat-padded (tiled a whole number of times, then zero-filled to 10 s), as CLAP does.

Never NaN: the model always runs in float32 (half precision underflows CLAP's log-mel floor of 1e-10 to 0
and turns every all-zero frame into -inf: the seed log's "99 % NaN" targets); an empty clip or non-finite
samples raise :class:`AudioError`; an all-silent clip raises :class:`SilentAudioError` and is not embedded;
every batch is checked finite before anything is returned.

``ClapEncoder.from_pretrained("scratch")`` builds a randomly initialised HTSAT-tiny CLAP from a fixed seed so
every command runs end to end without weights. Its space is NOT AudioLDM's space: embeddings from it only test
plumbing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from qvimclap.audio import check_mono, is_silent, resample
from qvimclap.device import module_device
from qvimclap.errors import CheckpointError, SilentAudioError
from qvimclap.fingerprint import state_dict_sha256
from qvimclap.models.base import l2_normalize, read_json

if TYPE_CHECKING:
    from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor

logger = logging.getLogger(__name__)

#: CLAP's own input: 10 s at 48 kHz.
CLAP_SAMPLE_RATE = 48_000
CLAP_NUM_SAMPLES = 480_000
#: AudioLDM's conditions: 10.24 s at 16 kHz, mean removed, peak 0.5.
AUDIOLDM_SAMPLE_RATE = 16_000
AUDIOLDM_NUM_SAMPLES = 163_840
AUDIOLDM_PEAK = 0.5
AUDIOLDM_PEAK_EPS = 1e-8
#: Seed of the ``"scratch"`` model's random initialisation.
SCRATCH_SEED = 0

#: ClapFeatureExtractor settings of laion/clap-htsat-unfused and AudioLDM's CLAP (the class defaults differ:
#: frequency_min 0, truncation "fusion"). ``rand_trunc`` never fires: we crop to 10 s before calling it.
FEATURE_EXTRACTOR_SETTINGS: dict[str, Any] = {
    "feature_size": 64,
    "sampling_rate": CLAP_SAMPLE_RATE,
    "hop_length": 480,
    "max_length_s": 10,
    "fft_window_size": 1024,
    "frequency_min": 50,
    "frequency_max": 14_000,
    "top_db": None,
    "truncation": "rand_trunc",
    "padding": "repeatpad",
}

PREPROCESSINGS = ("audioldm", "plain")
#: Written next to a saved model so ``from_pretrained`` restores the preprocessing and provenance.
SIDECAR_NAME = "qvimclap_clap.json"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def preprocessing_settings(name: str) -> dict[str, Any]:
    """Every setting of preprocessing ``name`` that changes outputs (recorded in fingerprints)."""
    _check_preprocessing(name)
    settings: dict[str, Any] = {"name": name, "clap_sample_rate": CLAP_SAMPLE_RATE}
    if name == "audioldm":
        settings |= {
            "input_sample_rate": AUDIOLDM_SAMPLE_RATE,
            "remove_mean": True,
            "window_samples": AUDIOLDM_NUM_SAMPLES,
            "crop": "start",
            "pad": "zeros_end",
            "peak": AUDIOLDM_PEAK,
            "peak_eps": AUDIOLDM_PEAK_EPS,
            "resampler": "soxr-HQ",
            "clap_crop": "start",
        }
    else:
        settings |= {"input_sample_rate": CLAP_SAMPLE_RATE, "clap_crop": "start"}
    settings["feature_extractor"] = dict(FEATURE_EXTRACTOR_SETTINGS)
    return settings


def prepare_audioldm_waveform(waveform: np.ndarray, *, source: str = "<array>") -> np.ndarray:
    """AudioLDM-style conditioning input: float32 mono ``[T]`` at 16 kHz -> float32 ``[480000]`` at 48 kHz.

    Steps 1-6 of the module docstring. Raises :class:`AudioError` (empty, non-finite, not mono) and
    :class:`SilentAudioError` (silent once the mean is removed).
    """
    x = check_mono(waveform, source).astype(np.float64)
    x = x - x.mean()  # 1. the mean of the whole clip, as AudioLDM's normalize_wav
    if x.shape[0] >= AUDIOLDM_NUM_SAMPLES:  # 2. deterministic: the start of the clip
        x = x[:AUDIOLDM_NUM_SAMPLES]
    else:
        x = np.pad(x, (0, AUDIOLDM_NUM_SAMPLES - x.shape[0]))
    if is_silent(x):  # 3. peak-normalising silence would blow up noise (or give 0/0 without the eps)
        raise SilentAudioError(
            f"{source}: audio is silent once its mean (DC offset) is removed; not embedded"
        )
    x = x / (np.abs(x).max() + AUDIOLDM_PEAK_EPS) * AUDIOLDM_PEAK  # 4.
    y = resample(x.astype(np.float32), AUDIOLDM_SAMPLE_RATE, CLAP_SAMPLE_RATE)  # 5. [491520]
    return np.ascontiguousarray(y[:CLAP_NUM_SAMPLES], dtype=np.float32)  # 6.


def prepare_plain_waveform(waveform: np.ndarray, *, source: str = "<array>") -> np.ndarray:
    """LAION-style input: float32 mono ``[T]`` at 48 kHz -> its first 10 s (``[<= 480000]`` float32).

    Shorter clips are returned as they are: the feature extractor repeat-pads them, as CLAP does.
    """
    x = check_mono(waveform, source)
    if is_silent(x):
        raise SilentAudioError(f"{source}: audio is silent (peak below -60 dBFS); not embedded")
    return np.ascontiguousarray(x[:CLAP_NUM_SAMPLES], dtype=np.float32)


def make_feature_extractor() -> ClapFeatureExtractor:
    """transformers' ClapFeatureExtractor with the published models' settings set explicitly."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(**FEATURE_EXTRACTOR_SETTINGS)


def scratch_audio_model(seed: int = SCRATCH_SEED) -> ClapAudioModelWithProjection:
    """A random HTSAT-tiny CLAP audio tower (transformers' default config), reproducible from ``seed``.

    The global torch RNG is left as it was (the seed is applied inside ``torch.random.fork_rng``).
    """
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClapAudioModelWithProjection(ClapAudioConfig())
    return model.eval()


class ClapEncoder(nn.Module):
    """CLAP audio tower as an :class:`~qvimclap.models.base.AudioEmbedder`: waveforms -> ``[N, 512]`` float32.

    Build it with :meth:`from_pretrained`. ``sample_rate`` is the rate ``embed`` expects: 16000 for the
    ``"audioldm"`` preprocessing, 48000 for ``"plain"``. The wrapped ``model`` stays frozen and in eval mode.
    """

    def __init__(
        self,
        model: ClapAudioModelWithProjection,
        *,
        preprocessing: str = "audioldm",
        source: str = "<memory>",
    ) -> None:
        super().__init__()
        _check_preprocessing(preprocessing)
        self.model = model.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.source = source
        self.feature_extractor = make_feature_extractor()
        self._weights_sha256: str | None = None

    # --- construction ---------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, source: str | Path, *, preprocessing: str | None = None) -> ClapEncoder:
        """Load a CLAP audio tower.

        ``source``: ``"scratch"`` (seeded random HTSAT-tiny, NOT AudioLDM's space); a transformers CLAP folder
        (``ClapModel`` or ``ClapAudioModelWithProjection``, e.g. a copy of
        ``sanchit-gandhi/clap-htsat-unfused-s-full-v2``) or a hub id already in the local cache; a LAION
        ``.pt``; or an original AudioLDM ``.ckpt`` (converted in memory, strictly; see ``clap_convert``).
        ``preprocessing``: ``"audioldm"`` or ``"plain"``; None takes the one saved with the folder, else
        ``"audioldm"``. Always float32 on CPU.
        """
        text = str(source)
        if preprocessing is not None:
            _check_preprocessing(preprocessing)
        if text == "scratch":
            return cls(scratch_audio_model(), preprocessing=preprocessing or "audioldm", source="scratch")
        path = Path(text).expanduser()
        if path.is_file():
            from qvimclap.models.clap_convert import load_checkpoint_audio_model

            model = load_checkpoint_audio_model(path)
            return cls(model, preprocessing=preprocessing or "audioldm", source=str(path))
        if path.is_dir():
            saved = _read_sidecar(path)
            model = _load_transformers_audio_model(path, str(path))
            return cls(
                model, preprocessing=preprocessing or saved.get("preprocessing", "audioldm"), source=text
            )
        if path.suffix.lower() in _CHECKPOINT_SUFFIXES or text.count("/") != 1 or text.startswith((".", "/")):
            raise CheckpointError(
                f"CLAP source {text!r}: no such file or folder. Pass 'scratch', a transformers CLAP folder, "
                "a LAION CLAP .pt or an AudioLDM .ckpt"
            )
        return cls(
            _load_transformers_audio_model(text, text), preprocessing=preprocessing or "audioldm", source=text
        )

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write the audio tower as a transformers folder (``config.json`` + ``model.safetensors``), the
        feature extractor's ``preprocessor_config.json`` and ``qvimclap_clap.json`` (preprocessing, source,
        fingerprint)."""
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(save_dir, safe_serialization=True)
        self.feature_extractor.save_pretrained(save_dir)
        sidecar = {
            "preprocessing": self.preprocessing,
            "source": self.source,
            "fingerprint": self.fingerprint(),
        }
        (save_dir / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        return save_dir

    # --- AudioEmbedder --------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return AUDIOLDM_SAMPLE_RATE if self.preprocessing == "audioldm" else CLAP_SAMPLE_RATE

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def fingerprint(self) -> dict[str, Any]:
        """Encoder, architecture, weights hash, preprocessing and vector space (``"clap:" + sha[:12]``)."""
        from qvimclap import __version__

        sha = self.weights_sha256()
        return {
            "encoder": "clap",
            "model": audio_model_name(self.model.config),
            "weights_sha256": sha,
            "preprocessing": preprocessing_settings(self.preprocessing),
            "dim": self.embedding_dim,
            "space": "clap:" + sha[:12],
            "source": self.source,
            "qvimclap_version": __version__,
        }

    def weights_sha256(self) -> str:
        """SHA-256 of the audio tower's state_dict (computed once: the tower is frozen)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = state_dict_sha256(self.model.state_dict())
        return self._weights_sha256

    def prepare(self, waveform: np.ndarray, *, source: str = "<array>") -> np.ndarray:
        """One clip at ``sample_rate`` -> the float32 48 kHz waveform handed to CLAP's feature extractor."""
        if self.preprocessing == "audioldm":
            return prepare_audioldm_waveform(waveform, source=source)
        return prepare_plain_waveform(waveform, source=source)

    def features(self, waveforms_48k: Sequence[np.ndarray]) -> torch.Tensor:
        """Prepared 48 kHz clips -> CLAP log-mel ``[B, 1, 1001, 64]`` float32 (repeat-padded to 10 s)."""
        feats = self.feature_extractor(
            [np.asarray(w, dtype=np.float64) for w in waveforms_48k],
            sampling_rate=CLAP_SAMPLE_RATE,
            return_tensors="np",
        )["input_features"]
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    @torch.inference_mode()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, 1, 1001, 64]`` float32 -> unnormalised ``audio_embeds`` ``[B, 512]`` float32."""
        self._check_float32()
        features = features.to(device=self.device, dtype=torch.float32)
        out = self.model(
            input_features=features, is_longer=torch.zeros(features.shape[0], 1, dtype=torch.bool)
        )
        return out.audio_embeds.float()

    def embed(
        self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16, normalize: bool = True
    ) -> np.ndarray:
        """Float32 mono ``[T]`` clips at ``sample_rate`` -> ``[N, 512]`` float32 (L2-normalised unless
        ``normalize=False``), finite, in input order. Bad clips raise before anything is computed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prepared = [self.prepare(w, source=f"waveform {i}") for i, w in enumerate(waveforms)]
        out = np.zeros((len(prepared), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(prepared), batch_size):
            batch = prepared[start : start + batch_size]
            emb = self(self.features(batch)).cpu().numpy()
            _check_finite(emb, start, self.source)
            out[start : start + len(batch)] = l2_normalize(emb) if normalize else emb
        return out

    def embed_text(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Texts -> ``[N, 512]`` float32 L2-normalised CLAP text embeddings (``""`` is AudioLDM's
        unconditional condition). Needs a transformers folder with a text tower and tokenizer files."""
        from qvimclap.models.clap_convert import load_text_tower

        text_model, tokenizer = load_text_tower(self.source)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    return_tensors="pt",
                )
                emb = text_model(**tokens).text_embeds.float().numpy()
                _check_finite(emb, start, self.source)
                out.append(l2_normalize(emb))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def _check_float32(self) -> None:
        dtype = next(self.model.parameters()).dtype
        if dtype != torch.float32:
            raise CheckpointError(
                f"CLAP must run in float32, got {dtype}: half precision underflows CLAP's log-mel floor and "
                "gives NaN embeddings for padded or quiet audio. Call .float() on the encoder"
            )


def audio_model_name(config: Any) -> str:
    """``"htsat-tiny"``, ``"htsat-base"`` or a descriptive name for other HTSAT sizes."""
    width, depths = int(config.patch_embeds_hidden_size), list(config.depths)
    if (width, depths) == (96, [2, 2, 6, 2]):
        return "htsat-tiny"
    if (width, depths) == (128, [2, 2, 12, 2]):
        return "htsat-base"
    return f"htsat-{width}-{'-'.join(map(str, depths))}"


def _check_preprocessing(name: str) -> None:
    if name not in PREPROCESSINGS:
        raise CheckpointError(f"preprocessing {name!r} is not known; use one of {', '.join(PREPROCESSINGS)}")


def _check_finite(emb: np.ndarray, start: int, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        rows = ", ".join(str(start + int(i)) for i in bad[:5])
        raise CheckpointError(
            f"CLAP ({source}) produced non-finite embeddings for inputs {rows}; the weights may contain "
            "NaN/Inf (check the checkpoint) or the model is not float32"
        )


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = path / SIDECAR_NAME
    if not sidecar.is_file():
        return {}
    return json.loads(sidecar.read_text())


def _load_transformers_audio_model(location: str | Path, label: str) -> ClapAudioModelWithProjection:
    """Load the audio tower of a transformers CLAP folder / cached hub id, strictly, in float32."""
    from transformers import ClapAudioModelWithProjection

    folder = Path(location)
    if folder.is_dir():
        _check_transformers_folder(folder)
    try:
        with quiet_transformers():  # a full ClapModel folder lists its text tensors as "unexpected": expected
            model, info = ClapAudioModelWithProjection.from_pretrained(
                location, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"CLAP source {label!r}: cannot load a transformers CLAP model ({first}). Offline, a hub id only "
            "works when it is in the local cache; otherwise pass a folder, a LAION .pt or an AudioLDM .ckpt"
        ) from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"CLAP source {label!r}: the weights lack {len(missing)} tensors of the audio tower, e.g. "
            f"{', '.join(sorted(missing)[:3])}; it is not a complete CLAP audio model"
        )
    return model.float().eval()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for one call, restoring the previous settings."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _check_transformers_folder(folder: Path) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = (
            " It looks like a diffusers AudioLDM folder, which holds only CLAP's text tower: convert the "
            "original AudioLDM .ckpt with `qvimclap convert-clap` instead"
            if (folder / "model_index.json").is_file()
            else ""
        )
        raise CheckpointError(f"{folder}: not a transformers CLAP folder (no config.json).{hint}")
    data = read_json(config_path)
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in ("clap", "clap_audio_model"):
        raise CheckpointError(
            f"{folder}: config.json has model_type {model_type!r}, not a CLAP model ('clap' or "
            "'clap_audio_model'). Pass a CLAP folder, a LAION CLAP .pt or an AudioLDM .ckpt"
        )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64), for reference checks."""
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a64 @ b64 / max(math.sqrt(float(a64 @ a64) * float(b64 @ b64)), 1e-300))
