"""QvimEncoder: the mn10 test vector, checkpoint layouts, wrong-file errors, embed contract, save/load."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from qvimclap.errors import AudioError, CheckpointError
from qvimclap.models.base import AudioEmbedder
from qvimclap.models.mel import MelConfig
from qvimclap.models.mn import MNConfig, MobileNetV3
from qvimclap.models.qvim import PUBLISHED_CHECKPOINTS, QvimConfig, QvimEncoder

# -- the mn10 test vector --------------------------------------------------------------------------


def hash_s(k: np.ndarray, i: int) -> np.ndarray:
    """The test vector's integer hash, exact in uint64 arithmetic, mapped to [-1, 1) in float64."""
    mask, mult = np.uint64(2**32 - 1), np.uint64(0x45D9F3B)
    x = (k.astype(np.uint64) + np.uint64(1000003 * i)) & mask
    x ^= x >> np.uint64(16)
    x = (x * mult) & mask
    x ^= x >> np.uint64(16)
    x = (x * mult) & mask
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 2**32 * 2 - 1


def fill_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The documented deterministic fill (``weights_formula`` of mn10_testvector.json), in float64."""
    filled = {}
    for i, (key, tensor) in enumerate(state_dict.items()):
        if key.endswith("num_batches_tracked"):
            filled[key] = tensor.clone()
            continue
        s = hash_s(np.arange(tensor.numel()), i).reshape(tuple(tensor.shape))
        if key.endswith("running_var"):
            values = 1 + 0.1 * np.abs(s)
        elif key.endswith("running_mean"):
            values = 0.02 * s
        elif key.endswith(".weight") and tensor.ndim == 1:
            values = 1 + 0.1 * s
        elif key.endswith(".weight"):
            values = s * np.sqrt(6 / (tensor.numel() / tensor.shape[0]))
        else:
            values = 0.02 * s
        filled[key] = torch.from_numpy(values)
    return filled


@pytest.fixture(scope="module")
def testvector(reference_dir) -> dict:
    return json.loads((reference_dir / "efficientat" / "mn10_testvector.json").read_text())


@pytest.fixture(scope="module")
def mn10_filled() -> dict[str, torch.Tensor]:
    return fill_state_dict(QvimEncoder().mn.state_dict())


def test_hash_and_fill_match_the_documented_checks(testvector, mn10_filled):
    np.testing.assert_allclose(
        hash_s(np.arange(5), 0), [-1.0, -0.61605505, -0.19801109, 0.74776677, 0.60397782], atol=1e-8
    )
    np.testing.assert_allclose(
        hash_s(np.arange(5), 1), [0.10705195, -0.76761484, 0.41929834, 0.90787924, -0.7579453], atol=1e-8
    )
    rows = testvector["weights_fill_check_per_tensor"]["rows"]
    keys = list(mn10_filled)
    assert len(rows) == sum(not k.endswith("num_batches_tracked") for k in keys)  # rows skip those buffers
    for i, key, total, first3 in rows:
        assert keys[i] == key  # i counts every state_dict entry
        assert float(mn10_filled[key].sum()) == pytest.approx(total, abs=1e-9), key
        np.testing.assert_allclose(mn10_filled[key].flatten()[:3].numpy(), first3, atol=1e-12)


def _test_input(case: str, dtype: torch.dtype) -> torch.Tensor:
    n = np.arange(32000)
    wave = 0.5 * np.sin(2 * np.pi * 440 * n / 32000) + 0.1 * np.sin(2 * np.pi * 3000 * n / 32000)
    if case == "padded10s":
        wave = np.concatenate([wave, np.zeros(288000)])
    return torch.tensor(wave, dtype=torch.float64).to(dtype)[None]  # computed in float64, then cast


@pytest.mark.parametrize(
    "dtype, atol",
    [(torch.float64, 1e-6), (torch.float32, 1e-3)],
    ids=["float64", "float32"],
)
def test_mn10_testvector(testvector, mn10_filled, dtype, atol):
    encoder = QvimEncoder().to(dtype).eval()  # cast first, so the float64 fill is not rounded through float32
    encoder.mn.load_state_dict(mn10_filled)
    name = str(dtype).removeprefix("torch.")
    for case in ("1s", "padded10s"):
        expected = testvector["results"][f"{case}_{name}"]
        with torch.inference_mode():
            logits, embedding = encoder.forward_with_logits(_test_input(case, dtype))
        assert embedding.dtype == dtype and embedding.shape == (1, 960) and logits.shape == (1, 527)
        np.testing.assert_allclose(embedding[0].numpy(), expected["embedding_960"], rtol=0, atol=atol)
        np.testing.assert_allclose(logits[0, :20].numpy(), expected["logits_first20"], rtol=0, atol=atol)
        assert float(logits.mean()) == pytest.approx(expected["logits_mean"], abs=atol)
        # torch's default std (unbiased), as the reference reports it
        assert float(logits.std()) == pytest.approx(expected["logits_std"], abs=atol)


def test_mn10_testvector_full_embedding_array(reference_dir, mn10_filled):
    expected = np.load(reference_dir / "efficientat" / "mn10_testvector_embedding_1s_float64.npy")
    encoder = QvimEncoder().double().eval()
    encoder.mn.load_state_dict(mn10_filled)
    with torch.inference_mode():
        embedding = encoder(_test_input("1s", torch.float64))
    np.testing.assert_allclose(embedding[0].numpy(), expected, rtol=0, atol=1e-6)


# -- scratch encoders and the embed contract -------------------------------------------------------


@pytest.fixture(scope="module")
def mn04() -> QvimEncoder:
    return QvimEncoder.from_pretrained("scratch:mn04")


def _clips(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [8000, 32000, 400000, 16000, 100]  # shorter and longer than 10 s
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def test_scratch_is_deterministic_and_sized(mn04):
    again = QvimEncoder.from_pretrained("scratch:mn04")
    assert mn04.fingerprint() == again.fingerprint()
    assert mn04.embedding_dim == 384 and mn04.sample_rate == 32000 and not mn04.training
    assert QvimEncoder.from_pretrained("scratch:mn01").embedding_dim == 96
    other = QvimEncoder.from_pretrained("scratch:mn05")
    assert other.fingerprint()["weights_sha256"] != mn04.fingerprint()["weights_sha256"]


@pytest.mark.parametrize("source", ["scratch", "scratch:mn07", "scratch:mn4", "scratch:dymn10"])
def test_scratch_rejects_bad_names(source):
    with pytest.raises(CheckpointError, match="scratch:mnXX"):
        QvimEncoder.from_pretrained(source)


def test_embed_contract(mn04):
    clips = _clips()
    vectors = mn04.embed(clips, batch_size=2)
    assert isinstance(mn04, AudioEmbedder)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # batching does not change results, and order follows the input
    single = np.concatenate([mn04.embed([clip], batch_size=1) for clip in clips])
    np.testing.assert_allclose(vectors, single, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mn04.embed(clips[::-1], batch_size=16), vectors[::-1], rtol=0, atol=1e-5)
    # different inputs give different embeddings
    assert float(vectors[0] @ vectors[1]) < 0.99999
    assert mn04.embed([]).shape == (0, 384)


def test_embed_follows_the_input_policy(mn04):
    rng = np.random.default_rng(1)
    ten_s = (0.1 * rng.standard_normal(320000)).astype(np.float32)
    longer = np.concatenate([ten_s, rng.standard_normal(50000).astype(np.float32)])
    shorter = ten_s[:48000]
    vectors = mn04.embed([ten_s, longer, shorter, np.pad(shorter, (0, 272000))])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # cut to the first 10 s
    np.testing.assert_allclose(vectors[2], vectors[3], atol=1e-6)  # zero-padded at the end
    batch = mn04.prepare_batch([shorter, longer])
    assert batch.shape == (2, 320000) and batch.dtype == torch.float32
    assert torch.equal(batch[0, 48000:], torch.zeros(272000))


def test_other_durations_are_an_option(tmp_path):
    encoder = QvimEncoder.from_pretrained("scratch:mn01", duration_s=3.0)
    assert encoder.config.duration_s == 3.0
    assert encoder.prepare_batch([np.zeros(10, np.float32)]).shape == (1, 96000)
    assert encoder.fingerprint()["preprocessing"]["duration_s"] == 3.0
    assert (
        encoder.fingerprint()["weights_sha256"]
        == QvimEncoder.from_pretrained("scratch:mn01").fingerprint()["weights_sha256"]
    )
    folder = encoder.save_pretrained(tmp_path / "short")
    assert QvimEncoder.from_pretrained(folder).config.duration_s == 3.0


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 100), np.float32), "mono"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, np.nan]), "NaN"),
    ],
)
def test_prepare_batch_rejects_bad_waveforms(mn04, bad, message):
    with pytest.raises(AudioError, match=message):
        mn04.embed([np.zeros(100, np.float32), bad])


def test_fingerprint_contract(mn04):
    fp = mn04.fingerprint()
    assert {"encoder", "model", "weights_sha256", "preprocessing", "dim", "space", "qvimclap_version"} <= set(
        fp
    )
    assert fp["encoder"] == "qvim" and fp["model"] == "mn04" and fp["dim"] == 384
    assert fp["space"] == "qvim:" + fp["weights_sha256"][:12]
    assert fp["preprocessing"]["sample_rate"] == 32000 and fp["preprocessing"]["duration_s"] == 10.0
    json.dumps(fp)  # JSON-able
    # augmentation ranges do not change eval outputs, so they stay out; the mel band edges are in
    base = QvimEncoder.from_pretrained("scratch:mn01")
    config = base.config
    base.config = QvimConfig(mn=config.mn, mel=MelConfig(time_mask=0, fmax_aug_range=1, fmax=15000))
    assert base.fingerprint() == QvimEncoder.from_pretrained("scratch:mn01").fingerprint()
    base.config = QvimConfig(mn=config.mn, mel=MelConfig(fmin=50.0))
    assert base.fingerprint()["preprocessing"]["fmin"] == 50.0


def test_forward_trains_end_to_end_with_augmentation_only_in_training():
    encoder = QvimEncoder.from_pretrained("scratch:mn01")
    batch = encoder.prepare_batch(_clips()[:2])
    with torch.no_grad():
        eval_a, eval_b = encoder(batch), encoder(batch)
    assert torch.equal(eval_a, eval_b)
    encoder.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = encoder(batch.clone().requires_grad_(True))
    assert out.shape == (2, 96) and out.requires_grad
    out.square().sum().backward()
    first_conv = encoder.mn.features[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert not torch.allclose(out.detach(), eval_a)
    # every parameter outside the unused tagger head gets a gradient
    no_grad = [
        n for n, p in encoder.named_parameters() if p.grad is None and not n.startswith("mn.classifier")
    ]
    assert no_grad == []
    encoder.eval()  # (the training step moved the BatchNorm statistics; compare after it)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_with_logits(batch)[1], encoder(batch), rtol=0, atol=1e-6)


# -- save / load -----------------------------------------------------------------------------------


def test_save_pretrained_round_trip(mn04, tmp_path):
    folder = mn04.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qvim_encoder" and config["mn"]["width_mult"] == 0.4
    loaded = QvimEncoder.from_pretrained(folder)
    assert loaded.config == mn04.config
    assert loaded.fingerprint() == mn04.fingerprint()
    clips = _clips()[:2]
    np.testing.assert_array_equal(loaded.embed(clips), mn04.embed(clips))


def test_folder_errors(mn04, tmp_path):
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        QvimEncoder.from_pretrained(tmp_path)
    folder = mn04.save_pretrained(tmp_path / "enc")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mystery": 1}))
    with pytest.raises(CheckpointError, match=r"unknown keys \['mystery'\]"):
        QvimEncoder.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "clap"}))
    with pytest.raises(CheckpointError, match="model_type is 'clap'"):
        QvimEncoder.from_pretrained(folder)
    config["mn"]["width_mult"] = 1.0  # config says mn10, weights are mn04
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        QvimEncoder.from_pretrained(folder)


# -- checkpoint layouts, written here from a scratch model or the manifest -------------------------


def _random_mn_state(name: str, seed: int, num_classes: int = 527) -> OrderedDict:
    mn = MobileNetV3(MNConfig.from_name(name, num_classes=num_classes))
    mn.reset_parameters(torch.Generator().manual_seed(seed))
    return OrderedDict(mn.state_dict())


def _embed_with(state: dict, name: str, num_classes: int, clips: list[np.ndarray]) -> np.ndarray:
    encoder = QvimEncoder(QvimConfig(mn=MNConfig.from_name(name, num_classes=num_classes))).eval()
    encoder.mn.load_state_dict(state)
    return encoder.embed(clips)


def test_efficientat_state_dict_from_manifest_shapes(reference_dir, tmp_path):
    """A file with exactly the manifest's keys, shapes, dtypes (as mn05_as_mAP_443.pt) loads strictly."""
    manifest = json.loads((reference_dir / "efficientat" / "efficientat_mn_manifest.json").read_text())
    entries = manifest["models"]["mn05_as"]["state_dict"]
    generator = torch.Generator().manual_seed(0)
    state = OrderedDict(
        (
            key,
            torch.zeros(shape, dtype=torch.int64)
            if dtype == "int64"
            else 0.05 * torch.randn(shape, generator=generator),
        )
        for key, shape, dtype in entries
    )
    for key in state:
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 1.0
    path = tmp_path / "mn05_as_mAP_443.pt"
    torch.save(state, path)
    encoder = QvimEncoder.from_pretrained(path, model="mn05")
    assert encoder.config.mn.name == "mn05" and encoder.embedding_dim == 480
    for key, value in encoder.mn.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert np.isfinite(encoder.embed(_clips()[:1])).all()


