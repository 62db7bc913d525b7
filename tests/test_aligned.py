"""The aligned model: save/load round trip, the embedder contract, fingerprints."""

import json

import numpy as np
import pytest
import torch

from qvimclap.errors import CheckpointError
from qvimclap.models.aligned import DEFAULT_LONG_INPUT, AlignedConfig, AlignedModel, is_aligned_model_dir
from qvimclap.models.base import AudioEmbedder
from qvimclap.models.qvim import QvimEncoder
from qvimclap.models.windows import LONG_INPUT_POLICIES

CLAP_FP = {"encoder": "clap", "space": "clap:0123456789ab", "dim": 512}


def tiny_model(*, shared: bool = True, head: str = "linear") -> AlignedModel:
    imitation = QvimEncoder.from_pretrained("scratch:mn01")
    reference = None if shared else QvimEncoder.from_pretrained("scratch:mn01")
    torch.manual_seed(0)
    return AlignedModel.from_towers(
        imitation, reference, head=head, clip_duration_s=1.0, clap_fingerprint=CLAP_FP
    ).eval()


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 32000, 40000)]


@pytest.mark.parametrize(("shared", "head"), [(True, "linear"), (False, "mlp")])
def test_round_trip_gives_identical_embeddings(tmp_path, clips, shared, head):
    model = tiny_model(shared=shared, head=head)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert is_aligned_model_dir(tmp_path / "m")
    loaded = AlignedModel.from_pretrained(tmp_path / "m")
    for tower in ("imitation", "reference"):
        a = model.embedder(tower).embed(clips)
        b = loaded.embedder(tower).embed(clips)
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert model.embedder(tower).fingerprint() == loaded.embedder(tower).fingerprint()
    assert loaded.config == model.config


