"""The built-in imitation corpus: procedurally synthesised reference sounds and vocal-like imitations of them.

No real dataset can be downloaded on every machine, so qvimclap makes its own (``qvimclap synth``). Each
reference is one of :data:`KINDS` (sirens, engines, impacts, chirps, ...), drawn with its own random pitch,
rhythm, duration and envelope, so that telling instances of one kind apart is harder than recognising the
kind.

An imitation keeps what a person keeps — the loudness envelope, the pitch or brightness contour, voiced versus
noisy, the rhythm — and nothing else: it is rendered from the reference's :class:`Controls` with a voice-like
source (glottal pulses or breath noise through formant filters), its pitch squeezed into a vocal range
around a random speaker pitch, its timing warped, with lead-in silence, a small room, room noise, an
assorted sample rate (16 / 22.05 / 44.1 / 48 kHz) and sometimes two channels. References are mono, 32 or
44.1 kHz, 1-6 s.

Everything is vectorised numpy and deterministic for a seed: reference ``i`` and its imitations draw from
``numpy.random.default_rng([seed, i])``, so the same seed writes the same samples.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from qvimclap.errors import DatasetError
from qvimclap.files import locked_temp_dir, write_failure

logger = logging.getLogger(__name__)

#: Frames per second of the control curves an imitation is rendered from.
CONTROL_RATE = 200
REFERENCE_RATES = (32000, 44100)
IMITATION_RATES = (16000, 22050, 44100, 48000)
STEREO_FRACTION = 0.2
CORPUS_JSON = "corpus.json"

# ----------------------------------------------------------------------------------------------------------
# What an imitation keeps
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Controls:
    """What a person keeps when imitating a sound: four float64 ``[F]`` curves at :data:`CONTROL_RATE`.

    ``amp`` loudness envelope (linear, peak 1); ``pitch_hz`` pitch contour (0 where unpitched); ``noisiness``
    0 tonal .. 1 noise; ``brightness`` 0 dark .. 1 bright.
    """

    amp: np.ndarray
    pitch_hz: np.ndarray
    noisiness: np.ndarray
    brightness: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.amp) / CONTROL_RATE


@dataclass(frozen=True)
class _Sound:
    """A reference as rendered by a kind: float64 ``[N]`` audio plus per-sample control curves (or
    scalars)."""

    audio: np.ndarray
    amp: np.ndarray
    pitch_hz: np.ndarray | float
    noisiness: np.ndarray | float
    brightness: np.ndarray | float


def controls_of(sound: _Sound, sample_rate: int) -> Controls:
    """Reduce per-sample curves to :data:`CONTROL_RATE` frames (amp: max per frame, so clicks survive)."""
    n = len(sound.audio)
    starts = np.arange(0, n, sample_rate / CONTROL_RATE).astype(np.int64)
    starts = starts[starts < n]

    def full(x: np.ndarray | float) -> np.ndarray:
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))

    amp = np.maximum.reduceat(full(sound.amp), starts)
    counts = np.diff(np.append(starts, n))
    mean = {
        k: np.add.reduceat(full(v), starts) / counts
        for k, v in (("p", sound.pitch_hz), ("n", sound.noisiness), ("b", sound.brightness))
    }
    voiced = np.add.reduceat((full(sound.pitch_hz) > 0).astype(np.float64), starts) / counts
    pitch = np.where(voiced > 0.5, mean["p"] / np.maximum(voiced, 1e-9), 0.0)
    return Controls(amp / max(amp.max(), 1e-9), pitch, np.clip(mean["n"], 0, 1), np.clip(mean["b"], 0, 1))


# ----------------------------------------------------------------------------------------------------------
# Small DSP helpers (float64, vectorised)
# ----------------------------------------------------------------------------------------------------------


def _time(duration_s: float, sample_rate: int) -> np.ndarray:
    return np.arange(int(round(duration_s * sample_rate))) / sample_rate


def _osc(
    freq_hz: np.ndarray, sample_rate: int, partials: list[tuple[float, float]], phase0: float = 0.0
) -> np.ndarray:
    """Sum of ``weight * sin(ratio * phase)`` over ``partials``, each muted where it would alias."""
    phase = 2 * np.pi * np.cumsum(freq_hz) / sample_rate + phase0
    out = np.zeros_like(phase)
    for ratio, weight in partials:
        out += weight * np.sin(ratio * phase) * (ratio * freq_hz < 0.45 * sample_rate)
    return out


def _fade(t: np.ndarray, fade_in_s: float, fade_out_s: float) -> np.ndarray:
    end = t[-1] if len(t) else 0.0
    return np.clip(t / max(fade_in_s, 1e-4), 0, 1) * np.clip((end - t) / max(fade_out_s, 1e-4), 0, 1)


def _smooth_curve(
    rng: np.random.Generator, t: np.ndarray, num_knots: int, low: float, high: float
) -> np.ndarray:
    """A random smooth curve over ``t`` through ``num_knots`` knots drawn in [low, high] (cosine
    interpolation)."""
    knots_t = np.linspace(t[0], t[-1], num_knots)
    knots_v = rng.uniform(low, high, num_knots)
    seg = np.clip(np.searchsorted(knots_t, t, side="right") - 1, 0, num_knots - 2)
    u = (t - knots_t[seg]) / (knots_t[seg + 1] - knots_t[seg])
    w = 0.5 - 0.5 * np.cos(np.pi * np.clip(u, 0, 1))
    return knots_v[seg] * (1 - w) + knots_v[seg + 1] * w


def _events(t: np.ndarray, onsets: np.ndarray, attack_s: float, decay_s: np.ndarray | float) -> np.ndarray:
    """``[E, N]`` attack/exponential-decay envelopes, one row per onset (zero before its onset)."""
    dt = t[None, :] - onsets[:, None]
    decay = np.broadcast_to(np.asarray(decay_s, dtype=np.float64), onsets.shape)[:, None]
    rise = np.clip(dt / attack_s, 0, 1)
    return np.where(dt >= 0, rise * np.exp(-np.maximum(dt, 0) / decay), 0.0)


def _rhythm(
    rng: np.random.Generator, num: int, start_s: float, interval_s: float, jitter: float
) -> np.ndarray:
    """``num`` onsets from ``start_s``, spaced ``interval_s`` with relative jitter, grouped at random."""
    gaps = interval_s * (1 + jitter * rng.uniform(-1, 1, num))
    gaps *= np.where(rng.uniform(size=num) < 0.2, rng.uniform(1.5, 3.0, num), 1.0)  # the odd longer pause
    return start_s + np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def _stft_window(n_fft: int) -> np.ndarray:
    """Square-root periodic Hann: used for analysis and synthesis, its square sums to 1 at 50 % overlap."""
    return np.sqrt(np.hanning(n_fft + 1)[:-1])


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``[T]`` -> ``[frames, n_fft // 2 + 1]`` complex; frame ``f`` is centred on sample ``f * hop``."""
    padded = np.pad(x, (n_fft // 2, n_fft // 2 + hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.fft.rfft(frames * _stft_window(n_fft), axis=-1)


def _istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Overlap-add inverse of :func:`_stft` for ``hop = n_fft / 2`` (every other frame tiles without
    overlap)."""
    assert 2 * hop == n_fft, (n_fft, hop)
    frames = np.fft.irfft(spec, n=n_fft, axis=-1) * _stft_window(n_fft)
    out = np.zeros((len(frames) - 1) * hop + n_fft)
    for k in range(2):
        tiles = frames[k::2].reshape(-1)  # frames k, k + 2, ... sit end to end
        out[k * hop : k * hop + tiles.size] += tiles
    return out[n_fft // 2 : n_fft // 2 + length]


def _stft_size(sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop) of about 21-32 ms frames, 50 % overlap."""
    n_fft = 512 if sample_rate <= 24000 else 1024
    return n_fft, n_fft // 2


def _shape_spectrum(
    x: np.ndarray, sample_rate: int, gains: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Time-varying filter: ``gains(freqs [B], frame_positions [F]) -> [F, B]`` magnitude per STFT frame."""
    n_fft, hop = _stft_size(sample_rate)
    spec = _stft(x, n_fft, hop)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    positions = np.minimum(np.arange(len(spec)) * hop, len(x) - 1)
    return _istft(spec * gains(freqs, positions), n_fft, hop, len(x))


def _band(freqs: np.ndarray, center_hz: np.ndarray, width_octaves: float) -> np.ndarray:
    """``[F, B]`` Gaussian band in log frequency around per-frame ``center_hz [F]``."""
    octaves = np.log2(np.maximum(freqs[None, :], 1.0) / center_hz[:, None])
    return np.exp(-0.5 * (octaves / width_octaves) ** 2)


def _lowpass(freqs: np.ndarray, cutoff_hz: np.ndarray, order: int = 2) -> np.ndarray:
    return 1.0 / (1.0 + (freqs[None, :] / cutoff_hz[:, None]) ** (2 * order))


def _fftconvolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution cropped to ``len(x)``."""
    n = len(x) + len(kernel) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(kernel, size), size)[: len(x)]


def _pitch_brightness(pitch_hz: np.ndarray | float) -> np.ndarray:
    """Brightness that follows pitch: 0 at 50 Hz .. 1 at 6.4 kHz (log scale)."""
    return np.clip(np.log2(np.maximum(pitch_hz, 50.0) / 50.0) / 7.0, 0, 1)


# ----------------------------------------------------------------------------------------------------------
# Reference kinds: each draws its own parameters and renders one sound at ``sample_rate``
# ----------------------------------------------------------------------------------------------------------


def _siren(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.5, 6.0), sr)
    period, depth, center = rng.uniform(0.3, 3.0), rng.uniform(0.25, 1.2), rng.uniform(450, 1300)
    cycle = t / period + rng.uniform()
    lfo = {
        "wail": np.sin(2 * np.pi * cycle),
        "yelp": 2 * np.abs(2 * (cycle % 1) - 1) - 1,
        "rise": 2 * (cycle % 1) - 1,
        "hi-lo": np.sign(np.sin(2 * np.pi * cycle)),
    }[rng.choice(["wail", "yelp", "rise", "hi-lo"])]
    pitch = center * 2 ** (depth * lfo / 2)
    amp = _fade(t, rng.uniform(0.02, 0.5), rng.uniform(0.05, 0.8))
    audio = _osc(pitch, sr, [(1, 1.0), (2, 0.5), (3, 0.35), (4, 0.2), (5, 0.12)]) * amp
    return _Sound(audio, amp, pitch, 0.05, _pitch_brightness(pitch))


def _engine(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(2.0, 6.0), sr)
    rpm = _smooth_curve(rng, t, rng.integers(2, 6), 18, 90)  # firing rate, Hz
    level = (rpm - 18) / 72
    tone = _osc(rpm, sr, [(0.5, 0.6), (1, 1.0), (2, 0.7), (3, 0.45), (4, 0.3), (6, 0.15), (8, 0.08)])
    noise = rng.standard_normal(len(t)) * (1 + 0.8 * np.sin(2 * np.pi * np.cumsum(rpm) / sr))
    noise = _shape_spectrum(noise, sr, lambda f, pos: _lowpass(f, 300 + 1500 * level[pos]))
    amp = (0.35 + 0.65 * level) * _fade(t, rng.uniform(0.05, 0.6), rng.uniform(0.1, 0.8))
    audio = (tone / 2.5 + 0.5 * noise / noise.std()) * amp
    return _Sound(audio, amp, rpm * 2, 0.4, 0.2 + 0.6 * level)


def _impact(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 4.0), sr)
    num = rng.integers(1, 5)
    onsets = np.sort(rng.uniform(0.02, 0.6 * t[-1], num))
    decay = rng.uniform(0.03, 0.5)
    hits = _events(t, onsets, 0.001, decay) * rng.uniform(0.3, 1.0, num)[:, None]
    env = hits.sum(0)
    cutoff = rng.uniform(800, 9000)
    burst = _shape_spectrum(
        rng.standard_normal(len(t)), sr, lambda f, pos: _lowpass(f, np.full(len(pos), cutoff))
    )
    burst_env = _events(t, onsets, 0.0005, decay / 4).sum(0)
    modes = _osc(np.full(len(t), rng.uniform(60, 500)), sr, [(1.0, 1.0), (rng.uniform(1.4, 2.9), 0.5)])
    audio = 0.6 * burst / burst.std() * burst_env + modes * env
    return _Sound(audio, env, 0.0, 0.85, np.clip(0.25 + 0.6 * burst_env / max(env.max(), 1e-9), 0, 1))