def test_efficientat_file_wrong_width_and_tower(tmp_path):
    path = tmp_path / "mn04_as.pt"
    torch.save(_random_mn_state("mn04", 3), path)
    with pytest.raises(CheckpointError, match="this is an mn04 checkpoint, you asked for mn10"):
        QvimEncoder.from_pretrained(path, model="mn10")
    with pytest.raises(CheckpointError, match="single tower"):
        QvimEncoder.from_pretrained(path, tower="reference")
    with pytest.raises(CheckpointError, match="tower='query'"):
        QvimEncoder.from_pretrained(path, tower="query")


def test_wrapped_and_prefixed_state_dicts_load(tmp_path):
    state = _random_mn_state("mn01", 4)
    torch.save({"model": OrderedDict(("module." + k, v) for k, v in state.items())}, tmp_path / "wrapped.pt")
    loaded = QvimEncoder.from_pretrained(tmp_path / "wrapped.pt")
    assert torch.equal(loaded.mn.features[0][0].weight, state["features.0.0.weight"])
    from safetensors.torch import save_file

    save_file(dict(state), str(tmp_path / "mn01.safetensors"))
    assert QvimEncoder.from_pretrained(tmp_path / "mn01.safetensors").config.mn.name == "mn01"


def test_qvim_baseline_lightning_checkpoint_both_towers(tmp_path):
    imitation, reference = _random_mn_state("mn01", 10), _random_mn_state("mn01", 11)
    state = OrderedDict([("tau", torch.tensor([0.07]))])
    state.update(("imitation_encoder." + k, v) for k, v in imitation.items())
    state.update(("reference_encoder." + k, v) for k, v in reference.items())
    checkpoint = {
        "epoch": 14,
        "global_step": 11760,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": state,
        "hyper_parameters": argparse.Namespace(pretrained_name="mn01_as", initial_tau=0.07),
    }
    path = tmp_path / "baseline.ckpt"
    torch.save(checkpoint, path)
    clips = _clips()[:2]
    for tower, weights in (("imitation", imitation), ("reference", reference)):
        encoder = QvimEncoder.from_pretrained(path, tower=tower, model="mn01")
        np.testing.assert_array_equal(encoder.embed(clips), _embed_with(weights, "mn01", 527, clips))
    a = QvimEncoder.from_pretrained(path).fingerprint()
    b = QvimEncoder.from_pretrained(path, tower="reference").fingerprint()
    assert a["weights_sha256"] != b["weights_sha256"]


