"""``qvimclap synth`` and ``qvimclap data check`` end to end through typer's runner."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf
from conftest import tone
from typer.testing import CliRunner

from qvimclap.cli import app

runner = CliRunner()


def test_help_lists_the_data_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "synth" in result.output and "data" in result.output
    result = runner.invoke(app, ["data", "check", "--help"])
    assert result.exit_code == 0 and "--json" in result.output


def test_synth_then_check(tmp_path):
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["synth", str(out), "--refs", "3", "--imitations", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "3 references, 6 imitations" in result.output
    assert (out / "pairs.csv").is_file() and len(list((out / "imitations").iterdir())) == 6

    again = runner.invoke(app, ["synth", str(out), "--refs", "3"])
    assert again.exit_code == 2
    assert again.output.startswith("Error: ") and "--force" in again.output and again.output.count("\n") == 1

    forced = runner.invoke(app, ["synth", str(out), "--refs", "2", "--imitations", "1", "--force"])
    assert forced.exit_code == 0, forced.output

    check = runner.invoke(app, ["data", "check", str(out)])
    assert check.exit_code == 0, check.output
    assert "references 2   queries 2   pairs 2" in check.output and "OK" in check.output

    as_json = runner.invoke(app, ["data", "check", str(out), "--json"])
    report = json.loads(as_json.output)
    assert as_json.exit_code == 0 and report["ok"] is True and report["layout"] == "pairs"
    assert report["num_references"] == 2 and report["problems"] == []


def test_check_exits_non_zero_and_lists_unusable_files(tmp_path):
    sf.write(str(tmp_path / "ref.wav"), tone(440, 0.2, 16000), 16000)
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "pairs.csv").write_text(
        "imitation,reference\nquiet.wav,ref.wav\ngone.wav,ref.wav\n", encoding="utf-8"
    )
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert "1 missing, 1 silent" in result.output
    assert "gone.wav" in result.output and "quiet.wav" in result.output

    report = json.loads(runner.invoke(app, ["data", "check", str(tmp_path), "--json"]).output)
    assert report["ok"] is False
    assert sorted(p["kind"] for p in report["problems"]) == ["missing", "silent"]


def test_check_of_a_non_dataset_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert (
        result.output.startswith("Error: ") and "nowhere" in result.output and result.output.count("\n") == 1
    )
