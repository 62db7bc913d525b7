"""CLAP conversion: the AudioLDM test vector, LAION / AudioLDM layouts, strictness, wrong kinds, CLI."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qvimclap.cli import app
from qvimclap.errors import CheckpointError
from qvimclap.models.clap import ClapEncoder, cosine
from qvimclap.models.clap_convert import convert_clap_checkpoint, load_checkpoint

AUDIOLDM_PREFIX = "cond_stage_model.model."
TOL_COSINE = 0.9999


# --- the reference test vector ------------------------------------------------------------------------------


def hash_s(numel: int, index: int) -> np.ndarray:
    """The test vectors' integer hash (see reference/efficientat/mn10_testvector.json), float64 in [-1, 1)."""
    mask = np.uint64(0xFFFFFFFF)
    x = (np.arange(numel, dtype=np.uint64) + np.uint64(1000003 * index)) & mask
    for _ in range(2):
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x45D9F3B)) & mask
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 2**32 * 2 - 1


def fill_value(key: str, shape: list[int], index: int) -> np.ndarray:
    """The weights formula of audioldm_clap_audio_testvector.json (first match wins)."""
    numel = int(np.prod(shape)) if shape else 1
    s = hash_s(numel, index)
    if key.endswith("bn0.running_mean"):
        v = -40 + 5 * s
    elif key.endswith("bn0.running_var"):
        v = 100 + 20 * s
    elif key.endswith("running_var"):
        v = 1 + 0.1 * np.abs(s)
    elif key.endswith("running_mean"):
        v = 0.02 * s
    elif key.endswith(".weight") and len(shape) == 1:
        v = 1 + 0.1 * s
    elif key.endswith(".weight") and len(shape) >= 2:
        v = s * np.sqrt(6 / (numel / shape[0]))
    else:
        v = 0.02 * s
    return v.reshape(shape).astype(np.float32)


def test_hash_matches_its_check_values() -> None:
    np.testing.assert_allclose(
        hash_s(5, 0), [-1.0, -0.61605505, -0.19801109, 0.74776677, 0.60397782], atol=1e-8
    )
    np.testing.assert_allclose(
        hash_s(5, 1), [0.10705195, -0.76761484, 0.41929834, 0.90787924, -0.7579453], atol=1e-8
    )


@pytest.fixture(scope="module")
def testvector(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "clap" / "audioldm_clap_audio_testvector.json").read_text())


@pytest.fixture(scope="module")
def testvector_ckpt(testvector: dict, tmp_path_factory) -> Path:
    """The test vector's weights as an original AudioLDM .ckpt (audio tower only, every manifest entry)."""
    from qvimclap.models.clap import scratch_audio_model

    library = scratch_audio_model().state_dict()  # for the index buffers the reference left at library values
    state = {}
    for index, (key, shape, dtype) in enumerate(testvector["manifest"]):
        if "relative_position_index" in key:
            name = key[len(AUDIOLDM_PREFIX) :].replace("audio_branch", "audio_model.audio_encoder")
            state[key] = library[name.replace("attn", "attention.self")].clone()
        elif re.search(r"spectrogram_extractor\.|logmel_extractor\.|attn_mask", key) or dtype.startswith(
            "int"
        ):
            state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))  # dropped by the converter
        else:
            state[key] = torch.from_numpy(fill_value(key, shape, index))
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4, 4)  # the rest of an AudioLDM ckpt
    path = tmp_path_factory.mktemp("tv") / "audioldm-tv.ckpt"
    torch.save({"state_dict": state, "global_step": 0}, path)
    return path


def make_testvector_waveform() -> np.ndarray:
    t = np.arange(int(3.3 * 48000)) / 48000
    return (0.4 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t) * (t > 1.0)).astype(
        np.float32
    )


def test_conversion_reproduces_the_audioldm_test_vector(testvector: dict, testvector_ckpt: Path) -> None:
    encoder = ClapEncoder.from_pretrained(
        testvector_ckpt, preprocessing="plain"
    )  # LAION repeat-padding at 48 kHz
    (emb,) = encoder.embed([make_testvector_waveform()], normalize=False)
    ref = np.asarray(testvector["embedding_unnormalised"])
    assert cosine(emb, ref) > TOL_COSINE
    assert np.abs(emb - ref).max() < 1e-3
    (normed,) = encoder.embed([make_testvector_waveform()])
    np.testing.assert_allclose(normed, testvector["embedding_normalised"], atol=1e-4)
    assert encoder.fingerprint()["model"] == "htsat-tiny"


def test_converted_folder_reproduces_the_test_vector(
    testvector: dict, testvector_ckpt: Path, tmp_path
) -> None:
    out = convert_clap_checkpoint(testvector_ckpt, tmp_path / "clap")
    report = json.loads((out / "conversion.json").read_text())
    assert report["architecture"] == "ClapAudioModelWithProjection"
    assert any(k.endswith("tscam_conv.weight") for k in report["dropped_keys"])
    assert not any("relative_position_index" in k for k in report["dropped_keys"])
    (emb,) = ClapEncoder.from_pretrained(out, preprocessing="plain").embed(
        [make_testvector_waveform()], normalize=False
    )
    assert cosine(emb, testvector["embedding_unnormalised"]) > TOL_COSINE


