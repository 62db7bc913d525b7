"""Alignment presets: shipped JSON files, validated, resolved as defaults < preset < explicit options."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qvimclap.cli import app
from qvimclap.errors import QvimclapError
from qvimclap.train import presets
from qvimclap.train.config import AlignConfig
from qvimclap.train.losses import LossConfig
from qvimclap.train.presets import load_preset, preset_names, resolve_align_config


def test_the_shipped_presets_load_and_demo_cpu_is_the_defaults():
    assert {"demo-cpu", "qvim-baseline", "clap-align"} <= set(preset_names())
    for name in preset_names():
        assert load_preset(name)["description"]
    demo = resolve_align_config(data="d", out="o", preset="demo-cpu")
    assert demo == AlignConfig(data="d", out="o", preset="demo-cpu")


def test_qvim_baseline_is_the_published_recipe_and_needs_its_weights():
    with pytest.raises(
        QvimclapError, match=r"preset 'qvim-baseline' needs --qvim PATH, the EfficientAT mn10_as"
    ):
        resolve_align_config(data="d", out="o", preset="qvim-baseline")
    config = resolve_align_config(
        data="d", out="o", preset="qvim-baseline", overrides={"qvim": "w/mn10_as.pt"}
    )
    assert (config.qvim, config.clip_duration_s, config.batch_size, config.epochs) == (
        "w/mn10_as.pt",
        10.0,
        16,
        15,
    )
    assert config.lr == 3e-4 and config.lr * config.min_lr_ratio == pytest.approx(1e-4)
    assert not config.shared_towers and config.time_mask_fraction == 0.2 and config.speed_perturb == 0.0
    loss = config.loss_config
    assert loss.temperature == 0.07 and not loss.symmetric
    assert (loss.imitation_clap, loss.reference_clap, loss.imitation_reference) == (0.0, 0.0, 1.0)


def test_explicit_options_override_the_preset_one_by_one():
    config = resolve_align_config(
        data="d",
        out="o",
        preset="qvim-baseline",
        overrides={"qvim": "scratch:mn01", "lr": 1e-3, "loss": {"temperature": 0.1}},
    )
    assert config.lr == 1e-3 and config.batch_size == 16  # given / kept from the preset
    assert config.loss_config.temperature == 0.1 and config.loss_config.imitation_clap == 0.0
    assert config.preset == "qvim-baseline"


def test_unknown_names_and_keys_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(QvimclapError, match=r"preset 'nope' is not known; use one of clap-align, demo-cpu"):
        resolve_align_config(data="d", out="o", preset="nope")
    with pytest.raises(QvimclapError, match=r"unknown keys \['learning_rate'\]"):
        resolve_align_config(data="d", out="o", overrides={"learning_rate": 1.0})
    (tmp_path / "typo.json").write_text(json.dumps({"description": "x", "settings": {"epoch": 3}}))
    (tmp_path / "loss-typo.json").write_text(json.dumps({"settings": {"loss": {"temp": 3}}}))
    (tmp_path / "sets-out.json").write_text(json.dumps({"settings": {"out": "x"}}))
    (tmp_path / "extra.json").write_text(json.dumps({"setting": {}}))
    (tmp_path / "broken.json").write_text("{")
    monkeypatch.setattr(presets, "preset_folder", lambda: tmp_path)
    for name, message in [
        ("typo", r"preset 'typo' has unknown keys \['epoch'\]"),
        ("loss-typo", r"preset 'loss-typo' loss has unknown keys \['temp'\]"),
        ("sets-out", r"may not set \['out'\]"),
        ("extra", r"unknown keys \['setting'\]"),
        ("broken", r"not valid JSON"),
    ]:
        with pytest.raises(QvimclapError, match=message):
            load_preset(name)


def test_cli_resolves_the_preset_and_records_it(tmp_path, monkeypatch):
    import qvimclap.train.align as align_module

    seen = {}

    def capture(config, **kwargs):
        seen["config"] = config

    monkeypatch.setattr(align_module, "train_alignment", capture)
    runner = CliRunner()
    args = ["align", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    result = runner.invoke(
        app, [*args, "--preset", "qvim-baseline", "--qvim", "scratch:mn01", "--epochs", "2"]
    )
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.preset, config.epochs, config.batch_size, config.qvim) == (
        "qvim-baseline",
        2,
        16,
        "scratch:mn01",
    )
    assert not config.loss_config.symmetric
    result = runner.invoke(app, [*args, "--no-center", "--seed", "3"])  # no preset: the defaults
    assert result.exit_code == 0, result.output
    loss = {**LossConfig().to_dict(), "center": False}
    assert seen["config"] == AlignConfig(data=str(tmp_path), out=str(tmp_path / "r"), seed=3, loss=loss)
    assert seen["config"].random_pad and seen["config"].loss_config.target_negatives == "all"
    result = runner.invoke(app, [*args, "--target-negatives", "batch", "--pad-at-end"])
    assert result.exit_code == 0, result.output
    assert not seen["config"].random_pad and seen["config"].loss_config.target_negatives == "batch"
    assert seen["config"].loss_config.imitation_kind == 1.0
    result = runner.invoke(app, [*args, "--w-imitation-kind", "0.5"])
    assert result.exit_code == 0 and seen["config"].loss_config.imitation_kind == 0.5, result.output
    baseline = resolve_align_config(data="d", out="o", preset="qvim-baseline", overrides={"qvim": "m.pt"})
    assert not baseline.random_pad
    for bad, message in [
        (["--preset", "nope"], "Error: preset 'nope' is not known"),
        (["--preset", "clap-align", "--qvim", "x.pt"], "Error: preset 'clap-align' needs --clap PATH"),
    ]:
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert result.output.startswith(message), result.output