def test_embedder_contract_and_fingerprint(clips):
    model = tiny_model(shared=False)
    embedder = model.embedder("imitation")
    assert isinstance(embedder, AudioEmbedder)
    assert embedder.sample_rate == 32000 and embedder.embedding_dim == 512
    out = embedder.embed(clips, batch_size=2)
    assert out.shape == (3, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([embedder.embed([c]) for c in clips])
    np.testing.assert_allclose(out, single, atol=1e-5)  # batching does not change results
    fp = embedder.fingerprint()
    assert fp["encoder"] == "aligned" and fp["dim"] == 512 and fp["space"] == CLAP_FP["space"]
    assert fp["model"] == "mn01+linear" and fp["preprocessing"]["clip_duration_s"] == 1.0
    # separate towers have different weights, hence different fingerprints, but the same space
    other = model.embedder("reference").fingerprint()
    assert other["weights_sha256"] != fp["weights_sha256"] and other["space"] == fp["space"]


def test_forward_shared_towers_matches_encode():
    model = tiny_model(shared=True)
    x = 0.1 * torch.randn(2, 32000)
    y = 0.1 * torch.randn(2, 32000)
    with torch.no_grad():
        im, ref = model(x, y)
        np.testing.assert_allclose(im, model.encode(x, "imitation"), atol=1e-5)
        np.testing.assert_allclose(ref, model.encode(y, "reference"), atol=1e-5)
    assert model(x)[1] is None


def test_parameter_groups_cover_trainable_parameters():
    model = tiny_model(shared=False)
    groups = model.parameter_groups()
    assert set(groups) == {"head", "imitation_tower", "reference_tower"}
    grouped = {id(p) for params in groups.values() for p in params}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    assert not any(p.requires_grad for p in model.imitation_tower.mn.classifier.parameters())


def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not an aligned model folder"):
        AlignedModel.from_pretrained(tmp_path)
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["surprise"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown keys"):
        AlignedModel.from_pretrained(tmp_path / "m")
    config.pop("surprise")
    config["model_type"] = "qvim_encoder"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type"):
        AlignedModel.from_pretrained(tmp_path / "m")
    assert not is_aligned_model_dir(tmp_path / "m")


def test_config_round_trips():
    model = tiny_model(shared=False, head="mlp")
    assert AlignedConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config


# -- inputs longer than the clip length ---------------------------------------------------------------------


def test_window_starts_cover_the_input_and_end_at_its_last_sample():
    from qvimclap.models.windows import split_windows, window_starts

    np.testing.assert_array_equal(window_starts(100, 40, 20), [0, 20, 40, 60])
    np.testing.assert_array_equal(window_starts(50, 40, 30), [0, 10])  # the last window ends at sample 50
    np.testing.assert_array_equal(window_starts(40, 40, 20), [0])
    np.testing.assert_array_equal(window_starts(7, 40, 20), [0])
    x = np.arange(100, dtype=np.float32)
    windows = split_windows(x, 40, 20)
    assert windows.shape == (4, 40)
    np.testing.assert_array_equal(windows[1], np.arange(20, 60))
    np.testing.assert_array_equal(windows[-1], np.arange(60, 100))
    short = split_windows(np.ones(7, np.float32), 40, 20)  # one window, zero-padded at the end
    assert short.shape == (1, 40) and short[0, :7].sum() == 7 and not short[0, 7:].any()


def test_pool_windows_mean_and_max_of_unit_vectors():
    from qvimclap.models.windows import pool_windows

    v = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(pool_windows(v, "mean"), np.array([1.0, 0.6, 0.8]) / np.sqrt(2.0), atol=1e-6)
    np.testing.assert_allclose(pool_windows(v, "max"), np.array([1.0, 0.6, 0.8]) / np.sqrt(2.0), atol=1e-6)
    w = np.array([[0.6, -0.8], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(pool_windows(w, "mean"), np.array([0.6, 0.2]) / np.hypot(0.6, 0.2), atol=1e-6)
    np.testing.assert_allclose(pool_windows(w, "max"), np.array([0.6, 1.0]) / np.hypot(0.6, 1.0), atol=1e-6)
    np.testing.assert_array_equal(pool_windows(w[:1], "mean"), w[0])
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        pool_windows(w, "median")


def _with_policy(model: AlignedModel, long_input: str, window_hop_s: float | None = None) -> AlignedModel:
    config = AlignedConfig.from_dict({**model.config.to_dict(), "long_input": long_input})
    config = AlignedConfig.from_dict({**config.to_dict(), "window_hop_s": window_hop_s})
    other = AlignedModel(config).eval()
    other.load_state_dict(model.state_dict())
    return other


CLIP = 8000  # samples of the model below: 0.25 s at 32 kHz, so that the tests stay fast


@pytest.fixture(scope="module")
def sensitive_model() -> AlignedModel:
    """A tiny model of 0.25 s clips whose outputs depend on its input: BatchNorm statistics measured on tones
    and noise.

    With the initial statistics (mean 0, variance 1) a random mn maps every clip to nearly the same vector
    (cosines of 1 - 1e-7), too close to tell a changed input from round-off.
    """
    torch.manual_seed(0)
    model = AlignedModel.from_towers(
        QvimEncoder.from_pretrained("scratch:mn01"), None, clip_duration_s=0.25, clap_fingerprint=CLAP_FP
    )
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # the plain mean over the batch below
    rng = np.random.default_rng(5)
    t = np.arange(CLIP) / 32000
    clips = [
        0.2 * (rng.random() + 0.1) * np.sin(2 * np.pi * f * t)
        + 0.05 * rng.random() * rng.standard_normal(CLIP)
        for f in rng.uniform(100, 4000, 16)
    ]
    model.train()
    model.imitation_tower.mel.eval()  # no augmentation
    with torch.no_grad():
        model.encode(torch.from_numpy(np.stack(clips).astype(np.float32)))
    return model.eval()


def test_a_query_longer_than_the_clip_is_embedded_from_all_of_it(sensitive_model):
    rng = np.random.default_rng(1)
    query = (0.1 * rng.standard_normal(3 * CLIP)).astype(np.float32)
    changed_end = query.copy()
    changed_end[-CLIP:] = 0.3 * np.sin(2 * np.pi * 880 * np.arange(CLIP) / 32000)  # only its last clip
    for policy in ("windows-mean", "windows-max", "whole"):
        embedder = _with_policy(sensitive_model, policy).embedder()
        a, b = embedder.embed([query, changed_end])
        assert float(a @ b) < 0.99, policy  # the end changes the embedding
    start = _with_policy(sensitive_model, "start").embedder()
    a, b = start.embed([query, changed_end])
    np.testing.assert_allclose(a, b, atol=1e-6)  # the old policy never sees it


def test_windowed_embedding_is_the_pooled_window_embeddings(sensitive_model):
    model = sensitive_model
    rng = np.random.default_rng(2)
    long = (0.1 * rng.standard_normal(CLIP * 5 // 2)).astype(np.float32)  # 2.5 clips: windows every half
    short = (0.1 * rng.standard_normal(CLIP // 2)).astype(np.float32)
    half = CLIP // 2
    with torch.no_grad():
        windows = torch.from_numpy(np.stack([long[s : s + CLIP] for s in (0, half, 2 * half, 3 * half)]))
        per_window = model.encode(windows).numpy()  # [4, 512]
        whole = model.encode(torch.from_numpy(long[None])).numpy()[0]
        padded = model.encode(torch.from_numpy(np.pad(short, (0, CLIP - len(short)))[None])).numpy()[0]
    expected = {
        "windows-mean": per_window.mean(0),
        "windows-max": per_window.max(0),
        "whole": whole,
        "start": per_window[0],
    }
    for policy, vector in expected.items():
        out = _with_policy(model, policy).embedder().embed([short, long, short], batch_size=2)
        np.testing.assert_allclose(out[1], vector / np.linalg.norm(vector), atol=1e-5, err_msg=policy)
        np.testing.assert_allclose(out[0], padded, atol=1e-5)  # a short clip: one zero-padded window
        np.testing.assert_allclose(out[2], out[0], atol=1e-6)
    # a hop of a whole clip: windows at 0 and 1 clip, and the last one ending at the end (1.5 clips)
    hop = _with_policy(model, "windows-mean", window_hop_s=0.25).embedder().embed([long])[0]
    expected_hop = per_window[[0, 2, 3]].mean(0)
    np.testing.assert_allclose(hop, expected_hop / np.linalg.norm(expected_hop), atol=1e-5)


def test_the_policy_is_recorded_and_in_the_fingerprint(tmp_path):
    model = tiny_model()
    assert model.config.long_input == DEFAULT_LONG_INPUT and model.config.hop_s == 0.5
    fingerprints = {p: _with_policy(model, p).embedder().fingerprint() for p in LONG_INPUT_POLICIES}
    assert len({json.dumps(fp, sort_keys=True) for fp in fingerprints.values()}) == len(LONG_INPUT_POLICIES)
    assert fingerprints["windows-mean"]["preprocessing"]["long_input"] == "windows-mean"
    assert fingerprints["windows-mean"]["preprocessing"]["window_hop_s"] == 0.5
    assert fingerprints["start"]["preprocessing"]["crop"] == "start"  # the keys of folders from before
    assert "long_input" not in fingerprints["start"]["preprocessing"]
    other_hop = _with_policy(model, "windows-mean", window_hop_s=0.25).embedder().fingerprint()
    assert other_hop["preprocessing"]["window_hop_s"] == 0.25
    # saved, loaded, and an older folder without the fields loads with the default policy
    _with_policy(model, "windows-max").save_pretrained(tmp_path / "m")
    assert AlignedModel.from_pretrained(tmp_path / "m").config.long_input == "windows-max"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["long_input"], config["window_hop_s"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert AlignedModel.from_pretrained(tmp_path / "m").config.long_input == DEFAULT_LONG_INPUT
    with pytest.raises(CheckpointError, match="long_input must be one of"):
        AlignedConfig.from_dict({**model.config.to_dict(), "long_input": "first"})
    with pytest.raises(CheckpointError, match="window_hop_s must be"):
        AlignedConfig.from_dict({**model.config.to_dict(), "window_hop_s": 1.5})
