"""The aligned model: save/load round trip, the embedder contract, fingerprints."""

import json

import numpy as np
import pytest
import torch

from qvimclap.errors import CheckpointError
from qvimclap.models.aligned import AlignedConfig, AlignedModel, is_aligned_model_dir
from qvimclap.models.base import AudioEmbedder
from qvimclap.models.qvim import QvimEncoder

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
