"""The prepared dataset: clips decoded once into a memory-mapped cache, targets embedded once, both keyed by
fingerprints and file identity; one rule for where the cache lives; a killed prepare resumes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

import qvimclap.prepared as prepared_module
from qvimclap.audio import load_audio
from qvimclap.data.synth import make_corpus
from qvimclap.prepared import cache_dir_for, prepare_dataset


class CountingTarget:
    """A frozen stand-in embedder that counts the clips it embeds."""

    sample_rate = 16000
    embedding_dim = 8

    def __init__(self) -> None:
        self.embedded = 0

    def fingerprint(self) -> dict:
        return {"encoder": "clap", "model": "counting", "dim": 8, "space": "clap:counting"}

    def embed(self, waveforms, *, batch_size: int = 16) -> np.ndarray:
        self.embedded += len(waveforms)
        x = np.stack([[np.abs(w).mean() + k for k in range(8)] for w in waveforms]).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "c", num_references=4, imitations_per_reference=2, seed=5)


def test_clips_are_decoded_once_and_memory_mapped(corpus):
    target = CountingTarget()
    first = prepare_dataset(corpus, target=target, max_duration_s=10.0)
    assert first.cache_dir == corpus / ".qvimclap-cache" and target.embedded == 4
    clips = first.query_clips()
    assert isinstance(clips[0], np.memmap) and clips[0].dtype == np.float32
    expected = load_audio(first.dataset.queries[0], 32000, max_duration_s=10.0, allow_silent=True)
    np.testing.assert_array_equal(np.asarray(clips[0]), expected)  # float32: exactly what decoding gives
    again = prepare_dataset(corpus, target=target)
    assert target.embedded == 4 and again.query_files == first.query_files
    np.testing.assert_array_equal(again.targets, first.targets)


def test_a_changed_file_is_read_again_never_served_stale(corpus):
    target = CountingTarget()
    before = prepare_dataset(corpus, target=target)
    reference = before.dataset.references[0]
    audio, rate = sf.read(reference, dtype="float32")
    sf.write(reference, 0.25 * audio, rate)
    os.utime(reference, ns=(1, 1))  # a different identity even on a coarse clock
    after = prepare_dataset(corpus, target=target)
    assert target.embedded == 5  # only the changed reference was embedded again
    assert after.reference_files[0] != before.reference_files[0]
    assert after.reference_files[1:] == before.reference_files[1:]
    np.testing.assert_allclose(
        np.asarray(after.reference_clips()[0]), 0.25 * np.asarray(before.reference_clips()[0]), atol=1e-4
    )
    assert not np.allclose(after.targets[0], before.targets[0])


def test_a_killed_prepare_resumes_where_it_stopped(corpus, monkeypatch):
    import qvimclap.audio

    real = qvimclap.audio.load_audio
    calls, done_once = [], False

    def dies_on_the_fifth(*args, **kwargs):
        nonlocal done_once
        calls.append(args[0])
        if len(calls) == 5 and not done_once:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(qvimclap.audio, "load_audio", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(corpus)
    done_once = True
    folder = next((corpus / ".qvimclap-cache").glob("audio-*"))
    assert len(list(folder.glob("*.npy"))) == 4 and not list(folder.glob(".*"))  # no half-written file
    calls.clear()
    done = prepare_dataset(corpus)
    assert len(calls) == 12 - 4  # 8 imitations + 4 references, minus the 4 already decoded
    assert all(f.is_file() for f in done.query_files + done.reference_files)


def test_one_rule_for_where_the_cache_lives(corpus, tmp_path, monkeypatch):
    assert cache_dir_for(corpus) == corpus / ".qvimclap-cache"
    assert cache_dir_for(corpus, tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(prepared_module.os, "access", lambda path, mode: False)  # a read-only data folder
    elsewhere = cache_dir_for(corpus)
    assert elsewhere.parent == tmp_path / "xdg" / "qvimclap" / "datasets" and elsewhere.name.startswith("c-")
    assert cache_dir_for(str(corpus) + "/") == elsewhere  # the same folder however it is spelled


def test_the_cli_prepares_and_a_second_run_reuses_it(corpus):
    from typer.testing import CliRunner

    from qvimclap.cli import app

    args = ["prepare", "--data", str(corpus), "--no-target", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "8 imitations and 4 references decoded, no targets" in result.output
    assert len(list(next((corpus / ".qvimclap-cache").glob("audio-*")).glob("*.npy"))) == 12


def test_a_listed_file_that_is_gone_is_one_line_and_caches_nothing(corpus):
    from typer.testing import CliRunner

    from qvimclap.cli import app
    from qvimclap.data import open_dataset

    gone = open_dataset(corpus).queries[1]
    gone.unlink()
    for args in (
        ["prepare", "--data", str(corpus), "--no-target", "--no-progress"],
        ["align", "--data", str(corpus), "--out", str(corpus.parent / "run"), "--epochs", "1"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"{gone}: listed by the dataset but not found" in result.output
        assert isinstance(result.exception, SystemExit)  # a clean exit, not an exception
        assert not (corpus / ".qvimclap-cache").exists()
    assert not (corpus.parent / "run").exists()
