"""Sound from a 512-d CLAP condition through an unmodified AudioLDM (diffusers components, weights untouched).

AudioLDM's UNet was trained conditioned on ONE L2-normalised 512-d CLAP *audio* embedding (``class_labels``,
with ``encoder_hidden_states=None``), so any vector of that space is a valid condition: a CLAP audio
embedding, or the aligned embedding of a vocal imitation (``qvimclap align``). This module

1. loads a diffusers AudioLDM folder (or a hub id already in the local Hugging Face cache) as its published
   components and checks them against AudioLDM's conditioning contract (:func:`load_audioldm`);
2. runs the sampling loop of ``AudioLDMPipeline`` on a given condition, several candidates at once
   (:func:`generate`; a test proves it equal to
   ``AudioLDMPipeline(prompt_embeds=..., negative_prompt_embeds=...)`` for the same seed);
3. re-ranks candidates by the cosine between their CLAP audio embedding and the condition
   (:func:`rank_candidates`), as the original AudioLDM did with text;
4. does all of it from an imitation waveform (:func:`generate_from_imitation`).

Conventions. Conditions are float32 ``[512]``, L2-normalised here (the diffusers pipeline does not do it).
The *unconditional* condition for classifier-free guidance is AudioLDM's own: the normalised CLAP text
embedding of the empty string from the folder's ``text_encoder`` (10% of AudioLDM's training steps used it),
computed once and cached in ``cache_dir``. A folder without a text encoder falls back to the ZERO vector (the
UNet then sees only the bias of its class-embedding projection): it runs, but it is not the null condition
AudioLDM was trained with, so guidance behaves differently; a warning says so, and callers may pass their own
``unconditional``.

Durations: AudioLDM makes audio in steps of ``hop_length * vae_scale_factor`` samples (160 * 4 at 16 kHz =
40 ms for AudioLDM-S). Other durations are rounded UP to the next step, logged; the output has that length.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvimclap.audio import is_silent, prepare_waveform, resample
from qvimclap.device import module_device, resolve_device
from qvimclap.errors import AudioError, CheckpointError, QvimclapError, about_file, first_line
from qvimclap.files import atomic_path
from qvimclap.models.base import AudioEmbedder, l2_normalize

logger = logging.getLogger(__name__)

#: Size of AudioLDM's condition (CLAP's joint space); the UNet's ``projection_class_embeddings_input_dim``.
CONDITION_DIM = 512
#: Longest audio one call may make; AudioLDM was trained on 10.24 s, longer costs memory and quality.
MAX_DURATION_S = 60.0
#: Component folders a diffusers AudioLDM folder must have, with the config file each holds.
REQUIRED_COMPONENTS = {
    "unet": "config.json",
    "vae": "config.json",
    "vocoder": "config.json",
    "scheduler": "scheduler_config.json",
}
#: ``--scheduler`` names -> diffusers scheduler classes, built from the folder's own scheduler config.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
}
DOWNLOAD_HINT = (
    "put a diffusers AudioLDM folder on this machine (model_index.json, unet/, vae/, vocoder/, scheduler/, "
    "text_encoder/, tokenizer/), e.g. on a machine with internet run "
    "`hf download cvssp/audioldm-s-full-v2 --local-dir "
    "models/audioldm-s-full-v2`, copy that folder here and pass its path (--audioldm)"
)


class GenerationError(QvimclapError):
    """A generation setting or condition cannot be used (duration, weights, condition vector)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample. Candidate ``i`` is row ``i`` of ONE ``[N, ...]`` noise draw from a CPU
    ``torch.Generator`` seeded with ``seed`` (as ``AudioLDMPipeline(num_waveforms_per_prompt=N)``), so a seed
    fixes every candidate."""

    duration_s: float = 5.0
    num_steps: int = 50
    guidance_scale: float = 2.5
    eta: float = 0.0
    seed: int = 0
    num_candidates: int = 1
    scheduler: str = "ddim"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration_s) and 0 < self.duration_s <= MAX_DURATION_S):
            raise GenerationError(
                f"duration {self.duration_s!r} s cannot be generated: use (0, {MAX_DURATION_S:g}] s"
            )
        if self.num_steps < 1:
            raise GenerationError(f"steps {self.num_steps} must be at least 1 (AudioLDM's default is 200)")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise GenerationError(
                f"guidance {self.guidance_scale} must be >= 0 (1 or less disables guidance)"
            )
        if not (0.0 <= self.eta <= 1.0):
            raise GenerationError(f"eta {self.eta} must be in [0, 1] (0 = deterministic DDIM)")
        if self.num_candidates < 1:
            raise GenerationError(f"candidates {self.num_candidates} must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise GenerationError(
                f"scheduler {self.scheduler!r} is unknown: use one of {', '.join(SCHEDULERS)}"
            )
        if self.scheduler == "pndm" and self.num_steps < 4:  # its Runge-Kutta warm-up needs 4 steps
            raise GenerationError(f"steps {self.num_steps} is too few for the pndm scheduler: use 4 or more")


@dataclass
class AudioLdm:
    """The published components of one AudioLDM folder. Build with :func:`load_audioldm` (or directly from
    modules, e.g. in tests); nothing here changes a weight."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    vocoder: Any  # transformers.SpeechT5HifiGan
    scheduler_config: dict[str, Any]
    text_encoder: Any | None = None  # transformers.ClapTextModelWithProjection
    tokenizer: Any | None = None  # transformers.RobertaTokenizer
    source: str = "<modules>"
    cache_dir: Path | None = None
    _unconditional: np.ndarray | None = field(default=None, repr=False)

    @property
    def sample_rate(self) -> int:
        """Output sample rate of the vocoder (16000 for AudioLDM)."""
        return int(self.vocoder.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame (160 = 10 ms at 16 kHz)."""
        return int(np.prod(self.vocoder.config.upsample_rates))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def duration_step_s(self) -> float:
        """The granularity of durations AudioLDM can make (one latent frame), in seconds."""
        return self.hop_length * self.vae_scale_factor / self.sample_rate

    def make_scheduler(self, name: str = "ddim") -> Any:
        """A fresh scheduler of kind ``name`` from the folder's scheduler config (they keep run state)."""
        import diffusers

        if name not in SCHEDULERS:
            raise GenerationError(f"scheduler {name!r} is unknown: use one of {', '.join(SCHEDULERS)}")
        return getattr(diffusers, SCHEDULERS[name]).from_config(self.scheduler_config)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, 512]`` float32 L2-normalised CLAP text embeddings, tokenised as ``AudioLDMPipeline`` does."""
        self._require_text_encoder("a text condition")
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self._text_embeds(tokens)

    def unconditional_condition(self) -> np.ndarray:
        """AudioLDM's null condition ``[512]`` float32: the normalised CLAP text embedding of "" (cached on
        disk), or zeros when the folder has no text encoder (see the module docstring)."""
        if self._unconditional is None:
            if self.text_encoder is None or self.tokenizer is None:
                logger.warning(
                    "%s has no text_encoder/tokenizer: using a zero vector as the unconditional condition "
                    "(AudioLDM was trained with the CLAP text embedding of ''; guidance will differ)",
                    self.source,
                )
                self._unconditional = np.zeros(CONDITION_DIM, dtype=np.float32)
            else:
                self._unconditional = self._cached_empty_text_embedding()
        return self._unconditional.copy()

    def _cached_empty_text_embedding(self) -> np.ndarray:
        path = self._cache_path()
        if path is not None and path.is_file():
            try:  # a cache is only a shortcut: whatever is wrong with it, recompute
                cached = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                cached = None
                logger.warning(
                    "recomputing the null condition: cache %s is unreadable (%s)", path, first_line(err)
                )
            if (
                isinstance(cached, np.ndarray)
                and cached.shape == (CONDITION_DIM,)
                and np.isfinite(cached).all()
            ):
                return cached.astype(np.float32)
            logger.warning("recomputing the null condition: cache %s is damaged; it is rewritten", path)
        # Mirrors AudioLDMPipeline._encode_prompt for negative_prompt=None: "" padded to the embedding size.
        tokens = self.tokenizer(
            [""], padding="max_length", max_length=CONDITION_DIM, truncation=True, return_tensors="pt"
        )
        embedding = self._text_embeds(tokens)[0]
        if path is not None:
            try:
                with atomic_path(path) as tmp:  # concurrent runs never read half a file
                    np.save(tmp, embedding)
            except (OSError, QvimclapError) as err:  # a read-only or full cache must not stop generation
                logger.warning("not caching the null condition in %s (%s)", path, first_line(err))
        return embedding

    def _cache_path(self) -> Path | None:
        """Cache file keyed by the text encoder and tokenizer files (path, size, mtime), like build caches."""
        if self.cache_dir is None or not hasattr(self.text_encoder, "name_or_path"):
            return None
        folders = [Path(self.text_encoder.name_or_path), Path(getattr(self.tokenizer, "name_or_path", ""))]
        files = sorted(p for d in folders if d.is_dir() for p in d.iterdir() if p.is_file())
        if not files:
            return None
        stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"audioldm-unconditional-{key}.npy"

    def _text_embeds(self, tokens: Any) -> np.ndarray:
        device = module_device(self.text_encoder)
        with torch.no_grad():
            out = self.text_encoder(
                tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
            )
        embeds = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return embeds.cpu().numpy().astype(np.float32)

    def _require_text_encoder(self, what: str) -> None:
        if self.text_encoder is None or self.tokenizer is None:
            raise GenerationError(
                f"{what} needs AudioLDM's CLAP text encoder, but {self.source} has no text_encoder/ and "
                "tokenizer/ folders: use the full AudioLDM folder"
            )


@dataclass(frozen=True)
class GenerationResult:
    """Candidates best first. ``waveforms`` ``[N, T]`` float32 at ``sample_rate`` (16 kHz); ``scores`` ``[N]``
    cosine to ``condition`` (``-inf`` for a silent candidate; None when not re-ranked);
    ``candidate_indices`` the draw each came from; ``condition`` the normalised ``[512]`` vector used."""

    waveforms: np.ndarray
    sample_rate: int
    duration_s: float
    condition: np.ndarray
    candidate_indices: np.ndarray
    scores: np.ndarray | None


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$QVIMCLAP_CACHE_DIR`` or ``~/.cache/qvimclap``: where small derived files (null condition) live."""
    return Path(os.environ.get("QVIMCLAP_CACHE_DIR", "~/.cache/qvimclap")).expanduser()


