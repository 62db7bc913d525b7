"""The aisfx embedder: equality with the aisfx package's front end and network, safe and strict loading,
the embedder contract, specs, and embed / index / search with ``--encoder aisfx`` end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from qvimclap import api
from qvimclap.cli import app
from qvimclap.cli._app import USER_ERROR_EXIT
from qvimclap.errors import AudioError, CheckpointError, MissingDependencyError
from qvimclap.models import aisfx as aisfx_module
from qvimclap.models.aisfx import (
    AisfxCNN,
    AisfxConfig,
    AisfxEncoder,
    block_starts,
    essentia_mel_bank,
    num_frames,
    packaged_checkpoint,
    pool_blocks,
    read_checkpoint,
    to_blocks,
)
from qvimclap.models.base import AudioEmbedder

DATA_DIR = Path(__file__).parent / "data"
SPEC_MAX = 9.457798957824707
HAS_AISFX = importlib.util.find_spec("aisfx") is not None
# The package's own code is imported only by the tests that need it, to compare with ours.
needs_aisfx = pytest.mark.skipif(not HAS_AISFX, reason="aisfx is not installed (pip install --no-deps aisfx)")


def reference_clip(num_samples: int) -> np.ndarray:
    """The clip of tests/data/make_aisfx_reference.py (same formula, same seed)."""
    t = np.arange(num_samples) / 44_100
    x = 0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t**2))
    x += 0.2 * np.sin(2 * np.pi * 3000 * t) * (t < 0.2)
    x += 0.05 * np.random.default_rng(0).standard_normal(num_samples)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def essentia_reference() -> dict[int, np.ndarray]:
    """The package's own Essentia spectrograms ``[frames, 96]`` (see tests/data/make_aisfx_reference.py)."""
    with np.load(DATA_DIR / "aisfx_essentia.npz") as data:
        return {int(k.split("_")[1]): data[k] for k in data.files}


def random_cnn_state(seed: int = 0, base_channels: int = 64) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cnn = AisfxCNN(base_channels)
        for module in cnn.modules():  # non-trivial BatchNorm statistics, so eval mode is exercised
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return cnn.state_dict()


def write_published_layout(path: Path, state: dict[str, torch.Tensor], **extra: torch.Tensor) -> Path:
    """A file shaped like the published checkpoint: (CrossNet state_dict, {library: (index, classes)})."""
    crossnet = {f"embedding_net.{k}": v for k, v in state.items()}
    crossnet |= {"fc.0.0.weight": torch.zeros(256, 512), "fc.0.0.bias": torch.zeros(256), **extra}
    torch.save((crossnet, {"library": (np.int64(0), np.int64(78))}), path)
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_published_layout(tmp_path_factory.mktemp("aisfx") / "checkpoint.pth", random_cnn_state())


@pytest.fixture(scope="module")
def tiny_encoder() -> AisfxEncoder:
    """The aiSFX pipeline with an 8-channel-wide random CNN (64-d), so forward passes cost little."""
    encoder = AisfxEncoder(AisfxConfig(base_channels=8), source="tiny")
    encoder.cnn.load_state_dict(random_cnn_state(base_channels=8))
    return encoder


@pytest.fixture(scope="module")
def tiny_folder(tiny_encoder: AisfxEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_encoder.save_pretrained(tmp_path_factory.mktemp("aisfx_saved") / "model")


# -- equality with the package ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [110_250, 13_231])
def test_front_end_equals_the_packages_essentia_spectrogram(essentia_reference, num_samples: int) -> None:
    config = AisfxConfig()
    ours = AisfxEncoder(config).front_end(torch.from_numpy(reference_clip(num_samples))).numpy()
    reference = essentia_reference[num_samples] / SPEC_MAX  # aisfx.preprocessing's "original" normalisation
    assert ours.shape == reference.shape == (num_frames(num_samples, config), 96)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-5)


