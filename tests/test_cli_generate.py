"""``qvimclap generate`` end to end through typer's runner, on a tiny random AudioLDM folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _tiny_audioldm import TinyEmbedder, save_tiny_audioldm
from conftest import tone
from typer.testing import CliRunner

from qvimclap.audio import write_audio
from qvimclap.cli import app
from qvimclap.cli import generate as cli_generate
from qvimclap.generation import GenerationConfig, generate_from_imitation, load_audioldm

FAST_ARGS = ["--duration", "0.5", "--steps", "3", "--seed", "1"]


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_audioldm(tmp_path_factory.mktemp("ldm") / "tiny-audioldm")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QVIMCLAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> TinyEmbedder:
    """``--model clap:tiny`` resolves to a TinyEmbedder (the real specs are tested once, below)."""
    model = TinyEmbedder()
    monkeypatch.setattr(cli_generate, "_load_embedder", lambda spec: model)
    return model


@pytest.fixture
def imitation(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "hum.wav", tone(330.0, 0.8, 16000) + tone(990.0, 0.8, 16000, 0.1), 16000)


def _run(*args: str | Path):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def test_generate_end_to_end(
    tiny_model: TinyEmbedder, imitation: Path, ldm_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "made.wav"
    result = _run(
        imitation, "--model", "clap:tiny", "--audioldm", ldm_dir, "--out", out,
        "--candidates", "2", "--keep-all", "--plot", *FAST_ARGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 16000 and audio.shape == (8000,)
    second, _ = sf.read(out.with_name("made.rank2.wav"), dtype="float32")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["made.png", "made.rank2.wav", "made.wav"]

    # The written files are the API's candidates, best first, and the printed scores are theirs.
    ldm = load_audioldm(ldm_dir, cache_dir=tmp_path / "cache")
    config = GenerationConfig(duration_s=0.5, num_steps=3, seed=1, num_candidates=2)
    waveform = sf.read(imitation, dtype="float32")[0]
    expected = generate_from_imitation(waveform, 16000, tiny_model, ldm, config, rerank_embedder=tiny_model)
    np.testing.assert_allclose(audio, expected.waveforms[0], atol=1e-6)
    np.testing.assert_allclose(second, expected.waveforms[1], atol=1e-6)
    lines = result.output.splitlines()
    rows = lines[lines.index("rank  candidate  score   file") + 1 :][:2]
    assert [row.split()[2] for row in rows] == [f"{score:.3f}" for score in expected.scores]
    assert [int(row.split()[1]) for row in rows] == expected.candidate_indices.tolist()


def test_default_output_name_and_no_overwrite(
    tiny_model: TinyEmbedder, imitation: Path, ldm_dir: Path
) -> None:
    first = _run(imitation, "--model", "clap:tiny", "--audioldm", ldm_dir, "--candidates", "1", *FAST_ARGS)
    assert first.exit_code == 0, first.output
    out = Path("hum_generated.wav")
    before = out.read_bytes()
    again = _run(imitation, "--model", "clap:tiny", "--audioldm", ldm_dir, "--candidates", "1", "--seed", "7")
    assert again.exit_code == 2
    assert "hum_generated.wav already exists; pass --force" in again.output
    assert out.read_bytes() == before
    forced = _run(
        imitation, "--model", "clap:tiny", "--audioldm", ldm_dir, "--candidates", "1",
        "--duration", "0.5", "--steps", "3", "--seed", "7", "--force",
    )  # fmt: skip
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes() != before


def test_silent_imitation_writes_nothing(tiny_model: TinyEmbedder, ldm_dir: Path, tmp_path: Path) -> None:
    silent = write_audio(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    result = _run(silent, "--model", "clap:tiny", "--audioldm", ldm_dir, "--out", tmp_path / "o" / "x.wav")
    assert result.exit_code == 2
    assert "Error:" in result.output and "silence.wav: audio is silent" in result.output
    assert not (tmp_path / "o").exists()


def test_unreadable_imitation_writes_nothing(tiny_model: TinyEmbedder, ldm_dir: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "broken.wav"
    garbage.write_bytes(b"RIFF but not really a wave file")
    result = _run(garbage, "--model", "clap:tiny", "--audioldm", ldm_dir, "--out", tmp_path / "x.wav")
    assert result.exit_code == 2
    assert "broken.wav: not a readable audio file" in result.output
    assert not (tmp_path / "x.wav").exists()


def test_missing_audioldm_says_where_to_put_it(
    tiny_model: TinyEmbedder, imitation: Path, tmp_path: Path
) -> None:
    result = _run(imitation, "--model", "clap:tiny", "--audioldm", tmp_path / "models" / "audioldm-s-full-v2")
    assert result.exit_code == 2
    assert "AudioLDM weights not found" in result.output and "hf download" in result.output
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == ["hum.wav"]  # only the imitation itself


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "0"], "duration 0.0 s cannot be generated"),
        (["--scheduler", "magic"], "scheduler 'magic' is unknown"),
        (["--text-weight", "2", "--text", "a dog"], "text weight 2.0 must be in [0, 1]"),
        (["--out", "x.mp3"], "give a .wav file name"),
    ],
)
def test_bad_options_are_one_line_errors(
    tiny_model: TinyEmbedder, imitation: Path, ldm_dir: Path, args: list[str], message: str
) -> None:
    result = _run(imitation, "--model", "clap:tiny", "--audioldm", ldm_dir, "--steps", "2", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_text_blend_from_the_cli(tiny_model: TinyEmbedder, imitation: Path, ldm_dir: Path) -> None:
    plain = _run(imitation, "--model", "m", "--audioldm", ldm_dir, "--out", "a.wav", "-n", "1", *FAST_ARGS)
    blended = _run(
        imitation, "--model", "m", "--audioldm", ldm_dir, "--out", "b.wav", "-n", "1", *FAST_ARGS,
        "--text", "a dog barking", "--text-weight", "0.5",
    )  # fmt: skip
    assert plain.exit_code == 0 and blended.exit_code == 0, blended.output
    assert not np.array_equal(sf.read("a.wav")[0], sf.read("b.wav")[0])


def test_retrieve_prints_nearest_sounds(
    tiny_model: TinyEmbedder, imitation: Path, ldm_dir: Path, tmp_path: Path
) -> None:
    from qvimclap.index import VectorIndex

    clips = {
        "low": tone(330.0, 0.8, 16000),
        "high": tone(4000.0, 0.8, 16000),
        "mid": tone(1500.0, 0.8, 16000),
    }
    index = VectorIndex.build(
        tiny_model.embed(list(clips.values())),
        list(clips),
        fingerprint=tiny_model.fingerprint(),
        paths=[f"/sounds/{name}.wav" for name in clips],
    )
    index.save(tmp_path / "sounds.faiss")
    result = _run(
        imitation, "--model", "m", "--audioldm", ldm_dir, "-n", "1", *FAST_ARGS,
        "--retrieve", tmp_path / "sounds.faiss", "-k", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("rank  score   id  path") + 1
    assert lines[start].split()[2:] == ["low", "/sounds/low.wav"]  # the 330 Hz hum is nearest the 330 Hz tone
    assert len([ln for ln in lines[start : start + 3] if ln.strip()[:1].isdigit()]) == 2


def test_retrieve_from_another_space_is_refused(
    tiny_model: TinyEmbedder, imitation: Path, ldm_dir: Path, tmp_path: Path
) -> None:
    from qvimclap.index import VectorIndex

    other = TinyEmbedder(space="clap:elsewhere")
    VectorIndex.build(other.embed([tone(300.0, 0.5, 16000)]), ["a"], fingerprint=other.fingerprint()).save(
        tmp_path / "other.faiss"
    )
    result = _run(imitation, "--model", "m", "--audioldm", ldm_dir, "--retrieve", tmp_path / "other.faiss")
    assert result.exit_code == 2
    assert "space" in result.output and "clap:elsewhere" in result.output
    assert not Path("hum_generated.wav").exists()


def test_aligned_model_without_a_recorded_clap_needs_clap_option() -> None:
    class Unrecorded(TinyEmbedder):
        def fingerprint(self) -> dict:
            return {**super().fingerprint(), "encoder": "aligned"}

    with pytest.raises(Exception, match="pass --clap SPEC"):
        cli_generate._rerank_embedder(Unrecorded(), None, 3)
    assert cli_generate._rerank_embedder(Unrecorded(), None, 1) is None


def test_aligned_model_reranks_with_its_recorded_clap(monkeypatch: pytest.MonkeyPatch) -> None:
    class Aligned(TinyEmbedder):
        def fingerprint(self) -> dict:
            return {**super().fingerprint(), "encoder": "aligned", "clap_source": "/models/clap-s-full"}

    asked = []
    monkeypatch.setattr(cli_generate, "_load_embedder", lambda spec: asked.append(spec) or TinyEmbedder())
    cli_generate._rerank_embedder(Aligned(), None, 3)
    cli_generate._rerank_embedder(Aligned(), "clap:scratch", 3)
    assert asked == ["clap:/models/clap-s-full", "clap:scratch"]


def test_with_the_real_scratch_clap(imitation: Path, ldm_dir: Path, tmp_path: Path) -> None:
    """No monkeypatching: ``--model clap:scratch`` through qvimclap.api, re-ranked by that CLAP."""
    result = _run(
        imitation, "--model", "clap:scratch", "--audioldm", ldm_dir, "--out", "s.wav", "-n", "2", *FAST_ARGS
    )
    assert result.exit_code == 0, result.output
    scores = [float(line.split()[2]) for line in result.output.splitlines()[-2:]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert sf.info("s.wav").samplerate == 16000 and sf.info("s.wav").frames == 8000