def _chirp(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 5.0), sr)
    num = rng.integers(2, 11)
    length = rng.uniform(0.03, 0.2)
    onsets = _rhythm(rng, num, rng.uniform(0.02, 0.3), rng.uniform(length + 0.03, 0.5), 0.25)
    onsets = onsets[onsets + length < t[-1]]
    f_start = rng.uniform(2000, 5000)
    f_end = f_start * 2 ** rng.uniform(-1.3, 1.3)
    curve = rng.uniform(0.4, 2.5)
    u = (t[None, :] - onsets[:, None]) / length  # [E, N] position inside each chirp
    inside = (u >= 0) & (u < 1)
    uu = np.clip(u, 0, 1)
    pitch_e = f_start + (f_end - f_start) * uu**curve
    pitch = np.where(inside.any(0), (pitch_e * inside).sum(0), 0.0)
    amp = (np.sin(np.pi * uu) ** 2 * inside).sum(0)
    audio = _osc(np.where(pitch > 0, pitch, f_start), sr, [(1, 1.0), (2, 0.15)]) * amp
    return _Sound(audio, amp, pitch, 0.05, _pitch_brightness(np.where(pitch > 0, pitch, f_start)))


def _whoosh(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 4.0), sr)
    num = rng.integers(1, 4)
    peaks = np.sort(rng.uniform(0.15, 0.85, num)) * t[-1]
    width = rng.uniform(0.08, 0.5) * t[-1] / num
    swell = np.exp(-0.5 * ((t[None, :] - peaks[:, None]) / width) ** 2).sum(0)
    low, high = rng.uniform(200, 800), rng.uniform(1500, 7000)
    center = low * (high / low) ** np.clip(swell, 0, 1)
    bandwidth = rng.uniform(0.3, 1.0)
    noise = _shape_spectrum(rng.standard_normal(len(t)), sr, lambda f, pos: _band(f, center[pos], bandwidth))
    amp = swell / swell.max()
    return _Sound(noise / noise.std() * amp, amp, 0.0, 1.0, _pitch_brightness(center))