def test_mel_bank_is_essentias_unit_sum_htk_bank() -> None:
    bank = essentia_mel_bank(AisfxConfig()).numpy()
    assert bank.shape == (96, 1025)
    np.testing.assert_allclose(bank.sum(axis=1), 1.0, atol=1e-12)
    # Essentia's first band (measured from MelBands on unit impulses): bins 1 and 2 only.
    assert np.flatnonzero(bank[0]).tolist() == [1, 2]
    np.testing.assert_allclose(bank[0, 1:3], [0.71506381, 0.28493616], atol=1e-6)
    assert np.flatnonzero(bank[95])[[0, -1]].tolist() == [951, 1023]


def test_frames_and_blocks_follow_essentia_and_the_package() -> None:
    drop, keep = AisfxConfig(), AisfxConfig(partial_block="keep")
    assert drop.partial_block == "drop"  # the default: the package's rule
    assert [num_frames(n, drop) for n in (1, 1024, 1025, 2048, 2049, 44_100)] == [2, 2, 3, 3, 4, 45]
    assert block_starts(40, keep) == block_starts(40, drop) == [0]  # one zero-padded block
    assert block_starts(150, keep) == block_starts(150, drop) == [0, 50]
    assert block_starts(151, drop) == [0, 50] and block_starts(151, keep) == [0, 50, 100]
    blocks = to_blocks(torch.ones(151, 96), keep)
    assert blocks.shape == (3, 100, 96) and blocks[2, :51].eq(1).all() and blocks[2, 51:].eq(0).all()


@needs_aisfx
def test_blocking_equals_the_packages_code() -> None:
    from aisfx.preprocessing import blocking, compute_hopSize  # numpy only, runs without the package's deps

    drop = AisfxConfig(partial_block="drop")
    for frames in (99, 100, 101, 150, 160, 290):
        spectrogram = np.random.default_rng(frames).random((frames, 96))
        expected = blocking(spectrogram, 100, compute_hopSize(100, 0.5, spectrogram), True)
        np.testing.assert_array_equal(to_blocks(torch.from_numpy(spectrogram), drop).numpy(), expected)


@needs_aisfx
def test_network_and_clip_embedding_equal_the_packages_code(essentia_reference) -> None:
    from aisfx.models.cnn2d import EmbeddingNet

    encoder = AisfxEncoder.from_pretrained()  # the defaults: mean pooling, the package's blocking
    reference_net = EmbeddingNet("max", 3, 1, 64).eval()  # as aisfx.inference.load_bestModel builds it
    reference_net.load_state_dict(read_checkpoint(packaged_checkpoint()))
    # The package's input: its own Essentia spectrogram, normalised and blocked (109 frames: one block).
    block = torch.from_numpy(essentia_reference[110_250][None, :100] / SPEC_MAX)  # [1, 100, 96]
    with torch.no_grad():
        expected = reference_net(block)
        torch.testing.assert_close(encoder.cnn(block), expected, rtol=1e-5, atol=1e-5)
    # Our whole pipeline from the waveform (front end, blocks, network, pooling) against the package's.
    got = encoder.embed([reference_clip(110_250)])[0]
    np.testing.assert_allclose(got, (expected[0] / expected[0].norm()).numpy(), atol=1e-5)


# -- loading: safe and strict -----------------------------------------------------------------------------


def test_published_layout_loads_strictly_with_the_narrow_allow_list(random_checkpoint: Path) -> None:
    state = read_checkpoint(random_checkpoint)
    assert set(state) == set(AisfxCNN().state_dict())  # prefix stripped, classifier heads dropped
    encoder = AisfxEncoder.from_pretrained(random_checkpoint)
    for key, tensor in random_cnn_state().items():
        torch.testing.assert_close(encoder.cnn.state_dict()[key], tensor)