def resolve_audioldm_dir(source: str | Path) -> Path:
    """A local AudioLDM folder for ``source``: a folder path, or a hub id already in the Hugging Face cache.

    Never downloads; raises :class:`CheckpointError` saying where to put the weights.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
            raise CheckpointError(
                f"AudioLDM weights not found: '{text}' is neither a folder nor in the local Hugging Face "
                "cache; " + DOWNLOAD_HINT
            ) from None
    raise CheckpointError(f"AudioLDM weights not found: '{text}' is not a folder; " + DOWNLOAD_HINT)


def load_audioldm(
    source: str | Path, *, cache_dir: str | Path | None = None, device: str = "auto"
) -> AudioLdm:
    """Load the components of a diffusers AudioLDM folder (or cached hub id) in float32 on ``device``
    (``"auto"``: a CUDA GPU when torch sees one, else the CPU).

    ``cache_dir`` holds the cached null condition (default :func:`default_cache_dir`). Raises
    :class:`CheckpointError` for a missing or wrong folder (e.g. AudioLDM 2 or Stable Diffusion).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan

    root = resolve_audioldm_dir(source)
    missing = [f"{n}/{f}" for n, f in REQUIRED_COMPONENTS.items() if not (root / n / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{root} is not a diffusers AudioLDM folder: missing {', '.join(missing)}; " + DOWNLOAD_HINT
        )
    with _quiet_loading():
        unet = _load_component(UNet2DConditionModel, root / "unet", torch_dtype=torch.float32)
        vae = _load_component(AutoencoderKL, root / "vae", torch_dtype=torch.float32)
        vocoder = _load_component(SpeechT5HifiGan, root / "vocoder", dtype=torch.float32)
        text_encoder, tokenizer = _load_text_tower(root)
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    target = resolve_device(device)
    if text_encoder is not None:
        text_encoder = text_encoder.to(target)
    audioldm = AudioLdm(
        unet=unet.to(target).eval(),
        vae=vae.to(target).eval(),
        vocoder=vocoder.to(target).eval(),
        scheduler_config=scheduler_config,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        source=str(source),
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
    )
    check_components(audioldm)
    return audioldm


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Keep the terminal to qvimclap's own progress while the components load: diffusers' advice to install
    ``accelerate`` and the libraries' weight-loading bars say nothing a user can act on. Errors still show."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    saved = [
        (lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
        for lib in (diffusers_logging, transformers_logging)
    ]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


def _load_text_tower(root: Path) -> tuple[Any | None, Any | None]:
    """The optional CLAP text encoder + tokenizer; both or neither."""
    if not ((root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir()):
        return None, None
    from transformers import AutoTokenizer, ClapTextModelWithProjection

    encoder = _load_component(ClapTextModelWithProjection, root / "text_encoder", dtype=torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{root / 'tokenizer'}: cannot load the tokenizer ({first_line(err)})"
        ) from None
    return encoder.eval(), tokenizer


def _load_component(cls: Any, folder: Path, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{folder}: cannot load {cls.__name__} ({first_line(err)})") from None


def check_components(audioldm: AudioLdm) -> None:
    """Check the components fit AudioLDM's contract (published AudioLDM-S values in
    ``shared/reference/audioldm``): the UNet takes one 512-d condition through ``simple_projection``, its
    latents match the VAE's, the VAE makes 1-channel mels, the vocoder's mel bins fit the VAE, the text tower
    is 512-d. Raises :class:`CheckpointError` naming the component, the value and what AudioLDM has."""
    unet, vae, vocoder, src = (
        audioldm.unet.config,
        audioldm.vae.config,
        audioldm.vocoder.config,
        audioldm.source,
    )
    problems = []
    if unet.class_embed_type != "simple_projection":
        problems.append(
            f"unet class_embed_type is {unet.class_embed_type!r}, AudioLDM has 'simple_projection'"
        )
    if unet.projection_class_embeddings_input_dim != CONDITION_DIM:
        problems.append(
            f"unet projection_class_embeddings_input_dim is {unet.projection_class_embeddings_input_dim}, "
            f"AudioLDM has {CONDITION_DIM}"
        )
    if unet.in_channels != vae.latent_channels or unet.out_channels != vae.latent_channels:
        problems.append(
            f"unet in/out channels {unet.in_channels}/{unet.out_channels} differ from the vae's "
            f"latent_channels {vae.latent_channels}"
        )
    if vae.in_channels != 1 or vae.out_channels != 1:
        problems.append(
            f"vae in/out channels are {vae.in_channels}/{vae.out_channels}, AudioLDM has 1/1 (mel)"
        )
    if vocoder.model_in_dim % audioldm.vae_scale_factor != 0:
        problems.append(
            f"vocoder model_in_dim {vocoder.model_in_dim} is not divisible by the vae scale factor "
            f"{audioldm.vae_scale_factor}"
        )
    text = audioldm.text_encoder
    if text is not None and text.config.projection_dim != CONDITION_DIM:
        problems.append(
            f"text_encoder projection_dim is {text.config.projection_dim}, AudioLDM has {CONDITION_DIM}"
        )
    if problems:
        raise CheckpointError(
            f"{src} is not an AudioLDM (1) folder: {'; '.join(problems)} "
            "(AudioLDM 2, MusicLDM and Stable Diffusion folders are not supported)"
        )


# ------------------------------------------------------------------------------------------------------------
# Conditions
# ------------------------------------------------------------------------------------------------------------


def normalize_condition(condition: np.ndarray, *, name: str = "condition") -> np.ndarray:
    """Validate a ``[512]`` (or ``[1, 512]``) vector and return it float32 L2-normalised."""
    x = np.asarray(condition, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.shape != (CONDITION_DIM,):
        raise GenerationError(
            f"{name} has shape {list(x.shape)}; AudioLDM takes one {CONDITION_DIM}-d CLAP vector: use a "
            "CLAP or aligned embedder"
        )
    if not np.isfinite(x).all():
        raise GenerationError(f"{name} contains NaN or infinite values; re-embed the input")
    if np.linalg.norm(x) < 1e-8:
        raise GenerationError(f"{name} is the zero vector and has no direction to normalise")
    return l2_normalize(x[None])[0]


def blend_conditions(imitation: np.ndarray, text: np.ndarray, text_weight: float) -> np.ndarray:
    """``normalize(w * normalize(text) + (1 - w) * normalize(imitation))``, ``w`` in ``[0, 1]``.

    Both are CLAP vectors; ``w = 0`` is the imitation alone, ``w = 1`` the text alone. CLAP's text and audio
    embeddings sit in different regions of the joint space (the modality gap), so equal weights do not mean an
    equal pull; 0.3-0.5 keeps the imitation's character with the text's topic.
    """
    check_text_weight(text_weight)
    a = normalize_condition(imitation, name="imitation condition")
    t = normalize_condition(text, name="text condition")
    mixed = text_weight * t + (1.0 - text_weight) * a
    if np.linalg.norm(mixed) < 1e-6:
        raise GenerationError("the text and imitation conditions cancel out; change --text-weight")
    return l2_normalize(mixed[None])[0]


def check_text_weight(text_weight: float) -> None:
    """Raise :class:`GenerationError` unless ``0 <= text_weight <= 1``."""
    if not (math.isfinite(text_weight) and 0.0 <= text_weight <= 1.0):
        raise GenerationError(
            f"text weight {text_weight} must be in [0, 1] (0 = imitation only, 1 = text only)"
        )


def valid_duration(duration_s: float, audioldm: AudioLdm) -> tuple[float, int]:
    """``(duration_s, num_latent_frames)`` AudioLDM can make for ``duration_s``: rounded UP to a whole latent
    frame (40 ms for AudioLDM-S) and logged when changed."""
    if not (math.isfinite(duration_s) and 0 < duration_s <= MAX_DURATION_S):
        raise GenerationError(f"duration {duration_s!r} s cannot be generated: use (0, {MAX_DURATION_S:g}] s")
    num_samples = int(round(duration_s * audioldm.sample_rate))
    samples_per_latent = audioldm.hop_length * audioldm.vae_scale_factor
    num_latent_frames = max(1, -(-num_samples // samples_per_latent))
    made_s = num_latent_frames * samples_per_latent / audioldm.sample_rate
    if abs(made_s - duration_s) > 0.5 / audioldm.sample_rate:
        logger.warning(
            "duration %.4g s rounded up to %.4g s (AudioLDM makes multiples of %.4g s)",
            duration_s,
            made_s,
            audioldm.duration_step_s,
        )
    return made_s, num_latent_frames


# ------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------


def generate(
    audioldm: AudioLdm,
    condition: np.ndarray,
    config: GenerationConfig = GenerationConfig(),
    *,
    unconditional: np.ndarray | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``config.num_candidates`` waveforms ``[N, T]`` float32 at ``audioldm.sample_rate`` (16 kHz) for one
    ``[512]`` condition (normalised here), ``T = valid_duration(config.duration_s)`` samples.

    The loop of ``AudioLDMPipeline.__call__`` (steps 4-8) with the condition as ``class_labels``; the null
    condition defaults to :meth:`AudioLdm.unconditional_condition`. ``on_step(i, num_steps)`` reports
    progress.
    """
    cond = normalize_condition(condition)
    guided = config.guidance_scale > 1.0
    duration_s, num_latent_frames = valid_duration(config.duration_s, audioldm)
    embeds = _condition_batch(audioldm, cond, unconditional, config.num_candidates, guided)  # [(1|2) N, 512]
    generator = torch.Generator("cpu").manual_seed(config.seed)
    scheduler = audioldm.make_scheduler(config.scheduler)
    scheduler.set_timesteps(config.num_steps, device=audioldm.unet.device)
    latents = _initial_latents(audioldm, scheduler, config.num_candidates, num_latent_frames, generator)
    step_kwargs = _step_kwargs(scheduler, generator, config.eta)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = audioldm.unet(model_input, t, encoder_hidden_states=None, class_labels=embeds).sample
            if guided:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + config.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            if on_step is not None:
                on_step(i + 1, len(scheduler.timesteps))
        waveforms = decode_latents(audioldm, latents)
    num_samples = int(round(duration_s * audioldm.sample_rate))
    waveforms = waveforms[:, :num_samples].numpy().astype(np.float32)
    if not np.isfinite(waveforms).all():
        raise GenerationError(
            f"{audioldm.source} produced NaN/inf samples; run in float32 and check the weights"
        )
    return waveforms


def decode_latents(audioldm: AudioLdm, latents: torch.Tensor) -> torch.Tensor:
    """Latents ``[N, C, frames, bins]`` -> waveforms ``[N, T]`` float32: VAE to mel, vocoder to audio."""
    latents = 1 / audioldm.vae.config.scaling_factor * latents  # the pipeline's exact arithmetic
    mel = audioldm.vae.decode(latents).sample  # [N, 1, frames * vae_scale_factor, mel_bins]
    return audioldm.vocoder(mel.squeeze(1)).cpu().float()  # [N, T]


def _condition_batch(
    audioldm: AudioLdm, cond: np.ndarray, unconditional: np.ndarray | None, num: int, guided: bool
) -> torch.Tensor:
    """``class_labels`` for the UNet: ``[null] * N + [cond] * N`` with guidance (the pipeline's order), else
    ``[cond] * N``."""
    rows = [torch.from_numpy(cond)[None].repeat(num, 1)]  # [N, 512]
    if guided:
        null = audioldm.unconditional_condition() if unconditional is None else unconditional
        null = np.asarray(null, dtype=np.float32)
        if null.shape != (CONDITION_DIM,) or not np.isfinite(null).all():
            raise GenerationError(f"unconditional condition must be a finite [{CONDITION_DIM}] vector")
        rows.insert(0, torch.from_numpy(null)[None].repeat(num, 1))
    return torch.cat(rows).to(device=audioldm.unet.device, dtype=audioldm.unet.dtype)


def _initial_latents(
    audioldm: AudioLdm, scheduler: Any, num: int, num_latent_frames: int, generator: torch.Generator
) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    bins = int(audioldm.vocoder.config.model_in_dim) // audioldm.vae_scale_factor
    shape = (num, audioldm.unet.config.in_channels, num_latent_frames, bins)
    # Drawn on the CPU generator and moved, as the pipeline does: the same seed gives the same noise anywhere.
    latents = randn_tensor(shape, generator=generator, device=audioldm.unet.device, dtype=audioldm.unet.dtype)
    return latents * scheduler.init_noise_sigma


def _step_kwargs(scheduler: Any, generator: torch.Generator, eta: float) -> dict[str, Any]:
    """``eta`` and ``generator`` for schedulers whose ``step`` takes them (as the pipeline does)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


# ------------------------------------------------------------------------------------------------------------
# Re-ranking and the imitation path
# ------------------------------------------------------------------------------------------------------------


def rank_candidates(
    waveforms: np.ndarray, sample_rate: int, condition: np.ndarray, embedder: AudioEmbedder
) -> tuple[np.ndarray, np.ndarray]:
    """``(order, scores)``: candidate indices best first, and each candidate's cosine ``[N]`` between its
    audio embedding by ``embedder`` (a CLAP encoder of the condition's space) and ``condition``. Silent
    candidates score ``-inf`` (CLAP does not embed silence) and rank last; ties keep draw order."""
    cond = normalize_condition(condition)
    if embedder.embedding_dim != CONDITION_DIM:
        raise GenerationError(
            f"re-ranking embedder has dimension {embedder.embedding_dim}; use a {CONDITION_DIM}-d CLAP"
        )
    scores = np.full(len(waveforms), -np.inf, dtype=np.float64)
    audible = [i for i, w in enumerate(waveforms) if not is_silent(w)]
    if len(audible) < len(waveforms):
        logger.warning(
            "%d of %d candidates are silent and rank last", len(waveforms) - len(audible), len(waveforms)
        )
    if audible:
        clips = [
            resample(np.asarray(waveforms[i], np.float32), sample_rate, embedder.sample_rate) for i in audible
        ]
        embeddings = l2_normalize(np.asarray(embedder.embed(clips), dtype=np.float32))  # [n, 512]
        scores[audible] = embeddings.astype(np.float64) @ cond.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return order, scores.astype(np.float32)


def check_same_space(condition_embedder: AudioEmbedder, rerank_embedder: AudioEmbedder) -> None:
    """Refuse a re-ranking CLAP whose space differs from the condition's (cosines would mean nothing)."""
    a = condition_embedder.fingerprint().get("space")
    b = rerank_embedder.fingerprint().get("space")
    if a != b:
        raise GenerationError(
            f"the re-ranking CLAP is in space {b!r} but the condition model is in {a!r}: "
            "re-rank with the CLAP the model was aligned to"
        )


def generate_from_imitation(
    waveform: np.ndarray,
    sample_rate: int,
    model: AudioEmbedder,
    audioldm: AudioLdm,
    config: GenerationConfig = GenerationConfig(),
    *,
    text: str | None = None,
    text_weight: float = 0.5,
    rerank_embedder: AudioEmbedder | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Generate from a vocal imitation ``waveform`` (``[T]`` or ``[T, C]`` at ``sample_rate``).

    1. embed the imitation with ``model`` (aligned or CLAP embedder, ``[512]``; silent audio raises
       :class:`~qvimclap.errors.SilentAudioError`);
    2. blend a ``text`` condition when given (:func:`blend_conditions`);
    3. sample ``config.num_candidates`` candidates (:func:`generate`);
    4. re-rank them with ``rerank_embedder`` (when given) by cosine to the condition used, best first.
    """
    condition = embed_imitation(waveform, sample_rate, model)
    if text is not None:
        condition = blend_conditions(condition, audioldm.embed_text([text])[0], text_weight)
    if rerank_embedder is not None:
        check_same_space(model, rerank_embedder)
    waveforms = generate(audioldm, condition, config, on_step=on_step)
    order, scores = np.arange(len(waveforms)), None
    if rerank_embedder is not None:
        order, all_scores = rank_candidates(waveforms, audioldm.sample_rate, condition, rerank_embedder)
        scores = all_scores[order]
    return GenerationResult(
        waveforms=waveforms[order],
        sample_rate=audioldm.sample_rate,
        duration_s=waveforms.shape[1] / audioldm.sample_rate,
        condition=condition,
        candidate_indices=order,
        scores=scores,
    )


def check_clap_space(model: AudioEmbedder) -> None:
    """Refuse a condition model whose space is not a CLAP's: AudioLDM is conditioned on CLAP audio embeddings,
    so a model aligned into another target (``aisfx``, ...) can search but not generate."""
    space = str(model.fingerprint().get("space", ""))
    if not space.startswith("clap:"):
        raise GenerationError(
            f"the condition model embeds into {space or 'an unknown space'!r}, not a CLAP space, and "
            "AudioLDM is conditioned on CLAP audio embeddings; align a model with --target clap:<AudioLDM's "
            "CLAP> to generate"
        )


def embed_imitation(
    waveform: np.ndarray, sample_rate: int, model: AudioEmbedder, *, source: str = "imitation"
) -> np.ndarray:
    """The normalised ``[512]`` condition of one imitation; silent or non-finite audio raises AudioError
    naming ``source`` (the imitation's file, when it came from one), a model outside a CLAP space
    GenerationError."""
    check_clap_space(model)
    x = prepare_waveform(waveform, sample_rate, model.sample_rate, source=source)
    if model.embedding_dim != CONDITION_DIM:
        raise GenerationError(
            f"the condition model makes {model.embedding_dim}-d embeddings; AudioLDM needs {CONDITION_DIM}-d "
            "CLAP-space vectors: use an aligned model folder (qvimclap align) or a clap:... embedder"
        )
    try:
        embedding = np.asarray(model.embed([x]))[0]
    except AudioError as err:  # the model only knows "waveform 0"
        raise about_file(err, source) from None
    return normalize_condition(embedding, name="imitation embedding")


def save_comparison_plot(
    path: str | Path, imitation: np.ndarray, imitation_rate: int, result: np.ndarray, result_rate: int
) -> Path:
    """Write a PNG of the imitation's (left) and the generated sound's (right) spectrograms, atomically."""
    from qvimclap.plots import new_figure, save_figure

    fig = new_figure(figsize=(10, 3.5))
    panels = ((imitation, imitation_rate, "imitation"), (result, result_rate, "generated"))
    for ax, (x, rate, title) in zip(fig.subplots(1, 2), panels, strict=True):
        nfft = 512 if rate <= 24000 else 1024
        ax.specgram(np.asarray(x, np.float64) + 1e-9, NFFT=nfft, Fs=rate, noverlap=nfft // 2, cmap="magma")
        ax.set(title=title, xlabel="time (s)", ylabel="frequency (Hz)")
    return save_figure(fig, path)
