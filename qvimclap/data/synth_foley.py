"""A second imitation corpus family, ``foley``: other sounds and another imitator (``synth --family foley``).

It exists so that training defaults can be chosen on one family and checked on another. Nothing is shared
with :mod:`qvimclap.data.synth` except the file layout:

- **References** are 12 kinds of foley made by other kinds of synthesis: physical and modal models
  (Karplus-Strong plucks, a bouncing ball, Minnaert bubbles, a stick-slip creak, clock ticks), FM (laser
  shots, a drone pad), granular and noise textures (rain, spray, thunder, footsteps) and an AM ring; 1.5-5 s,
  22.05 or 48 kHz.
- **Imitations** are not rendered from the generator's controls. The imitator *listens* to the reference
  audio (frame loudness, spectral centroid, an autocorrelation pitch tracker, onsets from loudness flux) and
  chooses a vocal strategy: hum through nasal resonators, whistle, a fricative whose place follows the
  centroid, or beatbox syllables (kick, "t", "k", "ts") placed at the heard onsets. Its timing is a
  piecewise-linear tempo map that mostly slows down, beatboxed events can be dropped or doubled, dynamics are
  compressed, louder means brighter and a little higher (vocal effort), and a breath, lip smacks, mains hum,
  an automatic gain control or clipping may be added. Imitations are 1.5-7 s, most longer than 3 s, 16 / 24 /
  44.1 kHz mono.

Deterministic: reference ``i`` and its imitations draw from ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import signal

REFERENCE_RATES = (22050, 48000)
IMITATION_RATES = (16000, 24000, 44100)
#: Frames per second of the imitator's listening (10 ms hop).
LISTEN_RATE = 100
MIN_IMITATION_S, MAX_IMITATION_S = 1.5, 7.0

# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _t(duration_s: float, sr: int) -> np.ndarray:
    return np.arange(int(duration_s * sr)) / sr


def _peak(x: np.ndarray, dbfs: float = 0.0) -> np.ndarray:
    m = np.abs(x).max()
    return x * (10 ** (dbfs / 20) / m) if m > 0 else x


def _resonator(x: np.ndarray, sr: int, freq_hz: float, q: float) -> np.ndarray:
    """Two-pole band-pass resonance (RBJ biquad, constant 0 dB peak gain)."""
    b, a = signal.iirpeak(min(freq_hz, 0.45 * sr), q, fs=sr)
    return signal.lfilter(b, a, x)


def _butter(x: np.ndarray, sr: int, cutoff_hz: float | tuple[float, float], kind: str, order: int = 2):
    nyq = 0.49 * sr
    cutoff = np.clip(cutoff_hz, 20.0, nyq)
    sos = signal.butter(order, cutoff, btype=kind, fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def _decays(t: np.ndarray, onsets: np.ndarray, tau_s: np.ndarray | float) -> np.ndarray:
    """``[E, N]`` one-sided exponential decays starting at each onset."""
    dt = t[None, :] - onsets[:, None]
    tau = np.broadcast_to(np.asarray(tau_s, dtype=np.float64), onsets.shape)[:, None]
    return np.where(dt >= 0, np.exp(-np.maximum(dt, 0) / tau), 0.0)


def _place(sr: int, n: int, onsets: np.ndarray, grain: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Sum ``grain`` at every onset (seconds) with its gain."""
    out = np.zeros(n + len(grain))
    for onset, gain in zip((onsets * sr).astype(np.int64), gains, strict=True):
        if 0 <= onset < n:
            out[onset : onset + len(grain)] += gain * grain
    return out[:n]


# ----------------------------------------------------------------------------------------------------------
# Reference kinds
# ----------------------------------------------------------------------------------------------------------


