"""ClapEncoder: the AudioLDM-style preprocessing, determinism, the NaN cases, fingerprints, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tone

from qvimclap.errors import AudioError, CheckpointError, SilentAudioError
from qvimclap.models.base import AudioEmbedder
from qvimclap.models.clap import (
    AUDIOLDM_SAMPLE_RATE,
    CLAP_NUM_SAMPLES,
    CLAP_SAMPLE_RATE,
    SIDECAR_NAME,
    ClapEncoder,
    cosine,
    prepare_audioldm_waveform,
    prepare_plain_waveform,
)

SR = AUDIOLDM_SAMPLE_RATE


@pytest.fixture(scope="module")
def encoder() -> ClapEncoder:
    return ClapEncoder.from_pretrained("scratch")


def chirpy(duration_s: float, sample_rate: int = SR) -> np.ndarray:
    """A clip with structure over time (two tones switching), so crops and pads change the embedding."""
    x = tone(440, duration_s, sample_rate) + tone(2500, duration_s, sample_rate, 0.3)
    t = np.arange(x.shape[0]) / sample_rate
    return (x * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 0.7 * t)))).astype(np.float32)


def test_scratch_is_seeded_and_leaves_global_rng_alone(encoder: ClapEncoder) -> None:
    state = torch.get_rng_state()
    again = ClapEncoder.from_pretrained("scratch")
    assert torch.equal(torch.get_rng_state(), state)
    assert again.weights_sha256() == encoder.weights_sha256()
    assert isinstance(encoder, AudioEmbedder)
    assert encoder.sample_rate == 16000 and encoder.embedding_dim == 512


def test_embed_shape_norm_order_and_batching(encoder: ClapEncoder) -> None:
    clips = [chirpy(1.0), tone(300, 3.0, SR), chirpy(12.0)]
    batched = encoder.embed(clips, batch_size=3)
    single = encoder.embed(clips, batch_size=1)
    assert batched.shape == (3, 512) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    reversed_ = encoder.embed(clips[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(batched, reversed_, atol=1e-5)
    # different inputs give clearly different embeddings (random weights still separate them)
    assert cosine(batched[0], batched[1]) < 0.999


def test_nan_cases_are_finite_and_deterministic(encoder: ClapEncoder) -> None:
    base = chirpy(1.0)
    cases = {
        "zero_padded_10s": np.concatenate([base, np.zeros(9 * SR, np.float32)]),
        "50ms": chirpy(0.05),
        "60s": chirpy(60.0),
        "dc_offset": base + 0.4,
        "clipping": np.clip(8.0 * base, -1.0, 1.0),
        "quiet": 2e-3 * base,  # -54 dBFS: not silent, peak-normalised up without blowing up
    }
    first = encoder.embed(list(cases.values()), batch_size=4)
    second = encoder.embed(list(cases.values()), batch_size=1)
    assert np.isfinite(first).all()
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first, second, atol=1e-5)
    # the mean is removed and the peak normalised: DC offset and gain leave the embedding (almost) unchanged
    (ref,) = encoder.embed([base])
    names = list(cases)
    assert cosine(first[names.index("dc_offset")], ref) > 0.999
    assert cosine(first[names.index("quiet")], ref) > 0.9999


def test_plain_preprocessing_nan_cases(encoder: ClapEncoder) -> None:
    plain = ClapEncoder(encoder.model, preprocessing="plain", source="scratch")
    assert plain.sample_rate == CLAP_SAMPLE_RATE
    clips = [
        chirpy(0.05, CLAP_SAMPLE_RATE),
        chirpy(14.0, CLAP_SAMPLE_RATE),
        chirpy(1.0, CLAP_SAMPLE_RATE) + 0.2,
    ]
    a, b = plain.embed(clips), plain.embed(clips)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # no random crop: the same clip always embeds the same
    assert plain.fingerprint()["preprocessing"] != encoder.fingerprint()["preprocessing"]


@pytest.mark.parametrize(
    ("clip", "error", "match"),
    [
        (np.zeros(SR, np.float32), SilentAudioError, "silent"),
        (np.full(SR, 0.3, np.float32), SilentAudioError, "mean"),  # DC only: silent once the mean is removed
        (np.zeros(0, np.float32), AudioError, "empty"),
        (np.array([0.1, np.nan, 0.2], np.float32), AudioError, "NaN"),
        (np.zeros((SR, 2), np.float32), AudioError, "mono"),
    ],
)
def test_bad_clips_raise_and_name_the_input(encoder: ClapEncoder, clip, error, match) -> None:
    with pytest.raises(error, match=match) as info:
        encoder.embed([tone(440, 0.5, SR), clip])
    assert "waveform 1" in str(info.value)


def test_audioldm_preparation() -> None:
    long = chirpy(20.0)
    out = prepare_audioldm_waveform(long)
    assert out.shape == (CLAP_NUM_SAMPLES,) and out.dtype == np.float32
    assert 0.49 < np.abs(out).max() < 0.52  # peak 0.5 (soxr may overshoot slightly)
    # deterministic crop = the start: only the first 10.24 s matter (mean removed over the whole clip)
    head = long[: int(10.24 * SR)]
    np.testing.assert_allclose(prepare_audioldm_waveform(head), out, atol=5e-3)
    np.testing.assert_array_equal(prepare_audioldm_waveform(long), out)
    # short clips are zero-padded to 10.24 s (AudioLDM), so the tail of the 48 kHz window is silent
    short = prepare_audioldm_waveform(chirpy(1.0))
    assert np.abs(short[2 * CLAP_SAMPLE_RATE :]).max() < 1e-3


def test_plain_preparation_crops_the_start() -> None:
    x = chirpy(12.0, CLAP_SAMPLE_RATE)
    np.testing.assert_array_equal(prepare_plain_waveform(x), x[:CLAP_NUM_SAMPLES])
    assert prepare_plain_waveform(x[:100]).shape == (100,)  # the feature extractor repeat-pads it


def test_feature_extractor_settings_are_explicit(encoder: ClapEncoder) -> None:
    fe = encoder.feature_extractor
    assert (fe.frequency_min, fe.frequency_max, fe.hop_length, fe.feature_size) == (50, 14000, 480, 64)
    assert fe.nb_max_samples == CLAP_NUM_SAMPLES and fe.top_db is None
    feats = encoder.features([chirpy(1.0, CLAP_SAMPLE_RATE)])
    assert feats.shape == (1, 1, 1001, 64) and feats.dtype == torch.float32


def test_half_precision_is_refused(encoder: ClapEncoder) -> None:
    half = ClapEncoder(ClapEncoder.from_pretrained("scratch").model.half(), source="scratch")
    with pytest.raises(CheckpointError, match="float32"):
        half.embed([chirpy(1.0)])
    np.testing.assert_allclose(half.float().embed([chirpy(1.0)]), encoder.embed([chirpy(1.0)]), atol=1e-2)


def test_fingerprint(encoder: ClapEncoder) -> None:
    fp = encoder.fingerprint()
    assert fp["encoder"] == "clap" and fp["model"] == "htsat-tiny" and fp["dim"] == 512
    assert fp["space"] == "clap:" + fp["weights_sha256"][:12]
    assert fp["preprocessing"]["name"] == "audioldm" and fp["preprocessing"]["input_sample_rate"] == 16000
    assert fp["source"] == "scratch" and "qvimclap_version" in fp
    json.dumps(fp)  # JSON-able


def test_save_and_load_round_trip(encoder: ClapEncoder, tmp_path) -> None:
    plain = ClapEncoder(encoder.model, preprocessing="plain", source="scratch")
    plain.save_pretrained(tmp_path / "clap")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", SIDECAR_NAME} <= {
        p.name for p in (tmp_path / "clap").iterdir()
    }
    loaded = ClapEncoder.from_pretrained(tmp_path / "clap")
    assert loaded.preprocessing == "plain"  # restored from the sidecar
    assert loaded.weights_sha256() == encoder.weights_sha256()
    clip = chirpy(2.0, CLAP_SAMPLE_RATE)
    np.testing.assert_allclose(loaded.embed([clip]), plain.embed([clip]), atol=1e-6)
    assert ClapEncoder.from_pretrained(tmp_path / "clap", preprocessing="audioldm").sample_rate == 16000


def test_incomplete_folder_is_refused(encoder: ClapEncoder, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    encoder.save_pretrained(tmp_path / "clap")
    weights = load_file(tmp_path / "clap" / "model.safetensors")
    del weights["audio_projection.linear2.weight"]
    save_file(weights, tmp_path / "clap" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lack 1 tensors.*audio_projection.linear2.weight"):
        ClapEncoder.from_pretrained(tmp_path / "clap")


def test_bad_sources_are_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        ClapEncoder.from_pretrained(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="preprocessing"):
        ClapEncoder.from_pretrained("scratch", preprocessing="fancy")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a CLAP model"):
        ClapEncoder.from_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="model_type None, not a CLAP model"):
        ClapEncoder.from_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"other/config.json: not valid JSON \(Expecting"):
        ClapEncoder.from_pretrained(tmp_path / "other")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="diffusers AudioLDM"):
        ClapEncoder.from_pretrained(tmp_path / "pipe")


def test_scratch_has_no_text_tower(encoder: ClapEncoder) -> None:
    with pytest.raises(CheckpointError, match="no text tower"):
        encoder.embed_text([""])