def _bell(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(2.0, 6.0), sr)
    f0 = rng.uniform(200, 1200)
    ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.51, 2.66, 3.01, 4.1]) * rng.uniform(0.98, 1.02, 9)
    num = rng.integers(1, 4)
    onsets = _rhythm(rng, num, rng.uniform(0.02, 0.2), rng.uniform(0.4, 1.5), 0.2)
    base_decay = rng.uniform(0.5, 2.5)
    audio = np.zeros(len(t))
    for k, ratio in enumerate(ratios):
        env = _events(t, onsets, 0.002, base_decay / ratio**0.7).sum(0)
        audio += rng.uniform(0.2, 1.0) / (1 + 0.3 * k) * np.sin(2 * np.pi * f0 * ratio * t) * env
    amp = _events(t, onsets, 0.002, base_decay).sum(0)
    bright = _events(t, onsets, 0.002, base_decay / 4).sum(0) / max(amp.max(), 1e-9)
    return _Sound(
        audio, amp, np.where(amp > 0.05 * amp.max(), f0, 0.0), 0.03, np.clip(0.3 + 0.6 * bright, 0, 1)
    )


def _drip(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 5.0), sr)
    num = rng.integers(3, 15)
    onsets = _rhythm(rng, num, rng.uniform(0.02, 0.3), rng.uniform(0.1, 0.6), rng.uniform(0.05, 0.6))
    onsets = onsets[onsets < t[-1] - 0.1]
    length, f_start, rise = rng.uniform(0.02, 0.08), rng.uniform(300, 1200), rng.uniform(1.5, 4.0)
    u = (t[None, :] - onsets[:, None]) / length
    inside = (u >= 0) & (u < 1.5)
    gains = rng.uniform(0.4, 1.0, len(onsets))[:, None]
    amp = (np.exp(-3 * np.clip(u, 0, None)) * np.clip(u * 20, 0, 1) * inside * gains).sum(0)
    pitch = np.where(inside.any(0), (f_start * rise ** np.clip(u, 0, 1.5) * inside).max(0), 0.0)
    audio = _osc(np.where(pitch > 0, pitch, f_start), sr, [(1, 1.0)]) * amp
    return _Sound(audio, amp, pitch, 0.1, _pitch_brightness(np.where(pitch > 0, pitch, f_start)))