@pytest.mark.parametrize("num_classes, reference_prefix", [(476, "rec."), (120, "ref.")])
def test_qbv_dual_encoder_files(tmp_path, num_classes, reference_prefix):
    imitation = _random_mn_state("mn01", 20, num_classes)
    reference = _random_mn_state("mn01", 21, num_classes)
    state = OrderedDict(("im." + k, v) for k, v in imitation.items())
    state.update((reference_prefix + k, v) for k, v in reference.items())
    path = tmp_path / "ct_nt_xent_fold0mn01d10s32_01.pt"
    torch.save(state, path)
    clips = _clips()[:2]
    for tower, weights in (("imitation", imitation), ("reference", reference)):
        encoder = QvimEncoder.from_pretrained(path, tower=tower)
        assert encoder.config.mn.num_classes == num_classes
        np.testing.assert_array_equal(encoder.embed(clips), _embed_with(weights, "mn01", num_classes, clips))


def test_qbv_single_encoder_serves_both_towers(tmp_path):
    imitation = _random_mn_state("mn01", 30, 476)
    torch.save(OrderedDict(("im." + k, v) for k, v in imitation.items()), tmp_path / "single.pt")
    a = QvimEncoder.from_pretrained(tmp_path / "single.pt", tower="imitation")
    b = QvimEncoder.from_pretrained(tmp_path / "single.pt", tower="reference")
    assert a.fingerprint()["weights_sha256"] == b.fingerprint()["weights_sha256"]