@needs_aisfx
def test_the_packaged_checkpoint_loads() -> None:
    path = packaged_checkpoint()
    assert path.name == "checkpoint.pth" and path.parent.name == "models"
    encoder = AisfxEncoder.from_pretrained()
    assert encoder.fingerprint()["weights_sha256"].startswith("12970aab7672")


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = random_cnn_state()
    missing = dict(state)
    del missing["conv_block4.bn2.running_var"]
    path = write_published_layout(tmp_path / "missing.pth", missing)
    with pytest.raises(CheckpointError, match=r"missing.pth: not the aiSFX network \(1 missing: conv_block4"):
        AisfxEncoder.from_pretrained(path)
    path = write_published_layout(
        tmp_path / "extra.pth", state, **{"embedding_net.conv_block5.w": torch.ones(1)}
    )
    with pytest.raises(CheckpointError, match=r"1 unexpected: conv_block5.w"):
        AisfxEncoder.from_pretrained(path)
    shaped = dict(state, **{"conv_block1.conv1.weight": torch.zeros(32, 1, 3, 3)})
    with pytest.raises(CheckpointError, match=r"wrong shape: conv_block1.conv1.weight \(32, 1, 3, 3\)"):
        AisfxEncoder.from_pretrained(write_published_layout(tmp_path / "shape.pth", shaped))
    torch.save({"just": "a dict"}, tmp_path / "dict.pth")
    with pytest.raises(CheckpointError, match="dict.pth: holds a dict, not the aiSFX checkpoint"):
        AisfxEncoder.from_pretrained(tmp_path / "dict.pth")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_line_error(random_checkpoint: Path, tmp_path: Path, damage: str) -> None:
    data = random_checkpoint.read_bytes()
    content = {"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 64, "empty": b""}
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(content[damage])
    with pytest.raises(CheckpointError) as info:
        AisfxEncoder.from_pretrained(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint") and "\n" not in message


class _RunsCode:
    """Unpickling this would run ``exec``: a weights-only load must refuse it, not run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_pickle_that_runs_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "checkpoint.pth"
    torch.save(({"conv_block1.conv1.weight": torch.zeros(1)}, _RunsCode(marker)), path)
    with pytest.raises(CheckpointError) as info:
        AisfxEncoder.from_pretrained(path)
    message = str(info.value)
    assert not marker.exists()
    assert message.startswith(f"{path}: refused: unpickling it needs exec,") and "\n" not in message


def test_save_pretrained_round_trip(tiny_encoder: AisfxEncoder, tiny_folder: Path, tmp_path: Path) -> None:
    original, loaded = tiny_encoder, AisfxEncoder.from_pretrained(tiny_folder)
    assert loaded.config == original.config and loaded.embedding_dim == 64
    assert sorted(p.name for p in tiny_folder.iterdir()) == ["config.json", "model.safetensors"]
    clips = [reference_clip(30_000), reference_clip(200_000)]
    np.testing.assert_array_equal(loaded.embed(clips), original.embed(clips))
    a, b = original.fingerprint(), loaded.fingerprint()
    assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "qvim_encoder"}')
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model_type is 'qvim_encoder', expected 'aisfx_encoder'"):
        AisfxEncoder.from_pretrained(bad)
    (bad / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="model_type is None, expected 'aisfx_encoder'"):
        AisfxEncoder.from_pretrained(bad)
    (bad / "config.json").write_text((tiny_folder / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        AisfxEncoder.from_pretrained(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="AisfxEncoder.save_pretrained \\(needs config.json and model"):
        AisfxEncoder.from_pretrained(bad)


# -- the embedder contract --------------------------------------------------------------------------------


def test_embed_contract(tiny_encoder: AisfxEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = tiny_encoder
    assert isinstance(encoder, AudioEmbedder) and encoder.sample_rate == 44_100
    clips = [reference_clip(n) for n in (2_000, 44_100, 250_000)]  # shorter than a block .. several blocks
    vectors = encoder.embed(clips, batch_size=2)
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(clips, batch_size=1), vectors, atol=1e-5)
    monkeypatch.setattr(aisfx_module, "MAX_BLOCKS_PER_PASS", 2)  # long clips' blocks run in several passes
    np.testing.assert_allclose(encoder.embed(clips, batch_size=3), vectors, atol=1e-5)
    blocks = encoder.embed_blocks(clips)
    assert [b.shape[0] for b in blocks] == [1, 1, 3]  # 246 frames: blocks at 0, 50, 100 (partial 150 dropped)
    mean = blocks[2].mean(0)
    np.testing.assert_allclose(vectors[2], mean / np.linalg.norm(mean), atol=1e-5)
    for bad in (np.zeros(0, np.float32), np.array([0.1, np.nan], np.float32), np.zeros((2, 100), np.float32)):
        with pytest.raises(AudioError):
            encoder.embed([bad])


def test_pooling_choices() -> None:
    blocks = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(pool_blocks(blocks, "mean"), torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(pool_blocks(blocks, "max"), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(pool_blocks(blocks, "mean_normalized"), torch.tensor([0.5, 0.5]))
    with pytest.raises(CheckpointError, match="pooling 'median' is not known"):
        AisfxConfig(pooling="median")


# -- specs, the missing package, and the CLI --------------------------------------------------------------


def test_specs() -> None:
    assert api.parse_embedder_spec("aisfx") == ("aisfx", "", "imitation")
    assert api.parse_embedder_spec("aisfx:/x/checkpoint.pth#reference") == (
        "aisfx",
        "/x/checkpoint.pth",
        "reference",
    )
    assert api.canonical_spec("aisfx") == "aisfx" and api.query_spec("aisfx#reference") == "aisfx"


def test_missing_package_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aisfx" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps aisfx"):
        api.load_embedder("aisfx")
    (tmp_path / "lib").mkdir()
    sf.write(tmp_path / "lib" / "a.wav", reference_clip(8_000), 44_100)
    result = CliRunner().invoke(
        app, ["embed", str(tmp_path / "lib"), "--encoder", "aisfx", "--out", str(tmp_path / "x.h5")]
    )
    assert result.exit_code == USER_ERROR_EXIT
    assert result.stderr.strip().startswith("Error: ") and "pip install --no-deps aisfx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.h5").exists()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny, different sounds (44.1 and 16 kHz)."""
    root = tmp_path_factory.mktemp("library")
    t = np.arange(22_050) / 44_100
    sounds = {
        "tone.wav": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp.wav": 0.5 * np.sin(2 * np.pi * (100 * t + 4000 * t**2)),
        "noise.wav": 0.3 * np.random.default_rng(1).standard_normal(t.size),
        "clicks.wav": (np.arange(t.size) % 4410 < 40) * 0.8,
    }
    for name, x in sounds.items():
        sf.write(root / name, x.astype(np.float32), 44_100)
    sf.write(
        root / "low.wav",
        (0.5 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)).astype(np.float32),
        16_000,
    )
    return root


def _cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("spec_kind", ["folder", "package"])
def test_embed_index_search_with_the_aisfx_encoder(
    library: Path, tiny_folder: Path, tmp_path: Path, spec_kind: str
) -> None:
    if spec_kind == "package" and not HAS_AISFX:
        pytest.skip("aisfx is not installed (pip install --no-deps aisfx)")
    spec = "aisfx" if spec_kind == "package" else f"aisfx:{tiny_folder}"
    store, index = tmp_path / "x.h5", tmp_path / "x.faiss"
    code, out, err = _cli("embed", library, "--encoder", spec, "--out", store, "--no-progress")
    assert code == 0, err
    assert "added 5, already stored 0, unusable 0 (of 5 files)" in out
    code, out, err = _cli("index", store, "--out", index)
    assert code == 0 and f"dim {512 if spec == 'aisfx' else 64}" in out, err
    # The query encoder recorded with the index, or named explicitly: a library sound finds itself first.
    # (The real network costs ~0.1-0.5 s per 2.3 s block on 2 cores: the packaged weights run only once.)
    for extra in [["--encoder", spec]] if spec == "aisfx" else [[], ["--encoder", spec]]:
        code, out, err = _cli("search", library / "chirp.wav", "--index", index, "-k", "2", *extra)
        assert code == 0, err
        assert out.strip().splitlines()[1].split()[2] == "chirp.wav"
    code, _, err = _cli("search", library / "chirp.wav", "--index", index, "--encoder", "qvim:scratch:mn04")
    assert code == USER_ERROR_EXIT and "vector space" in err
    if spec != "aisfx":
        vector = api.embed_file(library / "low.wav", spec)
        assert vector.shape == (64,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