def _rattle(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 4.0), sr)
    rate = rng.uniform(10, 35)
    num_bursts = rng.integers(1, 5)
    starts = np.sort(rng.uniform(0, 0.8 * t[-1], num_bursts))
    lengths = rng.uniform(0.15, 1.2, num_bursts)
    in_burst = ((t[None, :] >= starts[:, None]) & (t[None, :] < (starts + lengths)[:, None])).any(0)
    clock = np.cumsum(np.full(len(t), rate) * (1 + 0.3 * rng.uniform(-1, 1))) / sr
    ticks = (np.diff(np.floor(clock), prepend=0.0) > 0) & in_burst
    impulses = ticks * rng.uniform(0.3, 1.0, len(t))
    click_t = np.arange(int(0.012 * sr)) / sr
    click = rng.standard_normal(len(click_t)) * np.exp(-click_t / rng.uniform(0.002, 0.006))
    audio = _fftconvolve(impulses, click)
    resonance = rng.uniform(1000, 5000)
    audio = _shape_spectrum(audio, sr, lambda f, pos: 0.3 + _band(f, np.full(len(pos), resonance), 0.7))
    amp = _fftconvolve(impulses, np.exp(-click_t / 0.004))
    return _Sound(audio, amp, 0.0, 0.95, _pitch_brightness(resonance))


def _beep(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 5.0), sr)
    f = rng.uniform(700, 3000)
    on_s, off_s = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5)
    group, group_gap = rng.integers(1, 5), rng.uniform(0.0, 0.8)
    slot = np.floor((t - rng.uniform(0, 0.2)) / (on_s + off_s))
    phase = (t - rng.uniform(0, 0.2)) % (on_s + off_s)
    gate = ((phase < on_s) & (slot >= 0) & (slot % (group + (group_gap > 0.3)) < group)).astype(np.float64)
    ramp = np.hanning(int(0.006 * sr) + 2)[1:-1]
    gate = np.convolve(gate, ramp / ramp.sum(), mode="same")
    two_tone = rng.uniform() < 0.4
    pitch = f * np.where(two_tone & (slot % 2 == 1), 2 ** (rng.integers(3, 8) / 12), 1.0)
    audio = _osc(pitch, sr, [(1, 1.0), (3, 0.33), (5, 0.2), (7, 0.14)]) * gate
    return _Sound(audio, gate, np.where(gate > 0.1, pitch, 0.0), 0.05, _pitch_brightness(pitch))


def _wind(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(2.0, 6.0), sr)
    gust = _smooth_curve(rng, t, rng.integers(3, 8), 0.1, 1.0)
    cutoff = 150 + rng.uniform(800, 3000) * gust**1.5
    noise = _shape_spectrum(rng.standard_normal(len(t)), sr, lambda f, pos: _lowpass(f, cutoff[pos], 1))
    amp = gust * _fade(t, rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
    audio = noise / noise.std() * amp
    pitch: np.ndarray | float = 0.0
    if rng.uniform() < 0.35:  # a howl through a gap: a weak whistle following the gusts
        pitch = rng.uniform(300, 900) * (0.8 + 0.4 * gust)
        audio += 0.25 * _osc(pitch, sr, [(1, 1.0)]) * amp
    return _Sound(audio, amp, pitch, 0.9, _pitch_brightness(cutoff))


def _horn(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 5.0), sr)
    f = rng.uniform(250, 600)
    num = rng.integers(1, 5)
    lengths = rng.uniform(0.1, 1.0, num)
    gaps = rng.uniform(0.08, 0.5, num)
    starts = rng.uniform(0.02, 0.3) + np.concatenate([[0.0], np.cumsum(lengths + gaps)[:-1]])
    gate = (
        ((t[None, :] >= starts[:, None]) & (t[None, :] < (starts + lengths)[:, None]))
        .any(0)
        .astype(np.float64)
    )
    ramp = np.hanning(int(0.02 * sr) + 2)[1:-1]
    gate = np.convolve(gate, ramp / ramp.sum(), mode="same")
    partials = [(k, 1.0 / k) for k in range(1, 9)]
    second = 2 ** (rng.integers(3, 5) / 12)
    audio = (_osc(np.full(len(t), f), sr, partials) + _osc(np.full(len(t), f * second), sr, partials)) * gate
    return _Sound(audio, gate, np.where(gate > 0.1, f, 0.0), 0.08, 0.75)


