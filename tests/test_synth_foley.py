"""The second corpus family (``foley``): layout, durations, determinism, how its imitator chooses."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from qvimclap.audio import is_silent
from qvimclap.cli import app
from qvimclap.data import open_dataset
from qvimclap.data import synth_foley as foley
from qvimclap.data.check import check_dataset
from qvimclap.data.synth import KINDS as SYNTH_KINDS
from qvimclap.data.synth import make_corpus
from qvimclap.errors import DatasetError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("foley") / "corpus"
    return make_corpus(out, num_references=12, imitations_per_reference=2, seed=3, family="foley")


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_foley_corpus_has_its_own_kinds_counts_and_durations(corpus):
    ds = open_dataset(corpus)
    assert len(ds.references) == 12 and len(ds.pairs) == 24
    assert set(ds.labels) == set(foley.KINDS) and len(foley.KINDS) == 12
    assert not set(foley.KINDS) & set(SYNTH_KINDS)  # another vocabulary of sounds
    info = json.loads((corpus / "corpus.json").read_text())
    assert info["family"] == "foley" and info["generator"] == "qvimclap.data.synth_foley"
    assert check_dataset(ds).ok
    for ref in ds.references:
        meta = sf.info(str(ref))
        assert meta.samplerate in foley.REFERENCE_RATES and meta.channels == 1
        assert 1.5 - 1e-3 <= meta.duration <= 5.0 + 1e-3
    durations = []
    for query in ds.queries:
        meta = sf.info(str(query))
        assert meta.samplerate in foley.IMITATION_RATES and meta.channels == 1
        durations.append(meta.duration)
    assert min(durations) >= foley.MIN_IMITATION_S - 1e-3 and max(durations) <= foley.MAX_IMITATION_S + 1e-3
    assert np.mean(np.array(durations) > 3.0) > 0.5  # most imitations are longer than 3 s


def test_foley_corpus_is_deterministic_for_a_seed(tmp_path):
    a = make_corpus(tmp_path / "a", num_references=3, imitations_per_reference=2, seed=5, family="foley")
    b = make_corpus(tmp_path / "b", num_references=3, imitations_per_reference=2, seed=5, family="foley")
    c = make_corpus(tmp_path / "c", num_references=3, imitations_per_reference=2, seed=6, family="foley")
    assert _digest(a) == _digest(b)
    assert set(_digest(a).values()) - set(_digest(c).values())


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="unknown corpus family 'vimsketch'; choose one of synth, foley"):
        make_corpus(tmp_path / "x", num_references=1, family="vimsketch")
    assert not (tmp_path / "x").exists()


def test_cli_synth_family_foley(tmp_path):
    runner = CliRunner()
    out = tmp_path / "f"
    result = runner.invoke(app, ["synth", str(out), "--refs", "2", "--imitations", "1", "--family", "foley"])
    assert result.exit_code == 0, result.output
    assert "2 references, 2 imitations" in result.output
    assert json.loads((out / "corpus.json").read_text())["family"] == "foley"
    bad = runner.invoke(app, ["synth", str(tmp_path / "g"), "--family", "nope"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: ") and bad.output.count("\n") == 1


@pytest.mark.parametrize("kind", sorted(foley.KINDS))
def test_every_foley_kind_is_usable(kind):
    audio, sr = foley.make_reference(kind, np.random.default_rng(4))
    assert audio.dtype == np.float32 and np.isfinite(audio).all() and not is_silent(audio)
    assert np.abs(audio).max() <= 10 ** (-1 / 20) + 1e-6


def test_listen_tracks_pitch_loudness_and_onsets():
    sr = 22050
    t = np.arange(int(2.0 * sr)) / sr
    tone = np.sin(2 * np.pi * 220 * t) * (t < 1.0)  # 1 s of 220 Hz, then silence
    heard = foley.listen(tone, sr)
    assert heard.duration_s == pytest.approx(2.0, abs=0.02)
    assert np.median(heard.pitch_hz[10:90]) == pytest.approx(220, rel=0.03)
    assert (heard.pitch_hz[110:] == 0).all() and heard.loudness_db[150] < -60
    clicks = np.zeros(len(t))
    for at in (0.3, 0.8, 1.3):
        clicks[int(at * sr) : int(at * sr) + 200] = np.random.default_rng(0).standard_normal(200)
    onsets = foley.listen(clicks, sr).onsets_s
    assert len(onsets) == 3 and np.allclose(onsets, [0.3, 0.8, 1.3], atol=0.03)


def test_the_imitator_chooses_by_what_it_hears():
    def heard(pitch_hz: float, onsets: int, active: float) -> foley.Heard:
        n = 300
        loud = np.where(np.arange(n) < active * n, 0.0, -60.0)
        pitch = np.where(loud > -25, pitch_hz, 0.0)
        return foley.Heard(loud, np.full(n, 1500.0), pitch, np.linspace(0.1, 2.8, onsets))

    def strategies(h: foley.Heard) -> list[str]:
        return [foley.choose_strategy(h, np.random.default_rng(s)) for s in range(200)]

    tonal, clicky, noisy = (
        strategies(heard(300, 1, 1.0)),
        strategies(heard(0, 8, 0.2)),
        strategies(heard(0, 1, 1.0)),
    )
    assert max(set(tonal), key=tonal.count) == "hum" and "whistle" in tonal
    assert max(set(clicky), key=clicky.count) == "beatbox" and "whistle" not in clicky
    assert max(set(noisy), key=noisy.count) == "fricative"


def test_imitations_are_slower_than_the_reference_mostly():
    audio, sr = foley.make_reference("clock", np.random.default_rng(0))
    lengths = [
        len(x) / rate
        for x, rate in (foley.make_imitation(audio, sr, np.random.default_rng(s)) for s in range(6))
    ]
    assert all(foley.MIN_IMITATION_S <= d <= foley.MAX_IMITATION_S for d in lengths)
    assert np.median(lengths) > len(audio) / sr  # lead-in, slower tempo, tail