# --- layouts: invert the key rules on a small random transformers model -------------------------------------


def tiny_clap_model():
    """A small ClapModel (HTSAT width 32, depths 1-2-2-1; 2-layer RoBERTa) with random weights."""
    from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

    audio = ClapAudioConfig(
        patch_embeds_hidden_size=32, depths=[1, 2, 2, 1], num_attention_heads=[1, 2, 4, 8], hidden_size=256,
        projection_dim=64,
    )  # fmt: skip
    text = ClapTextConfig(
        vocab_size=60, hidden_size=24, num_hidden_layers=2, intermediate_size=40, max_position_embeddings=40,
        projection_dim=64,
    )  # fmt: skip
    torch.manual_seed(0)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=64)
    model = ClapModel(config).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong mapping shows
        model.audio_model.audio_encoder.batch_norm.running_mean.uniform_(-50, -30)
        model.audio_model.audio_encoder.batch_norm.running_var.uniform_(80, 120)
        model.logit_scale_a.fill_(3.0)
    return model


def to_laion_key(key: str) -> str:
    """Inverse of the key rules, written independently of the converter (audio names only change)."""
    if key.startswith("text_model."):
        return "text_branch." + key[len("text_model.") :]
    key = re.sub(
        r"_projection\.linear([12])\.", lambda m: "_projection." + ("0" if m[1] == "1" else "2") + ".", key
    )
    key = key.replace("audio_model.audio_encoder.", "audio_branch.").replace("batch_norm", "bn0")
    key = key.replace("attention.output.dense", "attn.proj").replace("attention.self.", "attn.")
    key = key.replace("intermediate.dense", "mlp.fc1").replace("output.dense", "mlp.fc2")
    return key.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")


def droppable_extras(model) -> dict[str, torch.Tensor]:
    """Tensors real checkpoints carry that have no transformers counterpart."""
    extras = {
        "audio_branch.spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024),
        "audio_branch.logmel_extractor.melW": torch.randn(513, 64),
        "audio_branch.tscam_conv.weight": torch.randn(527, 256, 2, 3),
        "audio_branch.head.weight": torch.randn(527, 527),
        "audio_branch.layers.0.blocks.1.attn_mask": torch.zeros(64, 64, 64),
        "text_transform.sequential.0.weight": torch.randn(64, 64),
        "audio_transform.sequential.0.weight": torch.randn(64, 64),
    }
    return extras


def to_laion_state_dict(model) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list[torch.Tensor]] = {}
    for key, value in model.state_dict().items():
        if key == "text_model.embeddings.token_type_ids":
            continue  # older checkpoints lack this index buffer; the model recomputes it
        if key.startswith("audio_model.") and re.search(r"attention\.self\.(query|key|value)\.", key):
            qkv.setdefault(re.sub(r"attention\.self\.(query|key|value)\.", "attn.qkv.", key), []).append(
                value
            )
            continue  # state_dict order is query, key, value
        out[to_laion_key(key)] = value.clone()
    for key, parts in qkv.items():
        out[to_laion_key(key)] = torch.cat(parts, dim=0)
    return out | droppable_extras(model)


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_clap_model()


def write_layout(model, path: Path, layout: str) -> Path:
    laion = to_laion_state_dict(model)
    if layout == "laion":
        torch.save({"epoch": 45, "state_dict": {"module." + k: v for k, v in laion.items()}}, path)
    elif layout == "laion-bare":
        torch.save({k: v for k, v in laion.items()}, path)
    else:
        state = {AUDIOLDM_PREFIX + k: v for k, v in laion.items()}
        state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)
        torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize("layout", ["laion", "laion-bare", "audioldm"])
def test_each_layout_converts_back_exactly(tiny_model, tmp_path: Path, layout: str) -> None:
    path = write_layout(tiny_model, tmp_path / "clap.ckpt", layout)
    model, dropped = load_checkpoint(path)
    assert type(model).__name__ == "ClapModel"
    expected = tiny_model.state_dict()
    got = model.state_dict()
    assert set(got) == set(expected)
    for key in expected:  # token_type_ids included: the library's own (all-zero) buffer
        assert torch.equal(got[key], expected[key]), key
    assert set(dropped) == set(droppable_extras(tiny_model))  # only the documented keys are dropped
    audio = model.config.audio_config
    assert (audio.patch_embeds_hidden_size, list(audio.depths)) == (32, [1, 2, 2, 1])
    assert list(audio.num_attention_heads) == [1, 2, 4, 8] and audio.window_size == 8