def _zap(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 4.0), sr)
    num = rng.integers(1, 7)
    length = rng.uniform(0.08, 0.4)
    onsets = _rhythm(rng, num, rng.uniform(0.02, 0.3), rng.uniform(length + 0.02, 0.7), 0.3)
    onsets = onsets[onsets + length < t[-1]]
    f_high, f_low = rng.uniform(1500, 5000), rng.uniform(100, 500)
    u = (t[None, :] - onsets[:, None]) / length
    inside = (u >= 0) & (u < 1)
    pitch_e = f_high * (f_low / f_high) ** np.clip(u, 0, 1)
    pitch = np.where(inside.any(0), (pitch_e * inside).sum(0), 0.0)
    amp = ((1 - np.clip(u, 0, 1)) ** 0.5 * np.clip(u * 50, 0, 1) * inside).sum(0)
    audio = _osc(np.where(pitch > 0, pitch, f_low), sr, [(1, 1.0), (2, 0.3), (3, 0.25), (5, 0.1)]) * amp
    return _Sound(audio, amp, pitch, 0.05, _pitch_brightness(np.where(pitch > 0, pitch, f_low)))


def _buzz(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.5, 5.0), sr)
    f0 = rng.uniform(110, 350)
    vibrato = 1 + rng.uniform(0.005, 0.04) * np.sin(2 * np.pi * rng.uniform(4, 15) * t)
    passes = rng.integers(1, 3)
    centers = np.sort(rng.uniform(0.2, 0.8, passes)) * t[-1]
    width = rng.uniform(0.15, 0.6) * t[-1] / passes
    doppler = 1 + rng.uniform(0.02, 0.08) * np.tanh((centers[:, None] - t[None, :]) / width).mean(0)
    pitch = f0 * vibrato * doppler
    amp = (0.1 + np.exp(-0.5 * ((t[None, :] - centers[:, None]) / width) ** 2).sum(0)) * _fade(t, 0.05, 0.05)
    audio = _osc(pitch, sr, [(k, 1.0 / k) for k in range(1, 11)]) * amp
    return _Sound(audio, amp, pitch, 0.1, 0.6 + 0.3 * amp / amp.max())


def _knock(rng: np.random.Generator, sr: int) -> _Sound:
    t = _time(rng.uniform(1.0, 4.0), sr)
    groups = rng.integers(1, 4, rng.integers(1, 4))  # e.g. [3, 2]: knock-knock-knock, knock-knock
    within, between = rng.uniform(0.1, 0.3), rng.uniform(0.4, 1.0)
    onsets, at = [], rng.uniform(0.02, 0.3)
    for size in groups:
        onsets += [at + i * within * rng.uniform(0.9, 1.1) for i in range(size)]
        at = onsets[-1] + between
    onsets_arr = np.array([o for o in onsets if o < t[-1] - 0.1] or [0.05])
    f, decay = rng.uniform(70, 250), rng.uniform(0.03, 0.15)
    env = _events(t, onsets_arr, 0.001, decay).sum(0)
    thump = np.sin(2 * np.pi * f * t * (1 + 0.3 * np.exp(-t / 0.05))) * env
    click = _shape_spectrum(
        rng.standard_normal(len(t)), sr, lambda fr, pos: _band(fr, np.full(len(pos), 2500.0), 1)
    )
    audio = thump + 0.4 * click / click.std() * _events(t, onsets_arr, 0.0005, 0.006).sum(0)
    return _Sound(audio, env, np.where(env > 0.05, f, 0.0), 0.5, 0.3)


#: The reference kinds (labels) and their synthesisers.
KINDS: dict[str, Callable[[np.random.Generator, int], _Sound]] = {
    "siren": _siren,
    "engine": _engine,
    "impact": _impact,
    "chirp": _chirp,
    "whoosh": _whoosh,
    "bell": _bell,
    "drip": _drip,
    "rattle": _rattle,
    "beep": _beep,
    "wind": _wind,
    "horn": _horn,
    "zap": _zap,
    "buzz": _buzz,
    "knock": _knock,
}


