"""Audio I/O: read anything libsndfile reads, mix to mono, resample with soxr, pad and crop.

Every function returns float32 mono ``[T]`` arrays. Bad input raises :class:`~qvimclap.errors.AudioError`
whose message names the file and the problem; nothing here ever returns NaN or Inf samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from qvimclap.errors import AudioError, SilentAudioError, first_line
from qvimclap.files import atomic_path

#: A clip whose peak is below this level (dB relative to full scale, i.e. ``|x| < 1e-3``) counts as silent.
SILENCE_PEAK_DBFS = -60.0
#: Float files whose samples exceed this magnitude (+60 dB over full scale) are corrupt or wrongly scaled:
#: their spectra overflow float32 and every encoder would return NaN.
MAX_ABS_SAMPLE = 1000.0
#: Sample rates a real audio file can have; a header outside them is damaged (resampling from 2 GHz would
#: shrink a clip to silence, and the user would be told "silent").
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000
#: Files longer than this are cropped to their first ``MAX_DURATION_S`` seconds when read.
MAX_DURATION_S = 60.0

_SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile's sf_command code (sndfile.h)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus")


@dataclass(frozen=True)
class AudioInfo:
    """What a file header says, before decoding."""

    path: Path
    sample_rate: int
    num_channels: int
    num_frames: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of ``path``; raises :class:`AudioError` for missing, unreadable or empty files."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:  # libsndfile reports an unreadable file as a bare "System error."
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as err:
        raise AudioError(f"{path}: cannot be read ({err.strerror or err})") from None
    if empty:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: not a readable audio file ({first_line(err)})") from None
    if info.frames <= 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path}: its header gives a sample rate of {info.samplerate} Hz, outside the "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz of real audio files; the header is damaged"
        )
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames))


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    max_duration_s: float = MAX_DURATION_S,
    allow_silent: bool = False,
) -> np.ndarray:
    """Read ``path`` as float32 mono ``[T]``, resampled to ``sample_rate`` (native rate if None).

    Files longer than ``max_duration_s`` are cropped to their beginning (deterministic). Raises
    :class:`AudioError` for unusable files and :class:`SilentAudioError` for all-silent ones unless
    ``allow_silent``.
    """
    info = audio_info(path)
    max_frames = min(info.num_frames, int(math.ceil(max_duration_s * info.sample_rate)))
    try:
        data, native_rate = sf.read(str(info.path), frames=max_frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{info.path}: audio data cannot be decoded ({first_line(err)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{info.path}: contains no audio samples")
    return prepare_waveform(data, native_rate, sample_rate, source=str(info.path), allow_silent=allow_silent)


def check_mono(waveform: np.ndarray, source: str) -> np.ndarray:
    """An encoder's input check: a non-empty, finite mono ``[T]`` array -> float32 ``[T]``; anything else
    raises :class:`AudioError` naming ``source`` (a file, or ``waveform <i>`` of a batch)."""
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise AudioError(
            f"{source}: expected mono audio of shape [T], got shape {list(x.shape)}; mix to mono first"
        )
    if x.size == 0:
        raise AudioError(f"{source}: contains no audio samples (empty clip)")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(f"{source}: contains {bad} NaN or infinite samples")
    return x.astype(np.float32, copy=False)


def prepare_waveform(
    waveform: np.ndarray,
    sample_rate: int,
    target_rate: int | None = None,
    *,
    source: str = "<array>",
    allow_silent: bool = False,
) -> np.ndarray:
    """Validate an in-memory waveform (``[T]`` or ``[T, C]``), mix to mono and resample; float32 ``[T]``."""
    x = np.asarray(waveform)
    if x.ndim == 2:
        x = x.mean(axis=1)  # [T, C] -> [T]
    elif x.ndim != 1:
        raise AudioError(f"{source}: expected audio of shape [T] or [T, C], got {list(x.shape)}")
    if x.size == 0:
        raise AudioError(f"{source}: contains no audio samples")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(f"{source}: contains {bad} NaN or infinite samples")
    peak = float(np.max(np.abs(x)))
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"{source}: samples reach {peak:.3g}, far beyond full scale (1.0; the limit is "
            f"{MAX_ABS_SAMPLE:g}): the file is corrupt or was written with the wrong scale"
        )
    if target_rate is not None and target_rate != sample_rate:
        x = resample(x, sample_rate, target_rate)
    if not allow_silent and is_silent(x):
        raise SilentAudioError(f"{source}: audio is silent (peak below {SILENCE_PEAK_DBFS:g} dBFS)")
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(x: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 ``[T]`` with soxr (high quality); deterministic."""
    if sample_rate == target_rate:
        return x.astype(np.float32, copy=False)
    y = soxr.resample(x.astype(np.float32, copy=False), sample_rate, target_rate, quality="HQ")
    return np.asarray(y, dtype=np.float32)


def peak_dbfs(x: np.ndarray) -> float:
    """Peak level in dB relative to full scale; ``-inf`` for all zeros."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def is_silent(x: np.ndarray, threshold_dbfs: float = SILENCE_PEAK_DBFS) -> bool:
    """True when the peak of ``x`` is below ``threshold_dbfs``."""
    return peak_dbfs(x) < threshold_dbfs


def pad_or_crop(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end, or keep the first ``num_samples``: the policy of the published QVIM models."""
    if x.shape[-1] >= num_samples:
        return x[..., :num_samples]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, num_samples - x.shape[-1])]
    return np.pad(x, pad)


def repeat_pad(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Tile ``x`` to ``num_samples`` (cropping the last repeat); longer inputs keep their start."""
    if x.shape[-1] == 0:
        raise AudioError("cannot repeat-pad an empty clip")
    if x.shape[-1] >= num_samples:
        return x[..., :num_samples]
    reps = -(-num_samples // x.shape[-1])
    return np.tile(x, reps)[..., :num_samples]


def center_crop(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Keep the middle ``num_samples`` of a longer clip (deterministic); shorter clips are returned as is."""
    extra = x.shape[-1] - num_samples
    if extra <= 0:
        return x
    start = extra // 2
    return x[..., start : start + num_samples]


def write_audio(path: str | Path, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write float32 mono ``[T]`` (or ``[T, C]``) as 32-bit float WAV (or the format of the suffix)."""
    path = Path(path)
    x = np.asarray(waveform, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: refusing to write non-finite samples")
    subtype = "FLOAT" if path.suffix.lower() == ".wav" else None
    channels = 1 if x.ndim == 1 else x.shape[1]
    with atomic_path(path) as tmp:
        with sf.SoundFile(tmp, "w", sample_rate, channels, subtype=subtype, format=_format_of(path)) as fh:
            # libsndfile stamps float WAVs with a PEAK chunk holding the write time: the same audio would
            # give other bytes every run. Turned off before the first frame (SFC_SET_ADD_PEAK_CHUNK, false).
            sf._snd.sf_command(fh._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
            fh.write(x)
    return path


def find_audio_files(folder: str | Path) -> list[Path]:
    """All audio files under ``folder`` (recursive), sorted for determinism."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _format_of(path: Path) -> str:
    fmt = path.suffix.lstrip(".").upper()
    return {"AIF": "AIFF", "OPUS": "OGG"}.get(fmt, fmt)
