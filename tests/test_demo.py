"""The main job on the embedded default, shrunk: every stage runs and its outputs are usable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _tiny_audioldm import save_tiny_audioldm
from typer.testing import CliRunner

from qvimclap.cli import app
from qvimclap.cli.demo import format_demo
from qvimclap.demo import default_demo_target, run_demo
from qvimclap.generation import GenerationError

TINY = dict(qvim="scratch:mn01", clip_duration_s=0.5, epochs=1, batch_size=4, val_fraction=0.3)


def test_demo_runs_every_stage_and_outputs_are_usable(tmp_path):
    from qvimclap import api
    from qvimclap.data import open_dataset, split_by_reference

    result = run_demo(
        tmp_path / "demo",
        num_references=14,
        imitations_per_reference=2,
        align_overrides=TINY,
        target="clap:scratch",
        audioldm=save_tiny_audioldm(tmp_path / "tiny-audioldm"),
        progress=False,
    )
    assert (result.model_dir / "config.json").is_file()
    _, val = split_by_reference(open_dataset(result.corpus_dir), val_fraction=0.3, seed=0)
    assert 3 <= len(val.references) <= 5
    assert set(result.reports) == {"target", "qvim"} and result.target == "clap:scratch"
    for report in result.reports.values():  # evaluated on the held-out references only, and says so
        assert report.num_references == len(val.references) and report.split == "val"
        assert report.num_queries == 2 * len(val.references)
        assert 0.0 < report.metrics["mrr"] <= 1.0
        assert report.chance["mrr"] == np.mean(1.0 / np.arange(1, len(val.references) + 1))
    assert result.query_path in val.queries
    with api.open_store(result.store_path) as store:
        assert len(store) == 14
        assert store.embedder_spec == "clap:scratch"
    # The library was filled from the training targets, and it is exactly what `embed` writes: embedding the
    # corpus into it again finds every reference stored under the same fingerprint and adds nothing.
    report = api.embed_dataset(result.corpus_dir, "clap:scratch", result.store_path, progress=False)
    assert (report.num_added, report.num_skipped) == (0, 14)
    first = open_dataset(result.corpus_dir).references[0]
    with api.open_store(result.store_path) as store:
        stored = store.get([first.relative_to(result.corpus_dir).as_posix()])[0]
    np.testing.assert_allclose(stored, api.embed_file(first, "clap:scratch"), atol=1e-5)
    assert len(result.hits) == 5 and result.num_indexed == 14
    assert 1 <= result.true_rank <= 14
    assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    audio, sample_rate = sf.read(result.generated_path)
    assert sample_rate == 16000 and abs(len(audio) / sample_rate - 5.0) < 0.05
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert set(result.timings_s) == {"synth", "align", "evaluate", "index+search", "generate"}
    printed = format_demo(result)
    for report in result.reports.values():  # both metric tables, with chance beside each value
        assert f"| mrr | {report.metrics['mrr']:.4f} | {report.chance['mrr']:.4f} |" in printed
    assert f"found at rank {result.true_rank} of 14" in printed
    assert str(result.generated_path) in printed
    assert "training: best epoch 1 of 1\n" in printed and "too busy" not in printed  # all its epochs ran
    # a time budget that ran out in the first epoch is said, with what it means for the scores
    rushed = format_demo(dataclasses.replace(result, stopped="the time budget of 4.0 min ran out"))
    assert "training: best epoch 1 of 1; stopped: the time budget of 4.0 min ran out\n" in rushed
    assert "a first epoch's model, near chance: the machine was too busy or slow" in rushed


def test_demo_cli_refuses_an_existing_folder(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in Path(out).iterdir()) == ["keep.txt"]


def test_demo_refuses_a_missing_audioldm_folder_before_any_work(tmp_path):
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(tmp_path / "demo"), "--audioldm", str(tmp_path / "nowhere"), "--no-progress"],
    )
    assert result.exit_code == 2
    assert "AudioLDM weights not found" in result.output and "hf download" in result.output
    assert not (tmp_path / "demo").exists()


def test_demo_aligns_into_aisfx_when_it_is_installed(monkeypatch):
    import importlib.util

    installed = importlib.util.find_spec("aisfx") is not None
    assert default_demo_target() == ("aisfx" if installed else "clap:scratch")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_demo_target() == "clap:scratch"


def test_demo_refuses_to_generate_from_a_space_that_is_not_clap(tmp_path):
    with pytest.raises(GenerationError, match="--audioldm needs a CLAP target"):
        run_demo(tmp_path / "demo", target="aisfx", audioldm=tmp_path / "ldm", progress=False)
    assert not (tmp_path / "demo").exists()


def test_demo_into_aisfx_indexes_and_searches_that_space(tmp_path):
    pytest.importorskip("aisfx")
    from qvimclap import api

    result = run_demo(
        tmp_path / "demo", num_references=12, imitations_per_reference=2, align_overrides=TINY, progress=False
    )
    assert result.target == "aisfx" and set(result.reports) == {"target", "qvim"}
    with api.open_store(result.store_path) as store:
        assert store.embedder_spec == "aisfx" and store.fingerprint["space"].startswith("aisfx:")
    assert len(result.hit_kinds) == 5 and result.true_kind in result.query_path.name
    printed = format_demo(result)
    assert "target space: aisfx (the pretrained aiSFX" in printed
    assert f"found at rank {result.true_rank} of 12" in printed
    assert f"are of the imitated kind ({result.true_kind})" in printed


def test_demo_refuses_a_bad_target_before_making_the_corpus(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--target", "bogus", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "target 'bogus' is not a frozen embedder" in result.output
    assert not out.exists()