def _background(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The background of a field recording: noise of a random colour (+-12 dB), 45-80 dB below the peak."""
    knots = np.linspace(0.0, np.log2(sample_rate / 2 / 20.0), 8)  # octaves above 20 Hz
    colour_db = rng.uniform(-12, 12, len(knots))

    def colour(freqs: np.ndarray, positions: np.ndarray) -> np.ndarray:
        octaves = np.log2(np.maximum(freqs, 20.0) / 20.0)
        return np.broadcast_to(
            10 ** (np.interp(octaves, knots, colour_db) / 20), (len(positions), len(freqs))
        )

    noise = _shape_spectrum(rng.standard_normal(num_samples), sample_rate, colour)
    return _unit(noise) * 10 ** (rng.uniform(-80, -45) / 20)


def make_reference(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int, Controls]:
    """One reference of ``kind``: float32 mono ``[N]`` audio, its sample rate (32 or 44.1 kHz), its
    controls."""
    sample_rate = int(rng.choice(REFERENCE_RATES))
    sound = KINDS[kind](rng, sample_rate)
    # Recordings have a background too; without it the digital silence of sparse kinds gives them away.
    audio = _normalize_peak(sound.audio, 0.0) + _background(len(sound.audio), sample_rate, rng)
    audio = _normalize_peak(audio, rng.uniform(-10, -1))
    return audio.astype(np.float32), sample_rate, controls_of(sound, sample_rate)


# ----------------------------------------------------------------------------------------------------------
# Imitations: the reference's controls, re-performed by a voice
# ----------------------------------------------------------------------------------------------------------

#: F1, F2, F3 in Hz of a few vowels (adult male, Peterson & Barney); a speaker scales them.
_VOWELS = (
    (730.0, 1090.0, 2440.0),  # a
    (530.0, 1840.0, 2480.0),  # e
    (270.0, 2290.0, 3010.0),  # i
    (570.0, 840.0, 2410.0),  # o
    (300.0, 870.0, 2240.0),  # u
    (500.0, 1500.0, 2500.0),  # schwa
)


def warp_controls(controls: Controls, rng: np.random.Generator) -> Controls:
    """Re-time ``controls``: a global tempo in [0.8, 1.25] times a slow random wobble (about +-15 %)."""
    num_in = len(controls.amp)
    tempo = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    max_out = int(num_in * 1.6 / tempo) + 2
    out_t = np.arange(max_out, dtype=np.float64)
    wobble = _smooth_curve(rng, out_t, max(2, max_out // (CONTROL_RATE // 2)), -1.0, 1.0)
    positions = np.concatenate([[0.0], np.cumsum(np.exp(0.15 * wobble) / tempo)])[:max_out]
    positions = positions[positions <= num_in - 1]
    frames = np.arange(num_in, dtype=np.float64)

    def at(curve: np.ndarray) -> np.ndarray:
        return np.interp(positions, frames, curve)

    voiced = controls.pitch_hz > 0
    pitch = np.zeros(len(positions))
    if voiced.any():
        log_pitch = np.interp(
            frames, frames[voiced], np.log(controls.pitch_hz[voiced])
        )  # bridge unvoiced gaps
        pitch = np.where(at(voiced.astype(np.float64)) > 0.5, np.exp(at(log_pitch)), 0.0)
    return Controls(at(controls.amp), pitch, at(controls.noisiness), at(controls.brightness))


def vocal_controls(controls: Controls, rng: np.random.Generator) -> Controls:
    """What a voice can do with ``controls``: pitch squeezed around a speaker's pitch, softer dynamics and
    attacks.

    Pitch keeps its contour shape (log pitch is scaled by 0.35-0.75 around its median and moved to a speaker
    pitch of 95-260 Hz, clipped to 70-700 Hz); unpitched stretches become breath noise, or sometimes a hum
    whose pitch follows brightness. The envelope is raised to a power in [0.6, 1] and smoothed over about
    25 ms.
    """
    kernel = np.hanning(7)[1:-1]
    amp = np.convolve(controls.amp, kernel / kernel.sum(), mode="same") ** rng.uniform(0.6, 1.0)
    amp /= max(amp.max(), 1e-9)
    speaker_hz, squeeze = rng.uniform(95, 260), rng.uniform(0.35, 0.75)
    voiced = controls.pitch_hz > 0
    log_pitch = np.log(np.where(voiced, controls.pitch_hz, 1.0))
    median = np.median(log_pitch[voiced]) if voiced.any() else 0.0
    pitch = np.where(voiced, speaker_hz * np.exp(squeeze * (log_pitch - median)), 0.0)
    noisiness = np.clip(controls.noisiness + rng.uniform(-0.1, 0.1), 0, 1)
    brightness = np.clip(controls.brightness * rng.uniform(0.7, 1.1) + rng.uniform(-0.1, 0.1), 0, 1)
    if rng.uniform() < 0.4:  # voice the unpitched parts ("vrrr", "krrr"), the pitch following brightness
        hum = speaker_hz * 2 ** (1.5 * squeeze * (brightness - brightness.mean()))
        pitch = np.where(voiced, pitch, hum)
        noisiness = np.where(voiced, noisiness, rng.uniform(0.2, 0.6))
    else:
        noisiness = np.where(voiced, noisiness, np.maximum(noisiness, 0.85))
    vibrato = 1 + 0.015 * _smooth_curve(
        rng, np.arange(len(amp), dtype=np.float64), max(2, len(amp) // 40), -1, 1
    )
    return Controls(amp, np.clip(pitch * vibrato, 70, 700) * (pitch > 0), noisiness, brightness)


def render_voice(controls: Controls, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Glottal pulses and breath noise through three formants that follow brightness; float64 ``[N]``."""
    num = int(round(controls.duration_s * sample_rate))
    sample_frames = np.arange(num) * (CONTROL_RATE / sample_rate)
    frames = np.arange(len(controls.amp), dtype=np.float64)

    def up(curve: np.ndarray) -> np.ndarray:
        return np.interp(sample_frames, frames, curve)

    voiced = controls.pitch_hz > 0
    f0 = np.full(len(frames), 120.0)
    if voiced.any():
        f0 = np.interp(frames, frames[voiced], controls.pitch_hz[voiced])  # glide through unvoiced gaps
    phase = np.cumsum(up(f0)) / sample_rate + rng.uniform()
    pulses = (np.diff(np.floor(phase), prepend=np.floor(phase[0])) > 0) * rng.uniform(0.85, 1.15, num)

    # One STFT grid for both sources: formants (a speaker's vowel, moved by brightness) computed once.
    n_fft, hop = _stft_size(sample_rate)
    voice_spec, breath_spec = _stft(pulses, n_fft, hop), _stft(rng.standard_normal(num), n_fft, hop)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)[None, :]  # [1, B]
    positions = np.minimum(np.arange(len(voice_spec)) * hop * CONTROL_RATE / sample_rate, frames[-1])
    bright = np.interp(positions, frames, controls.brightness)[:, None]  # [F, 1]
    noisiness = np.interp(positions, frames, controls.noisiness)[:, None]
    vowel = np.array(_VOWELS[rng.integers(len(_VOWELS))]) * rng.uniform(0.9, 1.25)
    shift = np.array([0.5, 0.6, 0.15]) * rng.uniform(0.5, 1.5)
    widths = np.array([80.0, 100.0, 140.0]) * rng.uniform(0.8, 1.5)
    formants = np.full((len(positions), freqs.shape[1]), 0.01)
    for k, level in enumerate((1.0, 0.6, 0.3)):
        center = vowel[k] * (1 + shift[k] * (bright - 0.5))
        formants += level / (1 + ((freqs - center) / (widths[k] / 2)) ** 2)
    voice_spec *= formants / (1 + freqs / (200 + 1200 * bright))  # glottal roll-off, steeper when dark
    breath_spec *= 0.6 * formants + 0.8 * bright * _band(freqs[0], 2500 + 3500 * bright[:, 0], 0.5)
    voice_spec /= max(np.sqrt((np.abs(voice_spec) ** 2).mean()), 1e-12)
    breath_spec /= max(np.sqrt((np.abs(breath_spec) ** 2).mean()), 1e-12)
    mixed = (1 - noisiness) * voice_spec + 0.7 * noisiness * breath_spec
    return _istft(mixed * _microphone(freqs[0], sample_rate, rng), n_fft, hop, num) * up(controls.amp)