# -- wrong files -----------------------------------------------------------------------------------


class _Unsafe:
    """Stands for a pickled object that ``weights_only=True`` refuses (e.g. a logger in a Lightning file)."""


def _write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_wrong_files_get_clear_errors(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        QvimEncoder.from_pretrained(text)
    other = _write(
        tmp_path / "clap.pt", {"audio_branch.conv.weight": torch.zeros(2), "text_branch.x": torch.zeros(1)}
    )
    with pytest.raises(CheckpointError, match="not an EfficientAT/QVIM checkpoint.*audio_branch.conv.weight"):
        QvimEncoder.from_pretrained(other)
    unsafe = _write(tmp_path / "unsafe.ckpt", {"state_dict": {}, "logger": _Unsafe()})
    with pytest.raises(CheckpointError, match=r"cannot be read safely.*re-save its tensors"):
        QvimEncoder.from_pretrained(unsafe)
    with pytest.raises(CheckpointError, match="not a state_dict of tensors"):
        QvimEncoder.from_pretrained(_write(tmp_path / "list.pt", [1, 2, 3]))


def test_truncated_and_unknown_width_state_dicts(tmp_path):
    state = _random_mn_state("mn01", 5)
    truncated = OrderedDict((k, v) for k, v in state.items() if not k.startswith("features.3."))
    with pytest.raises(CheckpointError, match=r"missing: features\.3\.block"):
        QvimEncoder.from_pretrained(_write(tmp_path / "truncated.pt", truncated))
    extra = OrderedDict(state, **{"features.99.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 unexpected: features\.99\.weight"):
        QvimEncoder.from_pretrained(_write(tmp_path / "extra.pt", extra))
    odd = OrderedDict(state, **{"features.16.0.weight": torch.zeros(100, 16, 1, 1)})
    with pytest.raises(CheckpointError, match="100 channels, which matches no published width"):
        QvimEncoder.from_pretrained(_write(tmp_path / "odd.pt", odd))
    no_head = OrderedDict((k, v) for k, v in state.items() if not k.startswith("classifier."))
    with pytest.raises(CheckpointError, match="missing classifier.5.bias"):
        QvimEncoder.from_pretrained(_write(tmp_path / "no_head.pt", no_head))
    baseline_one_tower = OrderedDict(("imitation_encoder." + k, v) for k, v in state.items())
    path = _write(tmp_path / "one_tower.ckpt", {"state_dict": baseline_one_tower})
    with pytest.raises(CheckpointError, match="has no reference tower"):
        QvimEncoder.from_pretrained(path, tower="reference")


def test_missing_sources_say_where_to_put_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        QvimEncoder.from_pretrained(tmp_path / "nope.pt")
    url = PUBLISHED_CHECKPOINTS["mn10_as"]
    with pytest.raises(CheckpointError, match=r"never downloads.*mn10_as_mAP_471\.pt.*pass that path"):
        QvimEncoder.from_pretrained(url)
    with pytest.raises(
        CheckpointError, match=r"never downloads weights; fetch https://github\.com/fschmid56"
    ):
        QvimEncoder.from_pretrained("mn10_as")
    assert all(u.startswith("https://") and u.endswith(".pt") for u in PUBLISHED_CHECKPOINTS.values())


def test_both_towers_of_a_two_tower_checkpoint_share_one_space(tmp_path):
    """A store built with the reference tower must accept queries from the imitation tower."""
    imitation = QvimEncoder.from_pretrained("scratch:mn04")
    reference = QvimEncoder.from_pretrained("scratch:mn04")
    with torch.no_grad():
        for p in reference.mn.parameters():
            p.add_(0.01)
    state = {"tau": torch.tensor(0.07)}
    state.update({f"imitation_encoder.{k}": v for k, v in imitation.mn.state_dict().items()})
    state.update({f"reference_encoder.{k}": v for k, v in reference.mn.state_dict().items()})
    path = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": state}, path)
    fp_im = QvimEncoder.from_pretrained(path, tower="imitation").fingerprint()
    fp_ref = QvimEncoder.from_pretrained(path, tower="reference").fingerprint()
    assert fp_im["weights_sha256"] != fp_ref["weights_sha256"]
    assert fp_im["space"] == fp_ref["space"] != "qvim:" + fp_im["weights_sha256"][:12]
    saved = QvimEncoder.from_pretrained(path, tower="reference").save_pretrained(tmp_path / "ref")
    assert QvimEncoder.from_pretrained(saved).fingerprint()["space"] == fp_ref["space"]