def _pluck(rng: np.random.Generator, sr: int) -> np.ndarray:
    """Karplus-Strong string: a short melody of 1-6 plucked notes."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    num = int(rng.integers(1, 7))
    onsets = np.sort(rng.uniform(0.02, 0.75 * t[-1], num))
    base = rng.uniform(90, 500)
    out = np.zeros(len(t))
    for onset in onsets:
        f = base * 2 ** (rng.integers(0, 13) / 12)
        delay = max(2, int(round(sr / f)))
        burst = np.zeros(len(t) - int(onset * sr))
        burst[:delay] = rng.uniform(-1, 1, delay)
        loss = rng.uniform(0.990, 0.9985)
        a = np.zeros(delay + 2)
        a[0], a[delay], a[delay + 1] = 1.0, -loss / 2, -loss / 2
        out[int(onset * sr) :] += signal.lfilter([1.0], a, burst) * rng.uniform(0.5, 1.0)
    return out


def _bounce(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A ball bouncing: modal pings at geometrically shrinking intervals and heights."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    restitution = rng.uniform(0.6, 0.85)
    gap, at, onsets = rng.uniform(0.25, 0.7), rng.uniform(0.02, 0.3), []
    while at < t[-1] - 0.05 and gap > 0.012:
        onsets.append(at)
        at, gap = at + gap, gap * restitution
    onsets_arr = np.array(onsets)
    heights = restitution ** (2 * np.arange(len(onsets_arr)) * rng.uniform(0.3, 0.6))
    f = rng.uniform(150, 1500)
    grain_t = _t(0.25, sr)
    ratios = (1.0, rng.uniform(2.2, 2.9), rng.uniform(4.5, 5.6))
    grain = sum(np.sin(2 * np.pi * f * r * grain_t) * np.exp(-grain_t * 30 * r) / r for r in ratios)
    return _place(sr, len(t), onsets_arr, grain, heights)


def _bubbles(rng: np.random.Generator, sr: int) -> np.ndarray:
    """Minnaert bubbles: decaying sinusoids whose pitch rises, at Poisson times."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    rate = rng.uniform(3, 30)
    num = max(1, rng.poisson(rate * t[-1]))
    onsets = np.sort(rng.uniform(0, t[-1] - 0.05, num))
    out = np.zeros(len(t) + sr // 5)
    centre = rng.uniform(400, 2500)
    for onset in onsets:
        f = centre * 2 ** rng.normal(0, 0.5)
        tau = rng.uniform(0.01, 0.05)
        gt = _t(5 * tau, sr)
        grain = np.sin(2 * np.pi * np.cumsum(f * (1 + rng.uniform(1, 6) * gt)) / sr) * np.exp(-gt / tau)
        i = int(onset * sr)
        out[i : i + len(grain)] += grain * rng.uniform(0.2, 1.0)
    return out[: len(t)]


def _creak(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A door creak: stick-slip pulses at a slowly wandering, jittery rate through a wooden body."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    knots = rng.uniform(15, 180, int(rng.integers(2, 6)))
    rate = np.interp(t, np.linspace(0, t[-1], len(knots)), knots) * (1 + 0.15 * rng.standard_normal(len(t)))
    phase = np.cumsum(np.maximum(rate, 5)) / sr
    pulses = (np.diff(np.floor(phase), prepend=0.0) > 0) * rng.uniform(0.5, 1.0, len(t))
    body = sum(
        _resonator(pulses, sr, rng.uniform(300, 3000), rng.uniform(8, 30)) * rng.uniform(0.5, 1.0)
        for _ in range(3)
    )
    envelope = np.clip(np.sin(np.pi * t / t[-1]) * rng.uniform(1.0, 3.0), 0, 1)
    return body * envelope


def _laser(rng: np.random.Generator, sr: int) -> np.ndarray:
    """FM laser shots: a falling carrier whose modulation index decays, 1-4 shots."""
    t = _t(rng.uniform(1.5, 4.0), sr)
    num = int(rng.integers(1, 5))
    length = rng.uniform(0.15, 0.5)
    onsets = rng.uniform(0.02, 0.1) + np.arange(num) * rng.uniform(length + 0.05, length + 0.6)
    onsets = onsets[onsets + length < t[-1]]
    gt = _t(length, sr)
    carrier = rng.uniform(1500, 5000) * np.exp(-gt / rng.uniform(0.05, 0.3))
    ratio, index = rng.uniform(0.5, 3.0), rng.uniform(2, 8)
    mod = index * np.exp(-gt / 0.1) * np.sin(2 * np.pi * np.cumsum(carrier * ratio) / sr)
    grain = np.sin(2 * np.pi * np.cumsum(carrier) / sr + mod) * np.exp(-gt / (length / 2))
    return _place(sr, len(t), onsets, grain, np.ones(len(onsets)))


def _rain(rng: np.random.Generator, sr: int) -> np.ndarray:
    """Rain on a surface: a dense granular texture of tiny noise drops under a swelling intensity."""
    t = _t(rng.uniform(2.0, 5.0), sr)
    intensity = np.interp(t, np.linspace(0, t[-1], 4), rng.uniform(0.3, 1.0, 4))
    density = rng.uniform(80, 400)
    drops = (rng.uniform(size=len(t)) < density * intensity / sr) * rng.uniform(0.2, 1.0, len(t))
    grain_t = _t(0.004, sr)
    grain = rng.standard_normal(len(grain_t)) * np.exp(-grain_t / 0.001)
    patter = np.convolve(drops, grain)[: len(t)]
    patter = _butter(patter, sr, (rng.uniform(800, 2500), rng.uniform(5000, 9000)), "bandpass")
    hiss = _butter(rng.standard_normal(len(t)), sr, 3000, "highpass") * 0.05
    return (patter / (patter.std() + 1e-12) + hiss) * intensity


def _footsteps(rng: np.random.Generator, sr: int) -> np.ndarray:
    """Footsteps: heel-toe pairs of low-passed noise bursts at a walking pace."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    pace = rng.uniform(0.35, 0.75)
    onsets = rng.uniform(0.02, 0.3) + np.arange(int(t[-1] / pace) + 1) * pace
    onsets = onsets + rng.normal(0, 0.02, len(onsets))
    onsets = onsets[(onsets >= 0) & (onsets < t[-1] - 0.1)]
    toe = rng.uniform(0.04, 0.09)
    grain_t = _t(0.2, sr)
    noise = rng.standard_normal(len(grain_t))
    heel = noise * np.exp(-grain_t / 0.02)
    shifted = np.roll(noise, 97) * np.exp(-np.maximum(grain_t - toe, 0) / 0.03) * (grain_t >= toe) * 0.6
    grain = _butter(heel + shifted, sr, rng.uniform(400, 2000), "lowpass")
    return _place(sr, len(t), onsets, grain, rng.uniform(0.6, 1.0, len(onsets)))


def _thunder(rng: np.random.Generator, sr: int) -> np.ndarray:
    """Thunder or a distant explosion: a crack, then a long low rumble with rolling swells."""
    t = _t(rng.uniform(2.0, 5.0), sr)
    onset = rng.uniform(0.02, 0.4)
    brown = np.cumsum(rng.standard_normal(len(t)))
    brown = _butter(brown - np.linspace(brown[0], brown[-1], len(t)), sr, rng.uniform(80, 400), "lowpass")
    rolls = 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6)) ** 2
    rumble = brown / (brown.std() + 1e-12) * _decays(t, np.array([onset]), rng.uniform(0.6, 2.0))[0] * rolls
    crack = (
        _butter(rng.standard_normal(len(t)), sr, 1500, "highpass") * _decays(t, np.array([onset]), 0.03)[0]
    )
    return rumble + rng.uniform(0.3, 1.5) * crack


def _ring(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A telephone ring: two tones under a fast tremolo, in ring-ring bursts."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    f1 = rng.uniform(400, 1200)
    f2 = f1 * rng.uniform(1.1, 1.5)
    tremolo = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(12, 25) * t))
    on, off = rng.uniform(0.3, 1.0), rng.uniform(0.15, 0.8)
    start = rng.uniform(0.02, 0.2)
    gate = ((t - start) % (on + off) < on) & (t >= start)
    tone = np.where(tremolo > 0, np.sin(2 * np.pi * f1 * t), np.sin(2 * np.pi * f2 * t))
    smooth = np.hanning(int(0.004 * sr) + 2)[1:-1]
    return tone * np.convolve(gate.astype(np.float64), smooth / smooth.sum(), mode="same")


def _clock(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A clock: alternating tick and tock, two resonant clicks at a steady interval."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    interval = rng.uniform(0.2, 0.6)
    onsets = rng.uniform(0.02, 0.2) + np.arange(int(t[-1] / interval) + 1) * interval
    onsets = onsets[onsets < t[-1] - 0.05]
    click_t = _t(0.06, sr)
    impulse = rng.standard_normal(len(click_t)) * np.exp(-click_t / 0.002)
    tick = _resonator(impulse, sr, rng.uniform(2000, 5000), 12)
    tock = _resonator(impulse, sr, rng.uniform(700, 1800), 12)
    odd = np.arange(len(onsets)) % 2 == 1
    return _place(sr, len(t), onsets[~odd], tick, np.ones((~odd).sum())) + _place(
        sr, len(t), onsets[odd], tock, np.full(odd.sum(), rng.uniform(0.5, 1.0))
    )


def _drone(rng: np.random.Generator, sr: int) -> np.ndarray:
    """An FM drone pad: a sustained tone whose modulation index (brightness) breathes and pitch glides."""
    t = _t(rng.uniform(2.0, 5.0), sr)
    f = rng.uniform(60, 300) * 2 ** (rng.uniform(-0.3, 0.3) * t / t[-1])
    index = np.interp(t, np.linspace(0, t[-1], 5), rng.uniform(0.2, 5.0, 5))
    ratio = rng.choice([1.0, 2.0, 3.0, 1.5, 0.5])
    tone = np.sin(2 * np.pi * np.cumsum(f) / sr + index * np.sin(2 * np.pi * np.cumsum(f * ratio) / sr))
    attack, release = rng.uniform(0.1, 0.8), rng.uniform(0.2, 1.0)
    return tone * np.clip(t / attack, 0, 1) * np.clip((t[-1] - t) / release, 0, 1)


def _spray(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A spray can or fizz: high-passed hiss with sparse crackles, in 1-3 squirts."""
    t = _t(rng.uniform(1.5, 5.0), sr)
    num = int(rng.integers(1, 4))
    lengths = rng.uniform(0.3, 1.2, num)
    starts = rng.uniform(0.02, 0.2) + np.concatenate(
        [[0], np.cumsum(lengths + rng.uniform(0.1, 0.5, num))[:-1]]
    )
    gate = ((t[None, :] >= starts[:, None]) & (t[None, :] < (starts + lengths)[:, None])).any(0)
    smooth = np.hanning(int(0.03 * sr) + 2)[1:-1]
    gate = np.convolve(gate.astype(np.float64), smooth / smooth.sum(), mode="same")
    hiss = _butter(rng.standard_normal(len(t)), sr, rng.uniform(2500, 7000), "highpass", order=4)
    crackle = (rng.uniform(size=len(t)) < rng.uniform(20, 200) / sr) * rng.standard_normal(len(t)) * 8
    return (hiss + crackle) * gate


#: The reference kinds (labels) of the foley family and their synthesisers.
KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "pluck": _pluck,
    "bounce": _bounce,
    "bubbles": _bubbles,
    "creak": _creak,
    "laser": _laser,
    "rain": _rain,
    "footsteps": _footsteps,
    "thunder": _thunder,
    "ring": _ring,
    "clock": _clock,
    "drone": _drone,
    "spray": _spray,
}


def make_reference(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One reference of ``kind``: float32 mono ``[N]`` audio (1.5-5 s) and its sample rate."""
    sample_rate = int(rng.choice(REFERENCE_RATES))
    audio = _peak(KINDS[kind](rng, sample_rate))
    audio = audio + rng.standard_normal(len(audio)) * 10 ** (rng.uniform(-75, -50) / 20)  # a quiet floor
    return _peak(audio, rng.uniform(-9, -1)).astype(np.float32), sample_rate


# ----------------------------------------------------------------------------------------------------------
# The imitator: listen, choose a strategy, perform
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heard:
    """What the imitator hears in a reference, at :data:`LISTEN_RATE` frames per second (float64 ``[F]``).

    ``loudness_db`` frame RMS in dB (peak frame 0 dB); ``centroid_hz`` spectral centroid; ``pitch_hz`` the
    autocorrelation pitch where the frame is periodic, else 0; ``onsets_s`` the heard onsets in seconds.
    """

    loudness_db: np.ndarray
    centroid_hz: np.ndarray
    pitch_hz: np.ndarray
    onsets_s: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.loudness_db) / LISTEN_RATE


def listen(audio: np.ndarray, sample_rate: int) -> Heard:
    """Track loudness, centroid, pitch and onsets of ``audio`` (float ``[N]``), as a listener would."""
    x = signal.resample_poly(np.asarray(audio, dtype=np.float64), 16000, sample_rate)  # listen at 16 kHz
    hop, win = 160, 640
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (win // 2, win)), win)[::hop]
    frames = frames[: int(np.ceil(len(x) / hop))] * np.hanning(win)
    rms = np.sqrt((frames**2).mean(1)) + 1e-9
    loudness = 20 * np.log10(rms / rms.max())
    spec = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(win, 1 / 16000)
    centroid = (spec * freqs).sum(1) / (spec.sum(1) + 1e-12)
    # Normalised autocorrelation from the power spectrum; a peak between 60 Hz and 2 kHz above 0.6 is a pitch.
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * win, axis=1)) ** 2, axis=1)[:, :win]
    ac /= ac[:, :1] + 1e-12
    lo, hi = 16000 // 2000, 16000 // 60
    lag = np.argmax(ac[:, lo:hi], axis=1) + lo
    strength = ac[np.arange(len(ac)), lag]
    pitch = np.where((strength > 0.6) & (loudness > -35), 16000 / lag, 0.0)
    flux = np.diff(np.convolve(loudness, np.ones(3) / 3, mode="same"), prepend=loudness[0])
    peaks, _ = signal.find_peaks(flux, height=4.0, distance=int(0.06 * LISTEN_RATE))
    peaks = peaks[loudness[np.minimum(peaks + 2, len(loudness) - 1)] > -30]
    return Heard(loudness, centroid, pitch, peaks / LISTEN_RATE)


def _tempo_map(rng: np.random.Generator, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-linear map reference time -> performance time (knots), mostly slower than the reference."""
    num = int(rng.integers(2, 6))
    knots_in = np.concatenate([[0.0], np.sort(rng.uniform(0, duration_s, num - 1)), [duration_s]])
    slowness = np.exp(rng.normal(np.log(rng.uniform(1.0, 1.5)), 0.2, num))  # local slowness per segment
    knots_out = np.concatenate([[0.0], np.cumsum(np.diff(knots_in) * slowness)])
    return knots_in, knots_out


def choose_strategy(heard: Heard, rng: np.random.Generator) -> str:
    """How this person imitates: hum, whistle, fricative or beatbox, by what the sound is."""
    active = heard.loudness_db > -25
    periodic = float((heard.pitch_hz[active] > 0).mean()) if active.any() else 0.0
    impulsive = len(heard.onsets_s) / max(heard.duration_s, 1e-9) > 1.0 and float(active.mean()) < 0.5
    if impulsive:
        weights = {"beatbox": 0.7, "fricative": 0.15, "hum": 0.15, "whistle": 0.0}
    elif periodic > 0.4:
        weights = {"hum": 0.55, "whistle": 0.3, "fricative": 0.1, "beatbox": 0.05}
    else:
        weights = {"fricative": 0.55, "hum": 0.3, "beatbox": 0.1, "whistle": 0.05}
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _curves(heard: Heard, knots: tuple[np.ndarray, np.ndarray], sr: int, n: int, rng: np.random.Generator):
    """Loudness (linear, compressed), centroid and pitch at performance samples ``[n]``, through the tempo
    map."""
    ref_t = np.interp(np.arange(n) / sr, knots[1], knots[0])  # performance time -> reference time
    frame = np.minimum((ref_t * LISTEN_RATE).astype(np.int64), len(heard.loudness_db) - 1)
    loud_db = np.maximum(heard.loudness_db, -45) * rng.uniform(0.5, 0.8)  # people compress dynamics
    smooth = np.hanning(9)[1:-1]
    loud_db = np.convolve(loud_db, smooth / smooth.sum(), mode="same")
    gain = 10 ** (loud_db[frame] / 20) * (heard.loudness_db[frame] > -40)
    voiced = heard.pitch_hz > 0
    pitch = heard.pitch_hz.copy()
    if voiced.any():
        pitch = np.interp(np.arange(len(pitch)), np.flatnonzero(voiced), pitch[voiced])
    else:  # an unpitched sound is hummed along its brightness
        pitch = 150 * (heard.centroid_hz / np.median(heard.centroid_hz)) ** 0.5
    return gain, heard.centroid_hz[frame], pitch[frame]


def _hum(gain, centroid, pitch, sr: int, rng: np.random.Generator, *, effort: float) -> np.ndarray:
    """A hum ("mmm"): a glottal source with effort-dependent tilt through fixed nasal resonances."""
    register = rng.uniform(90, 250)
    octaves = np.log2(np.maximum(pitch, 30) / np.median(np.maximum(pitch, 30)))
    f0 = register * 2 ** (rng.uniform(0.3, 0.8) * octaves + effort * 0.15 * (gain - gain.mean()))
    cycles = np.cumsum(np.clip(f0, 60, 600)) / sr
    saw = 2 * (cycles % 1.0) - 1  # a bright glottal source; its low-passed copy is the soft voice
    soft = _butter(saw, sr, rng.uniform(400, 900), "lowpass", order=2)
    bright = np.clip(effort * gain, 0, 1)  # louder -> flatter spectrum (brighter)
    source = bright * saw + (1 - bright) * soft * 3
    out = _resonator(source, sr, rng.uniform(220, 300), 3) + 0.4 * _resonator(
        source, sr, rng.uniform(2000, 2600), 6
    )
    return out * gain


def _whistle(gain, centroid, pitch, sr: int, rng: np.random.Generator, *, effort: float) -> np.ndarray:
    """A whistle: a near-sine in 500-2500 Hz following the heard pitch, with breath noise."""
    octaves = np.log2(np.maximum(pitch, 30) / np.median(np.maximum(pitch, 30)))
    f = np.clip(rng.uniform(700, 1400) * 2 ** (rng.uniform(0.6, 1.0) * octaves), 500, 2500)
    tone = np.sin(2 * np.pi * np.cumsum(f) / sr)
    breath = _butter(rng.standard_normal(len(f)), sr, (1000, 6000), "bandpass") * 0.15
    return (tone + breath) * gain


def _fricative(gain, centroid, pitch, sr: int, rng: np.random.Generator, *, effort: float) -> np.ndarray:
    """A fricative ("fff", "sss", "shhh"): noise through a band whose centre follows the heard centroid."""
    nperseg = 256 if sr <= 24000 else 512
    noise = rng.standard_normal(len(gain))
    _, _, spec = signal.stft(noise, fs=sr, nperseg=nperseg)
    freqs = np.linspace(0, sr / 2, spec.shape[0])[:, None]
    at = np.linspace(0, len(gain) - 1, spec.shape[1]).astype(np.int64)
    place = np.clip(np.log2(np.maximum(centroid[at], 100) / 1000), -2, 3) / 5  # -0.4 .. 0.6
    centre = 2 ** (np.log2(4000) + 1.2 * place) * rng.uniform(0.8, 1.2)  # "sh" ~ 2.5 kHz .. "s" ~ 6 kHz
    width = rng.uniform(0.4, 0.8)
    mask = np.exp(-0.5 * (np.log2(np.maximum(freqs, 50) / centre[None, :]) / width) ** 2)
    _, out = signal.istft(spec * mask, fs=sr, nperseg=nperseg)
    out = np.pad(out, (0, max(0, len(gain) - len(out))))[: len(gain)]
    return out / (out.std() + 1e-12) * gain * (0.5 + 0.5 * effort)


def _beatbox(heard: Heard, knots, sr: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Beatbox syllables at the heard onsets (tempo-mapped), chosen by the centroid: kick, "k", "t", "ts"."""
    onsets = heard.onsets_s if len(heard.onsets_s) else np.array([0.0])
    keep = rng.uniform(size=len(onsets)) > 0.1  # a missed event
    onsets = onsets[keep] if keep.any() else onsets[:1]
    if rng.uniform() < 0.25:  # an extra one at the end
        onsets = np.append(onsets, onsets[-1] + rng.uniform(0.15, 0.4))
    frame = np.minimum((onsets * LISTEN_RATE).astype(np.int64) + 2, len(heard.centroid_hz) - 1)
    times = np.interp(onsets, knots[0], knots[1], right=None)
    out = np.zeros(n + sr // 2)
    for at, centroid, loud in zip(times, heard.centroid_hz[frame], heard.loudness_db[frame], strict=True):
        gt = _t(rng.uniform(0.05, 0.15), sr)
        if centroid < 700:
            grain = np.sin(2 * np.pi * np.cumsum(180 * np.exp(-gt / 0.02) + 55) / sr) * np.exp(-gt / 0.05)
        elif centroid < 2000:
            grain = _butter(rng.standard_normal(len(gt)), sr, (900, 2500), "bandpass") * np.exp(-gt / 0.02)
        elif centroid < 4000:
            grain = _butter(rng.standard_normal(len(gt)), sr, (2500, 6000), "bandpass") * np.exp(-gt / 0.01)
        else:
            grain = _butter(rng.standard_normal(len(gt)), sr, 5000, "highpass") * np.exp(-gt / 0.05)
        i = int(at * sr)
        if 0 <= i < n:
            out[i : i + len(grain)] += _peak(grain) * 10 ** (max(loud, -30) * 0.6 / 20)
    return out[:n]


def _mouth_noises(x: np.ndarray, sr: int, lead: int, rng: np.random.Generator) -> np.ndarray:
    """A breath in before the performance and a lip smack or two, at a low level."""
    if rng.uniform() < 0.5 and lead > int(0.25 * sr):
        breath_n = int(rng.uniform(0.15, min(0.4, lead / sr - 0.05)) * sr)
        breath = _butter(rng.standard_normal(breath_n), sr, (800, 3500), "bandpass") * np.hanning(breath_n)
        start = lead - breath_n - int(0.03 * sr)
        x[start : start + breath_n] += _peak(breath, rng.uniform(-30, -20))
    for _ in range(int(rng.integers(0, 3))):
        at = int(rng.integers(0, len(x) - int(0.01 * sr)))
        click_n = int(0.008 * sr)
        x[at : at + click_n] += _peak(
            rng.standard_normal(click_n) * np.hanning(click_n), rng.uniform(-32, -22)
        )
    return x


def _recording_chain(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A phone's recording: mains hum, room tone, sometimes an automatic gain control, sometimes clipping."""
    t = np.arange(len(x)) / sr
    if rng.uniform() < 0.3:
        mains = rng.choice([50.0, 60.0])
        x = x + 10 ** (rng.uniform(-55, -40) / 20) * sum(
            np.sin(2 * np.pi * mains * k * t) / k for k in (1, 2, 3)
        )
    brown = np.cumsum(rng.standard_normal(len(x)))
    brown = _butter(brown - np.linspace(brown[0], brown[-1], len(x)), sr, 60, "highpass")
    x = x + brown / (brown.std() + 1e-12) * 10 ** (rng.uniform(-60, -42) / 20)
    if rng.uniform() < 0.3:  # AGC: divide by a slow envelope, so loud passages flatten
        env = np.sqrt(_butter(x**2, sr, 3.0, "lowpass", order=1).clip(1e-10))
        x = x / (env / env.max()) ** rng.uniform(0.2, 0.5)
    x = _peak(x, 0.0)
    if rng.uniform() < 0.15:  # a hot input: clipped 1-6 dB
        ceiling = 10 ** (-rng.uniform(1, 6) / 20)
        x = np.clip(x, -ceiling, ceiling)
    return x


def make_imitation(
    reference: np.ndarray, reference_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A vocal imitation of ``reference``: float32 mono ``[N]`` (1.5-7 s) and its sample rate."""
    sample_rate = int(rng.choice(IMITATION_RATES))
    render_rate = min(sample_rate, 24000)
    heard = listen(reference, reference_rate)
    knots = _tempo_map(rng, heard.duration_s)
    n = int(knots[1][-1] * render_rate)
    strategy = choose_strategy(heard, rng)
    effort = rng.uniform(0.2, 1.0)
    if strategy == "beatbox":
        performance = _beatbox(heard, knots, render_rate, n, rng)
    else:
        gain, centroid, pitch = _curves(heard, knots, render_rate, n, rng)
        performance = {"hum": _hum, "whistle": _whistle, "fricative": _fricative}[strategy](
            gain, centroid, pitch, render_rate, rng, effort=effort
        )
    performance = _peak(performance)
    lead = int(rng.uniform(0.2, 1.2) * render_rate)
    total = int(
        np.clip((lead + n) / render_rate + rng.uniform(0.2, 1.2), MIN_IMITATION_S, MAX_IMITATION_S)
        * render_rate
    )
    x = np.zeros(total)
    body = performance[: max(0, total - lead)]
    x[lead : lead + len(body)] = body
    x = _mouth_noises(x, render_rate, lead, rng)
    if sample_rate != render_rate:
        x = signal.resample_poly(
            x,
            sample_rate // np.gcd(sample_rate, render_rate),
            render_rate // np.gcd(sample_rate, render_rate),
        )
    x = _recording_chain(x, sample_rate, rng)
    return _peak(x, rng.uniform(-12, -0.5)).astype(np.float32), sample_rate
