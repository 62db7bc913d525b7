"""Targets other than CLAP: parsing target specs, and generation refusing a model outside a CLAP space."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny_audioldm import save_tiny_audioldm
from conftest import tone
from typer.testing import CliRunner

from qvimclap.audio import write_audio
from qvimclap.cli import app
from qvimclap.errors import QvimclapError
from qvimclap.generation import GenerationError, embed_imitation
from qvimclap.models.aligned import AlignedModel
from qvimclap.models.qvim import QvimEncoder
from qvimclap.models.target import is_clap_target, parse_target

AISFX_FP = {"encoder": "aisfx", "space": "aisfx:0123456789ab", "dim": 512}


def _aisfx_aligned(folder: Path) -> Path:
    torch.manual_seed(0)
    model = AlignedModel.from_towers(
        QvimEncoder.from_pretrained("scratch:mn01"),
        None,
        clip_duration_s=1.0,
        clap_source="",
        clap_fingerprint=AISFX_FP,
        target="aisfx",
    )
    model.save_pretrained(folder)
    return folder


def test_target_specs():
    assert parse_target("clap:scratch") == ("clap", "scratch")
    assert parse_target("aisfx") == ("aisfx", "")
    assert parse_target("aisfx:/w/checkpoint.pth") == ("aisfx", "/w/checkpoint.pth")
    assert is_clap_target("clap:models/clap-s") and not is_clap_target("aisfx")
    for bad in ("qvim:scratch:mn04", "scratch", "clap:", "runs/demo"):
        with pytest.raises(QvimclapError, match="not a frozen embedder qvimclap can align into"):
            parse_target(bad)


def test_aligned_config_records_the_target(tmp_path):
    loaded = AlignedModel.from_pretrained(_aisfx_aligned(tmp_path / "m"))
    assert loaded.config.target_spec == "aisfx" and loaded.config.space == "aisfx:0123456789ab"
    assert loaded.embedder().fingerprint()["space"] == "aisfx:0123456789ab"
    old = AlignedModel.from_towers(QvimEncoder.from_pretrained("scratch:mn01"), None, clap_source="scratch")
    assert old.config.target_spec == "clap:scratch"  # folders saved before `target` existed


def test_generation_refuses_a_model_outside_a_clap_space(tmp_path):
    model = AlignedModel.from_pretrained(_aisfx_aligned(tmp_path / "m")).embedder()
    with pytest.raises(GenerationError, match="'aisfx:0123456789ab', not a CLAP space"):
        embed_imitation(tone(220.0, 1.0, 32000), 32000, model)
    ldm = save_tiny_audioldm(tmp_path / "ldm")
    hum = write_audio(tmp_path / "hum.wav", tone(330.0, 0.8, 16000), 16000)
    out = tmp_path / "out.wav"
    result = CliRunner().invoke(
        app, ["generate", str(hum), "--model", str(tmp_path / "m"), "--audioldm", str(ldm), "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "not a CLAP space" in result.output and "--target clap:" in result.output
    assert not out.exists()


def _cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_align_eval_embed_search_with_the_aisfx_target(tmp_path):
    """The whole path in the aisfx space on tiny data: align into it, evaluate there, index a library with
    `embed --encoder aisfx`, search it by imitation through the aligned model."""
    pytest.importorskip("aisfx")
    import json

    from qvimclap.data.synth import make_corpus

    corpus = make_corpus(tmp_path / "c", num_references=6, imitations_per_reference=2, seed=1)
    run = tmp_path / "run"
    tiny = ["--qvim", "scratch:mn01", "--clip-seconds", "0.5", "--epochs", "1", "--batch-size", "4"]
    both = _cli("align", "--data", corpus, "--out", run, "--target", "aisfx", "--clap", "scratch", *tiny)
    assert both.exit_code == 2 and "shorthand for --target clap:scratch" in both.output
    # the towers only (the default view is tests/test_view.py's): no view features are computed
    args = ["align", "--data", corpus, "--out", run, "--target", "aisfx", "--towers-only", "--no-progress"]
    trained = _cli(*args, *tiny)
    assert trained.exit_code == 0, trained.output
    assert "validation MRR target (aisfx)" in trained.output
    config = json.loads((run / "config.json").read_text())
    assert config["target"] == "aisfx" and config["clap_fingerprint"]["encoder"] == "aisfx"
    assert config["target_view"] is None
    assert len(list((corpus / ".qvimclap-cache").glob("*.h5"))) == 1  # the aisfx targets, cached
    report = _cli("eval-retrieval", "--data", corpus, "--model", run, "--space", "target", "--json")
    assert report.exit_code == 0, report.output
    metrics = json.loads(report.output[report.output.index("{") :])
    assert metrics["space"] == "target" and 0 < metrics["metrics"]["mrr"] <= 1
    store, index = tmp_path / "lib.h5", tmp_path / "lib.faiss"
    assert _cli("embed", corpus, "--encoder", "aisfx", "--out", store).exit_code == 0
    assert _cli("index", store, "--out", index).exit_code == 0
    query = next((corpus / "imitations").iterdir())
    found = _cli("search", query, "--index", index, "--encoder", run, "-k", "3", "--json")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output[found.output.index("[") :])
    assert [h["rank"] for h in hits] == [1, 2, 3]
    wrong = _cli("search", query, "--index", index, "--encoder", "clap:scratch")
    assert wrong.exit_code == 2  # a query encoder of another space is refused
