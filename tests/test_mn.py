"""The mn architecture against the EfficientAT state_dict manifest, and its config and forward contract."""

from __future__ import annotations

import json

import pytest
import torch

from qvimclap.errors import CheckpointError
from qvimclap.models.mn import MN_WIDTHS, MNConfig, MobileNetV3, make_divisible, width_from_embedding_dim


@pytest.fixture(scope="module")
def manifest(reference_dir) -> dict:
    return json.loads((reference_dir / "efficientat" / "efficientat_mn_manifest.json").read_text())["models"]


def _entries(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", ["mn04_as", "mn05_as", "mn10_as", "mn20_as"])
def test_state_dict_equals_manifest(manifest, name):
    entry = manifest[name]
    config = MNConfig.from_name(name)
    assert config.width_mult == entry["width_mult"]
    model = MobileNetV3(config)
    assert _entries(model) == entry["state_dict"]  # keys, order, shapes and dtypes
    assert len(entry["state_dict"]) == entry["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    assert model.embedding_dim == config.embedding_dim == entry["embedding_dim"]
    assert config.head_hidden == entry["last_channel_mlp_hidden"]


def test_qbv_476_variant_differs_only_in_the_last_layer(manifest):
    entry = manifest["mn10_qbv_coarse_476"]
    model = MobileNetV3(MNConfig.from_name("mn10", num_classes=entry["num_classes"]))
    reference = {k: s for k, s, _ in manifest["mn10_as"]["state_dict"]}
    ours = {k: s for k, s, _ in _entries(model)}
    assert list(ours) == list(reference)
    assert {k: s for k, s in ours.items() if reference[k] != s} == dict(entry["diff_vs_mn10_as"])
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]


@pytest.mark.parametrize(
    "value, expected",
    [(16 * 0.4, 8), (16 * 0.1, 8), (72 * 0.4, 32), (1280 * 0.4, 512), (160 * 0.5, 80), (184, 184)],
)
def test_make_divisible(value, expected):
    assert make_divisible(value, 8) == expected


def test_embedding_dims_identify_every_width():
    dims = {name: MNConfig.from_name(name).embedding_dim for name in MN_WIDTHS}
    assert len(set(dims.values())) == len(dims)
    assert dims["mn04"] == 384 and dims["mn10"] == 960 and dims["mn40"] == 3840
    assert all(width_from_embedding_dim(dim) == name for name, dim in dims.items())
    assert width_from_embedding_dim(1000) is None


def test_config_round_trip_names_and_errors():
    config = MNConfig.from_name("mn05_as", num_classes=120)
    assert config.name == "mn05" and config.num_classes == 120
    assert MNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert MNConfig(width_mult=0.45).name == "mn_w0.45"
    with pytest.raises(CheckpointError, match="unknown mn model 'mn07'"):
        MNConfig.from_name("mn07")
    with pytest.raises(CheckpointError, match="unknown keys"):
        MNConfig.from_dict({"width_mult": 1.0, "head_type": "mlp"})
    with pytest.raises(ValueError, match="se_dims"):
        MNConfig(se_dims="x")


def test_forward_shapes_and_batch_independence():
    model = MobileNetV3(MNConfig.from_name("mn04")).eval()
    model.reset_parameters(torch.Generator().manual_seed(1))
    mel = torch.randn(3, 1, 128, 100, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, embedding = model(mel)
        single = [model(mel[i : i + 1]) for i in range(3)]
        logits_3d, _ = model(mel[:, 0])  # [B, F, T] is accepted too
    assert logits.shape == (3, 527) and embedding.shape == (3, 384)
    torch.testing.assert_close(torch.cat([s[1] for s in single]), embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([s[0] for s in single]), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_3d, logits)
    # the embedding is the global mean of the last feature map
    torch.testing.assert_close(embedding, model.forward_features(mel).mean(dim=(2, 3)))


def test_reset_parameters_is_reproducible_with_a_generator():
    a, b = MobileNetV3(MNConfig.from_name("mn01")), MobileNetV3(MNConfig.from_name("mn01"))
    a.reset_parameters(torch.Generator().manual_seed(5))
    b.reset_parameters(torch.Generator().manual_seed(5))
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key
    b.reset_parameters(torch.Generator().manual_seed(6))
    assert not torch.equal(a.features[0][0].weight, b.features[0][0].weight)
    # EfficientAT's scheme: BN at identity, linear biases zero, conv std sqrt(2 / fan_out)
    assert torch.equal(a.features[0][1].weight, torch.ones(8))
    assert torch.equal(a.classifier[5].bias, torch.zeros(527))
    big = MobileNetV3(MNConfig.from_name("mn10"))
    big.reset_parameters(torch.Generator().manual_seed(0))
    weight = big.features[16][0].weight  # [960, 160, 1, 1]
    assert float(weight.detach().std()) == pytest.approx((2 / 960) ** 0.5, rel=0.02)


def test_eval_is_deterministic_and_training_mode_differs():
    model = MobileNetV3(MNConfig.from_name("mn01"))
    model.reset_parameters(torch.Generator().manual_seed(0))
    mel = torch.randn(2, 1, 128, 50, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        first, second = model(mel), model(mel)
        assert torch.equal(first[0], second[0])
        model.train()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            train_logits, _ = model(mel)
    assert not torch.allclose(train_logits, first[0])