def test_converted_folder_loads_everywhere(tiny_model, tmp_path: Path) -> None:
    from transformers import ClapModel

    src = write_layout(tiny_model, tmp_path / "laion.pt", "laion")
    out = convert_clap_checkpoint(src, tmp_path / "clap")
    reloaded = ClapModel.from_pretrained(out)
    assert torch.equal(reloaded.logit_scale_a, tiny_model.logit_scale_a)
    from_ckpt = ClapEncoder.from_pretrained(src, preprocessing="plain")
    from_dir = ClapEncoder.from_pretrained(out, preprocessing="plain")
    assert from_ckpt.weights_sha256() == from_dir.weights_sha256()
    clip = (0.3 * np.sin(np.arange(48000) * 0.05)).astype(np.float32)
    feats = from_dir.features([clip])
    with torch.no_grad():
        direct = tiny_model.get_audio_features(input_features=feats)
    direct = getattr(direct, "pooler_output", direct).numpy()
    direct = direct / np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(from_dir.embed([clip]), direct, atol=1e-5)
    np.testing.assert_allclose(from_ckpt.embed([clip]), direct, atol=1e-5)
    assert from_dir.embedding_dim == 64 and from_dir.fingerprint()["model"] == "htsat-32-1-2-2-1"


def write_tokenizer(folder: Path) -> None:
    """A tiny byte-level BPE RoBERTa tokenizer (no merges) whose ids fit the tiny text tower."""
    from transformers import RobertaTokenizer

    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def test_embed_text_from_a_full_folder(tiny_model, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = convert_clap_checkpoint(write_layout(tiny_model, tmp_path / "x.pt", "laion"), tmp_path / "clap")
    encoder = ClapEncoder.from_pretrained(out)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        encoder.embed_text(["dog barking"])  # transformers would build an empty tokenizer from the config
    write_tokenizer(out)
    texts = ["", "dog barking", "a siren"]
    emb = encoder.embed_text(texts)
    assert emb.shape == (3, 64) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        encoder.embed_text(texts[::-1])[::-1], emb, atol=1e-5
    )  # padding does not matter
    tokens = AutoTokenizer.from_pretrained(out)(["dog barking"], return_tensors="pt")
    with torch.no_grad():
        ref = tiny_model.get_text_features(**tokens)
    ref = getattr(ref, "pooler_output", ref).numpy()
    assert cosine(emb[1], ref[0]) > 0.99999
    with pytest.raises(CheckpointError, match="no tokenizer"):
        ClapEncoder.from_pretrained(tmp_path / "x.pt").embed_text([""])


# --- strictness and wrong kinds -----------------------------------------------------------------------------


def test_missing_and_unexpected_tensors_are_refused(tiny_model, tmp_path: Path) -> None:
    laion = to_laion_state_dict(tiny_model)
    missing = dict(laion)
    del missing["audio_branch.layers.1.blocks.0.mlp.fc1.weight"]
    torch.save({"state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"1 missing tensors \(audio_model.audio_encoder.layers.1"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save(
        {"state_dict": laion | {"audio_branch.extra_layer.weight": torch.zeros(3)}}, tmp_path / "extra.pt"
    )
    with pytest.raises(CheckpointError, match="1 unexpected.*extra_layer"):
        load_checkpoint(tmp_path / "extra.pt")
    fused = laion | {"audio_branch.mel_conv2d.weight": torch.zeros(3)}
    torch.save({"state_dict": fused}, tmp_path / "fused.pt")
    with pytest.raises(CheckpointError, match="fused"):
        load_checkpoint(tmp_path / "fused.pt")


def test_wrong_kinds_are_refused(tmp_path: Path) -> None:
    torch.save({"features.0.0.weight": torch.zeros(16, 1, 3, 3)}, tmp_path / "mn10_as.pt")  # EfficientAT
    qvim = {"tau": torch.tensor(0.07), "imitation_encoder.features.0.0.weight": torch.zeros(2)}
    torch.save({"state_dict": qvim}, tmp_path / "qvim.ckpt")  # QVIM baseline Lightning file
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=1)}, tmp_path / "pickled.ckpt")
    cases = {
        "mn10_as.pt": "not a CLAP checkpoint: no 'audio_branch",
        "qvim.ckpt": "not a CLAP checkpoint.*--qvim",
        "notes.ckpt": "cannot be read as a PyTorch checkpoint",
        "pickled.ckpt": "--allow-pickle",
    }
    for name, match in cases.items():
        with pytest.raises(CheckpointError, match=match):
            ClapEncoder.from_pretrained(tmp_path / name)


def test_cli_convert_clap(tiny_model, tmp_path: Path) -> None:
    src = write_layout(tiny_model, tmp_path / "audioldm.ckpt", "audioldm")
    out = tmp_path / "clap"
    runner = CliRunner()
    result = runner.invoke(app, ["convert-clap", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and str(out) in result.output
    again = runner.invoke(app, ["convert-clap", str(src), str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, ["convert-clap", str(src), str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    bad = runner.invoke(app, ["convert-clap", str(tmp_path / "nope.ckpt"), str(tmp_path / "o")])
    assert bad.exit_code == 2 and "no such checkpoint" in bad.output
    assert not list(tmp_path.glob("*.tmp-*"))  # nothing half-written left behind
