"""The built-in imitation corpus: layout, determinism, every kind, and what an imitation keeps."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from qvimclap.audio import is_silent
from qvimclap.data import open_dataset
from qvimclap.data.check import check_dataset
from qvimclap.data.synth import (
    CONTROL_RATE,
    IMITATION_RATES,
    KINDS,
    REFERENCE_RATES,
    Controls,
    make_corpus,
    make_imitation,
    make_reference,
    render_voice,
    vocal_controls,
    warp_controls,
)
from qvimclap.errors import DatasetError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(
        tmp_path_factory.mktemp("synth") / "corpus", num_references=14, imitations_per_reference=2, seed=7
    )


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _controls(duration_s: float, pitch_hz, amp=None) -> Controls:
    n = int(duration_s * CONTROL_RATE)
    pitch = np.broadcast_to(np.asarray(pitch_hz, dtype=np.float64), (n,)).copy()
    amp = np.hanning(n) if amp is None else amp
    return Controls(amp, pitch, np.zeros(n), np.full(n, 0.5))


def test_corpus_is_a_pairs_dataset_with_every_kind(corpus):
    ds = open_dataset(corpus)
    assert ds.layout == "pairs" and len(ds.references) == 14 and len(ds.pairs) == 28
    assert set(ds.labels) == set(KINDS) and len(KINDS) >= 12  # 14 references dealt over 14 kinds: one each
    assert all(p.reference_path.name.startswith(p.label + "_") for p in ds.pairs)
    info = json.loads((corpus / "corpus.json").read_text())
    assert (info["seed"], info["num_references"], info["imitations_per_reference"]) == (7, 14, 2)
    assert not [p for p in corpus.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_corpus_files_are_usable_with_assorted_formats(corpus):
    ds = open_dataset(corpus)
    report = check_dataset(ds)
    assert report.ok, report.format()
    for ref in ds.references:
        info = sf.info(str(ref))
        assert info.samplerate in REFERENCE_RATES and info.channels == 1
        assert 1.0 <= info.duration <= 6.0 + 1e-3
    rates = set()
    for query in ds.queries:
        info = sf.info(str(query))
        assert info.samplerate in IMITATION_RATES and info.channels in (1, 2)
        rates.add(info.samplerate)
        x, sr = sf.read(str(query), dtype="float32", always_2d=True)
        lead = x[: int(0.09 * sr), 0]  # lead-in silence: only room noise before the voice starts
        assert np.sqrt(np.mean(lead**2)) < 10 ** (-30 / 20) * np.abs(x).max()
    assert len(rates) >= 3


def test_corpus_is_deterministic_for_a_seed(tmp_path):
    a = make_corpus(tmp_path / "a", num_references=3, imitations_per_reference=2, seed=5)
    b = make_corpus(tmp_path / "b", num_references=3, imitations_per_reference=2, seed=5)
    c = make_corpus(tmp_path / "c", num_references=3, imitations_per_reference=2, seed=6)
    assert _digest(a) == _digest(b)
    assert set(_digest(a).values()) - set(_digest(c).values())  # another seed, other sounds


def test_corpus_output_is_never_overwritten_without_force(tmp_path):
    out = make_corpus(tmp_path / "c", num_references=1, imitations_per_reference=1, seed=0)
    with pytest.raises(DatasetError, match="already exists; pass --force"):
        make_corpus(out, num_references=1, imitations_per_reference=1)
    make_corpus(out, num_references=2, imitations_per_reference=1, force=True)
    assert len(open_dataset(out).references) == 2
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a qvimclap corpus"):
        make_corpus(precious, num_references=1, imitations_per_reference=1, force=True)
    assert (precious / "thesis.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="at least 1 reference"):
        make_corpus(tmp_path / "d", num_references=0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_renders_a_usable_reference(kind):
    audio, sr, controls = make_reference(kind, np.random.default_rng(11))
    assert audio.dtype == np.float32 and audio.ndim == 1 and sr in REFERENCE_RATES
    assert np.isfinite(audio).all() and not is_silent(audio) and np.abs(audio).max() <= 10 ** (-1 / 20) + 1e-6
    assert 1.0 <= len(audio) / sr <= 6.0
    assert abs(controls.duration_s - len(audio) / sr) < 2 / CONTROL_RATE
    assert controls.amp.max() == pytest.approx(1.0) and controls.amp.min() >= 0
    assert (controls.pitch_hz >= 0).all() and ((controls.noisiness >= 0) & (controls.noisiness <= 1)).all()


def test_instances_of_a_kind_differ():
    a, _, ca = make_reference("knock", np.random.default_rng(1))
    b, _, cb = make_reference("knock", np.random.default_rng(2))
    assert len(a) != len(b) or not np.allclose(a, b)
    assert len(ca.amp) != len(cb.amp) or not np.allclose(ca.amp, cb.amp)


def test_warp_keeps_the_order_of_the_contour():
    ramp = _controls(2.0, np.linspace(200, 800, 2 * CONTROL_RATE))
    for seed in range(5):
        warped = warp_controls(ramp, np.random.default_rng(seed))
        assert 2.0 / 1.25 / 1.2 < warped.duration_s < 2.0 * 1.25 * 1.2
        assert np.all(np.diff(warped.pitch_hz) >= 0)  # a rising contour still rises: time only moves forward
        assert warped.pitch_hz[0] == pytest.approx(200) and warped.pitch_hz[-1] == pytest.approx(
            800, rel=0.01
        )
        assert 0.3 < np.argmax(warped.amp) / len(warped.amp) < 0.7  # the swell stays in the middle


def test_vocal_controls_squeeze_pitch_into_a_voice_and_keep_its_shape():
    contour = 3000 * 2 ** np.sin(np.linspace(0, 3 * np.pi, 600))  # a siren far above any voice
    for seed in range(5):
        voice = vocal_controls(_controls(3.0, contour), np.random.default_rng(seed))
        assert 70 <= voice.pitch_hz.min() and voice.pitch_hz.max() <= 700
        assert np.corrcoef(np.log(voice.pitch_hz), np.log(contour))[0, 1] > 0.95
        assert np.ptp(np.log2(voice.pitch_hz)) < np.ptp(np.log2(contour))  # squeezed, not copied


def test_unpitched_sounds_become_breath_or_a_hum():
    noise = Controls(np.hanning(200), np.zeros(200), np.ones(200), np.full(200, 0.8))
    voices = [vocal_controls(noise, np.random.default_rng(s)) for s in range(12)]
    breathy = [v for v in voices if not v.pitch_hz.any()]
    hummed = [v for v in voices if v.pitch_hz.any()]
    assert breathy and hummed
    assert all(v.noisiness.min() >= 0.85 for v in breathy)
    assert all(v.noisiness.max() <= 0.6 for v in hummed)


def test_render_voice_follows_the_envelope_and_pitch():
    sr = 16000
    n = int(1.5 * CONTROL_RATE)
    amp = np.zeros(n)
    amp[20:80], amp[150:170], amp[220:280] = 1.0, 0.5, 1.0  # three bursts: the rhythm to keep
    voice = render_voice(_controls(1.5, 150.0, amp), sr, np.random.default_rng(0))
    assert len(voice) == int(1.5 * sr) and np.isfinite(voice).all()
    frame_rms = np.sqrt((voice[: n * (sr // CONTROL_RATE)].reshape(n, -1) ** 2).mean(1))
    assert np.corrcoef(frame_rms, amp)[0, 1] > 0.9
    assert frame_rms[100:140].max() < 1e-3 * frame_rms.max()  # silent between bursts
    burst = voice[int(0.15 * sr) : int(0.35 * sr)]
    ac = np.correlate(burst, burst, "full")[len(burst) - 1 :]
    lag = np.argmax(ac[sr // 700 : sr // 70]) + sr // 700
    assert sr / lag == pytest.approx(150, rel=0.03)  # glottal pulses at the asked pitch


def test_make_imitation_draws_rates_and_channels():
    controls = _controls(0.3, 400.0)
    rng = np.random.default_rng(0)
    outputs = [make_imitation(controls, rng) for _ in range(40)]
    assert {sr for _, sr in outputs} == set(IMITATION_RATES)
    assert {x.ndim for x, _ in outputs} == {1, 2}
    for x, sr in outputs:
        assert x.dtype == np.float32 and np.isfinite(x).all() and not is_silent(x)
        assert x.shape[0] / sr > 0.3 + 0.1  # the performance plus at least the lead-in