def _microphone(freqs: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A phone or laptop microphone: a smooth random response (+-6 dB) with its own low and high cut."""
    octaves = np.log2(np.maximum(freqs, 20.0) / 20.0)
    response_db = _smooth_curve(rng, octaves, 6, -6.0, 6.0)
    low_cut = 1 / (1 + (rng.uniform(60, 250) / np.maximum(freqs, 1.0)) ** 2)
    high_cut = 1 / (1 + (freqs / rng.uniform(3500, 0.45 * sample_rate)) ** 4)
    return 10 ** (response_db / 20) * low_cut * high_cut


def place_in_room(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Lead-in (0.1-0.8 s) and trailing silence, then a small room (RT60 0.1-0.5 s); peak 1."""
    lead, tail = (np.zeros(int(rng.uniform(*span) * sample_rate)) for span in ((0.1, 0.8), (0.05, 0.4)))
    x = np.concatenate([lead, audio, tail])
    rt60 = rng.uniform(0.1, 0.5)
    ir_t = np.arange(int(rt60 * sample_rate)) / sample_rate
    ir = rng.standard_normal(len(ir_t)) * np.exp(-6.9 * ir_t / rt60)
    ir[0] = 0.0
    x = x + rng.uniform(0.05, 0.3) * _fftconvolve(x, ir / np.linalg.norm(ir))
    return _normalize_peak(x, 0.0)


#: Paul Kellet's "economy" pink-noise filter (-3 dB/octave within 0.5 dB above ~ 10 Hz at 44.1 kHz).
_PINK_B = (0.049922035, -0.095993537, 0.050612699, -0.004408786)
_PINK_A = (1.0, -2.494956002, 2.017265875, -0.522189400)


def add_room_noise(
    x: np.ndarray, sample_rate: int, rng: np.random.Generator, *, level_db: tuple[float, float] = (-60, -38)
) -> np.ndarray:
    """Pink room noise at a level (dB relative to a unit peak, as rms) drawn from ``level_db``."""
    from scipy.signal import lfilter  # scipy comes with scikit-learn

    pink = lfilter(_PINK_B, _PINK_A, rng.standard_normal(len(x)))
    return x + _unit(pink) * 10 ** (rng.uniform(*level_db) / 20)


def make_imitation(controls: Controls, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A vocal imitation of a reference with ``controls``: float32 ``[N]`` (or ``[N, 2]``) and its sample
    rate."""
    from qvimclap.audio import resample

    sample_rate = int(rng.choice(IMITATION_RATES))
    # The voice is rendered at most at 24 kHz (a voice has little above 12 kHz), then resampled: half the work
    # for 44.1 / 48 kHz files. The room noise is added at the file's rate, so it covers the whole band.
    render_rate = min(sample_rate, 24000)
    vocal = vocal_controls(warp_controls(controls, rng), rng)
    audio = place_in_room(render_voice(vocal, render_rate, rng), render_rate, rng)
    audio = resample(audio, render_rate, sample_rate).astype(np.float64)
    audio = _normalize_peak(add_room_noise(audio, sample_rate, rng), rng.uniform(-14, -1))
    if (
        rng.uniform() < STEREO_FRACTION
    ):  # a second microphone: a little later, a little quieter, its own noise
        delay = int(rng.integers(1, 30))
        other = np.concatenate([np.zeros(delay), audio[:-delay]]) * rng.uniform(0.6, 1.0)
        other += rng.standard_normal(len(audio)) * 10 ** (rng.uniform(-65, -50) / 20)
        audio = np.stack([audio, other], axis=1)
    return audio.astype(np.float32), sample_rate


def _unit(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return x / std if std > 0 else x


def _normalize_peak(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = np.abs(x).max()
    return x * (10 ** (peak_dbfs / 20) / peak) if peak > 0 else x


# ----------------------------------------------------------------------------------------------------------
# The corpus on disk
# ----------------------------------------------------------------------------------------------------------

#: (suffix, libsndfile subtype) an imitation is written with, drawn at random: mostly 16-bit WAV.
_IMITATION_FORMATS = (
    (".wav", "PCM_16"),
    (".wav", "PCM_16"),
    (".wav", "PCM_16"),
    (".flac", "PCM_16"),
    (".wav", "PCM_24"),
    (".wav", "PCM_32"),  # not FLOAT: libsndfile stamps float WAVs with the time (PEAK chunk)
)


@dataclass(frozen=True)
class Family:
    """A corpus family: its reference kinds, how a reference is drawn and how it is imitated.

    ``reference(kind, rng) -> (audio, sample_rate, state)``; ``imitation(state, rng) -> (audio, sample_rate)``
    where ``state`` is whatever the family's imitator works from (this family: the reference's
    :class:`Controls`; ``foley``: the reference audio itself).
    """

    name: str
    kinds: tuple[str, ...]
    reference: Callable[[str, np.random.Generator], tuple[np.ndarray, int, object]]
    imitation: Callable[[object, np.random.Generator], tuple[np.ndarray, int]]


def _synth_family() -> Family:
    return Family("synth", tuple(KINDS), make_reference, make_imitation)  # type: ignore[arg-type]


def _foley_family() -> Family:
    from qvimclap.data import synth_foley

    def reference(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int, object]:
        audio, sample_rate = synth_foley.make_reference(kind, rng)
        return audio, sample_rate, (audio, sample_rate)

    def imitation(state: object, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        audio, sample_rate = state  # type: ignore[misc]
        return synth_foley.make_imitation(audio, sample_rate, rng)

    return Family("foley", tuple(synth_foley.KINDS), reference, imitation)


#: Corpus families by name: ``synth`` (this module, the default) and ``foley``
#: (:mod:`qvimclap.data.synth_foley`, another sound generator and another imitator).
FAMILIES: dict[str, Callable[[], Family]] = {"synth": _synth_family, "foley": _foley_family}


def make_corpus(
    out_dir: str | Path,
    *,
    num_references: int = 200,
    imitations_per_reference: int = 3,
    seed: int = 0,
    force: bool = False,
    family: str = "synth",
) -> Path:
    """Write a ``pairs.csv`` corpus of ``family`` (see :data:`FAMILIES`) to ``out_dir`` and return the folder.

    Layout: ``references/<kind>_<i>.wav``, ``imitations/<kind>_<i>_<j>.{wav,flac}``, ``pairs.csv`` (columns
    imitation,reference,label; label = kind) and ``corpus.json`` (how it was made). Kinds are dealt
    round-robin in a seeded order, so every kind has ``num_references / len(KINDS)`` instances, give or
    take one (``KINDS`` of ``family``). The folder appears complete or not at all (written to a temporary
    sibling, then renamed). An
    existing ``out_dir`` is replaced only with ``force`` and only if it is empty or an earlier corpus.
    """
    from qvimclap import __version__
    from qvimclap.data import Pair
    from qvimclap.data.pairs import PAIRS_CSV, write_pairs_csv

    if num_references < 1 or imitations_per_reference < 1:
        raise DatasetError(
            f"a corpus needs at least 1 reference and 1 imitation each, got {num_references} and "
            f"{imitations_per_reference}"
        )
    if family not in FAMILIES:
        raise DatasetError(f"unknown corpus family {family!r}; choose one of {', '.join(FAMILIES)}")
    out_dir = Path(out_dir).absolute()
    _check_output(out_dir, force=force)
    generator = FAMILIES[family]()
    kinds = list(generator.kinds)
    deal = np.resize(np.arange(len(kinds)), num_references)
    np.random.default_rng(seed).shuffle(deal)

    # A hidden sibling, locked while written; a killed run's folder is removed by the next run.
    with _write_failures(out_dir), locked_temp_dir(out_dir) as tmp:
        (tmp / "references").mkdir()
        (tmp / "imitations").mkdir()
        pairs: list[Pair] = []
        for i, k in enumerate(deal):
            rng = np.random.default_rng([seed, i])
            kind = kinds[k]
            audio, sample_rate, state = generator.reference(kind, rng)
            ref_path = tmp / "references" / f"{kind}_{i:04d}.wav"
            sf.write(str(ref_path), audio, sample_rate, subtype="PCM_16")
            for j in range(imitations_per_reference):
                imitation, imitation_rate = generator.imitation(state, rng)
                suffix, subtype = _IMITATION_FORMATS[rng.integers(len(_IMITATION_FORMATS))]
                query_path = tmp / "imitations" / f"{kind}_{i:04d}_{j}{suffix}"
                sf.write(str(query_path), imitation, imitation_rate, subtype=subtype)
                pairs.append(Pair(query_path, ref_path, kind))
            if (i + 1) % 50 == 0:
                logger.info("synth: %d / %d references", i + 1, num_references)
        write_pairs_csv(tmp / PAIRS_CSV, pairs, root=tmp)
        info = {
            "generator": "qvimclap.data.synth" if family == "synth" else "qvimclap.data.synth_foley",
            "family": family,
            "qvimclap_version": __version__,
            "seed": seed,
            "num_references": num_references,
            "imitations_per_reference": imitations_per_reference,
            "kinds": kinds,
        }
        (tmp / CORPUS_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    return out_dir


@contextmanager
def _write_failures(out_dir: Path) -> Iterator[None]:
    """A full disk or a read-only folder while writing the corpus: one-line WriteError naming it."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # libsndfile says only "System error."
        problem = write_failure(out_dir, err)
        if problem is None:
            raise
        raise problem from None


def _check_output(out_dir: Path, *, force: bool) -> None:
    if not out_dir.exists():
        return
    if not force:
        raise DatasetError(f"{out_dir}: already exists; pass --force to replace it (force=True in Python)")
    if out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / CORPUS_JSON).is_file()):
        return
    raise DatasetError(
        f"{out_dir}: exists and is not a qvimclap corpus (no {CORPUS_JSON}); refusing to delete it even with "
        "--force, choose another folder"
    )
