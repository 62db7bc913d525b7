"""Generation through an unmodified AudioLDM, on tiny random components saved as a diffusers folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_audioldm import TinyEmbedder, build_tiny_components, save_tiny_audioldm
from conftest import tone

from qvimclap.errors import CheckpointError, SilentAudioError
from qvimclap.generation import (
    AudioLdm,
    GenerationConfig,
    GenerationError,
    blend_conditions,
    check_components,
    generate,
    generate_from_imitation,
    load_audioldm,
    normalize_condition,
    rank_candidates,
    save_comparison_plot,
    valid_duration,
)

FAST = GenerationConfig(duration_s=0.5, num_steps=4, guidance_scale=2.5, num_candidates=1)


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_audioldm(tmp_path_factory.mktemp("ldm") / "tiny-audioldm")


@pytest.fixture(scope="module")
def ldm(ldm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AudioLdm:
    return load_audioldm(ldm_dir, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def condition(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(512).astype(np.float32)


def _pipeline(ldm: AudioLdm, scheduler: str = "ddim"):
    from diffusers import AudioLDMPipeline

    pipe = AudioLDMPipeline(
        vae=ldm.vae,
        text_encoder=ldm.text_encoder,
        tokenizer=ldm.tokenizer,
        unet=ldm.unet,
        scheduler=ldm.make_scheduler(scheduler),
        vocoder=ldm.vocoder,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- loading ------------------------------------------------------------------------------------------------


def test_load_reads_every_component(ldm: AudioLdm) -> None:
    assert ldm.sample_rate == 16000
    assert ldm.hop_length == 160  # 10 ms mel frames, as AudioLDM
    assert ldm.vae_scale_factor == 2
    assert ldm.duration_step_s == pytest.approx(0.02)
    assert ldm.text_encoder is not None and ldm.tokenizer is not None
    assert not ldm.unet.training and not ldm.vae.training


def test_missing_folder_says_where_to_put_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="hf download cvssp/audioldm-s-full-v2"):
        load_audioldm(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="nor in the local Hugging Face cache"):
        load_audioldm("someone/not-a-cached-model")


def test_folder_missing_a_component_is_named(ldm_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ldm_dir, broken)
    shutil.rmtree(broken / "vocoder")
    with pytest.raises(CheckpointError, match="missing vocoder/config.json"):
        load_audioldm(broken)


def test_corrupt_weights_are_a_checkpoint_error(ldm_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "corrupt"
    shutil.copytree(ldm_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unet: cannot load UNet2DConditionModel"):
        load_audioldm(broken)


def test_non_audioldm_unet_is_refused() -> None:
    from diffusers import UNet2DConditionModel

    parts = build_tiny_components()
    sd_like = UNet2DConditionModel(  # a text-conditioned UNet (Stable Diffusion / AudioLDM 2 style)
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
    )
    bad = AudioLdm(sd_like, parts["vae"], parts["vocoder"], dict(parts["scheduler"].config), source="sd")
    with pytest.raises(CheckpointError, match="class_embed_type is None, AudioLDM has 'simple_projection'"):
        check_components(bad)


# --- the sampling loop equals diffusers' AudioLDMPipeline ---------------------------------------------------


@pytest.mark.parametrize(("scheduler", "eta"), [("ddim", 0.0), ("ddim", 1.0), ("dpm", 0.0)])
def test_equals_audioldm_pipeline(ldm: AudioLdm, condition: np.ndarray, scheduler: str, eta: float) -> None:
    config = GenerationConfig(
        duration_s=0.5, num_steps=4, eta=eta, seed=3, num_candidates=2, scheduler=scheduler
    )
    ours = generate(ldm, condition, config)
    null = ldm.unconditional_condition()
    theirs = _pipeline(ldm, scheduler)(
        prompt_embeds=torch.from_numpy(normalize_condition(condition))[None],
        negative_prompt_embeds=torch.from_numpy(null)[None],
        audio_length_in_s=0.5,
        num_inference_steps=4,
        guidance_scale=2.5,
        eta=eta,
        num_waveforms_per_prompt=2,
        generator=torch.Generator().manual_seed(3),
    ).audios
    assert ours.shape == theirs.shape == (2, 8000)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * np.abs(theirs).max())


def test_null_condition_is_the_pipelines_empty_text_embedding(ldm: AudioLdm, condition: np.ndarray) -> None:
    """Without negative_prompt_embeds the pipeline encodes "" itself: our cached null condition must match."""
    ours = generate(ldm, condition, FAST)
    theirs = _pipeline(ldm)(
        prompt_embeds=torch.from_numpy(normalize_condition(condition))[None],
        audio_length_in_s=0.5,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    ).audios
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())


def test_without_guidance_matches_the_pipeline(ldm: AudioLdm, condition: np.ndarray) -> None:
    config = GenerationConfig(duration_s=0.5, num_steps=3, guidance_scale=1.0)
    ours = generate(ldm, condition, config)
    theirs = _pipeline(ldm)(
        prompt_embeds=torch.from_numpy(normalize_condition(condition))[None],
        audio_length_in_s=0.5,
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    ).audios
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * np.abs(theirs).max())


# --- conditions, determinism, durations ---------------------------------------------------------------------


def test_condition_is_l2_normalised_before_use(ldm: AudioLdm, condition: np.ndarray) -> None:
    unit = generate(ldm, condition, FAST)
    scaled = generate(ldm, 7.5 * condition, FAST)  # equal up to the float32 round-off of normalising
    np.testing.assert_allclose(scaled, unit, rtol=0, atol=1e-4 * np.abs(unit).max())


def test_same_seed_same_sound_other_seed_other_sound(ldm: AudioLdm, condition: np.ndarray) -> None:
    a = generate(ldm, condition, FAST)
    b = generate(ldm, condition, FAST)
    c = generate(ldm, condition, GenerationConfig(duration_s=0.5, num_steps=4, seed=1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 * np.abs(a).max()
    assert np.isfinite(a).all() and np.abs(a).max() > 1e-3  # audible, not silent


def test_first_candidate_does_not_depend_on_the_number_of_candidates(
    ldm: AudioLdm, condition: np.ndarray
) -> None:
    one = generate(ldm, condition, FAST)
    three = generate(ldm, condition, GenerationConfig(duration_s=0.5, num_steps=4, num_candidates=3))
    assert three.shape == (3, 8000)
    np.testing.assert_allclose(three[0], one[0], rtol=0, atol=1e-5 * np.abs(one).max())
    assert np.abs(three[1] - three[0]).max() > 1e-3 * np.abs(one).max()


def test_condition_changes_the_output(ldm: AudioLdm, condition: np.ndarray) -> None:
    other = np.roll(condition, 1)
    assert np.abs(generate(ldm, condition, FAST) - generate(ldm, other, FAST)).max() > 0


def test_valid_durations(ldm: AudioLdm, caplog: pytest.LogCaptureFixture) -> None:
    assert valid_duration(1.0, ldm) == (pytest.approx(1.0), 50)  # 1 s = 100 frames = 50 latent frames
    with caplog.at_level(logging.WARNING, logger="qvimclap.generation"):
        made, frames = valid_duration(1.01, ldm)
    assert (made, frames) == (pytest.approx(1.02), 51)
    assert "rounded up to 1.02 s" in caplog.text
    assert valid_duration(0.001, ldm) == (pytest.approx(0.02), 1)


def test_rounded_duration_gives_that_many_samples(ldm: AudioLdm, condition: np.ndarray) -> None:
    out = generate(ldm, condition, GenerationConfig(duration_s=0.31, num_steps=2))
    assert out.shape == (1, round(0.32 * 16000))


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), float("inf"), 61.0])
def test_impossible_durations_are_refused(ldm: AudioLdm, duration: float) -> None:
    with pytest.raises(GenerationError, match="cannot be generated"):
        GenerationConfig(duration_s=duration)
    with pytest.raises(GenerationError, match="cannot be generated"):
        valid_duration(duration, ldm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "steps 0"),
        ({"guidance_scale": -1.0}, "guidance -1.0"),
        ({"eta": 2.0}, "eta 2.0"),
        ({"num_candidates": 0}, "candidates 0"),
        ({"scheduler": "magic"}, "scheduler 'magic' is unknown: use one of ddim, dpm"),
        ({"scheduler": "pndm", "num_steps": 3}, "too few for the pndm scheduler"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize("bad", [np.zeros(512), np.full(512, np.nan), np.ones(256), np.ones((2, 512))])
def test_bad_conditions_are_refused(ldm: AudioLdm, bad: np.ndarray) -> None:
    with pytest.raises(GenerationError, match="condition"):
        generate(ldm, bad, FAST)


@pytest.mark.parametrize("scheduler", ["pndm", "lms", "euler"])
def test_other_schedulers_run(ldm: AudioLdm, condition: np.ndarray, scheduler: str) -> None:
    out = generate(ldm, condition, GenerationConfig(duration_s=0.2, num_steps=4, scheduler=scheduler))
    assert out.shape == (1, 3200) and np.isfinite(out).all()


# --- the unconditional condition ----------------------------------------------------------------------------


def test_null_condition_is_cached_on_disk(ldm_dir: Path, tmp_path: Path) -> None:
    first = load_audioldm(ldm_dir, cache_dir=tmp_path)
    null = first.unconditional_condition()
    cached = list(tmp_path.glob("audioldm-unconditional-*.npy"))
    assert len(cached) == 1
    assert np.linalg.norm(null) == pytest.approx(1.0, abs=1e-6)
    second = load_audioldm(ldm_dir, cache_dir=tmp_path)
    second.text_encoder = _Exploding(second.text_encoder)  # the cache must answer without the encoder
    np.testing.assert_array_equal(second.unconditional_condition(), null)


class _Exploding:
    def __init__(self, wrapped: object) -> None:
        self.name_or_path = wrapped.name_or_path

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("text encoder called although the null condition is cached")


def test_null_condition_equals_the_empty_text_embedding(ldm: AudioLdm) -> None:
    np.testing.assert_allclose(ldm.unconditional_condition(), ldm.embed_text([""])[0], atol=1e-6)


def test_without_text_encoder_the_null_condition_is_zero(
    ldm_dir: Path, tmp_path: Path, condition: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    folder = save_tiny_audioldm(tmp_path / "no-text", with_text=False)
    ldm = load_audioldm(folder, cache_dir=tmp_path / "cache")
    assert ldm.text_encoder is None
    with caplog.at_level(logging.WARNING, logger="qvimclap.generation"):
        null = ldm.unconditional_condition()
    np.testing.assert_array_equal(null, np.zeros(512, np.float32))
    assert "zero vector" in caplog.text
    assert np.isfinite(generate(ldm, condition, FAST)).all()
    with pytest.raises(GenerationError, match="needs AudioLDM's CLAP text encoder"):
        ldm.embed_text(["a dog barking"])


# --- text blend ---------------------------------------------------------------------------------------------


def test_blend_formula(rng: np.random.Generator) -> None:
    a, t = rng.standard_normal(512), 3.0 * rng.standard_normal(512)
    an, tn = a / np.linalg.norm(a), t / np.linalg.norm(t)
    np.testing.assert_allclose(blend_conditions(a, t, 0.0), an, atol=1e-6)
    np.testing.assert_allclose(blend_conditions(a, t, 1.0), tn, atol=1e-6)
    mixed = 0.3 * tn + 0.7 * an
    np.testing.assert_allclose(blend_conditions(a, t, 0.3), mixed / np.linalg.norm(mixed), atol=1e-6)
    for w in (-0.1, 1.5, float("nan")):
        with pytest.raises(GenerationError, match="text weight"):
            blend_conditions(a, t, w)
    with pytest.raises(GenerationError, match="cancel out"):
        blend_conditions(a, -a, 0.5)


def test_text_blend_reaches_the_condition(ldm: AudioLdm) -> None:
    model = TinyEmbedder()
    imitation = tone(440.0, 0.5, 16000)
    result = generate_from_imitation(
        imitation, 16000, model, ldm, FAST, text="a dog barking", text_weight=0.4, rerank_embedder=model
    )
    expected = blend_conditions(model.embed([imitation])[0], ldm.embed_text(["a dog barking"])[0], 0.4)
    np.testing.assert_allclose(result.condition, expected, atol=1e-6)
    plain = generate_from_imitation(imitation, 16000, model, ldm, FAST)
    assert np.abs(result.waveforms - plain.waveforms).max() > 0


# --- candidates and re-ranking ------------------------------------------------------------------------------


def test_rank_candidates_orders_by_cosine_and_puts_silence_last() -> None:
    embedder = TinyEmbedder()
    clips = np.stack([tone(f, 0.5, 16000) for f in (200.0, 1000.0, 3000.0)] + [np.zeros(8000, np.float32)])
    target = embedder.embed([clips[2]])[0]
    order, scores = rank_candidates(clips, 16000, target, embedder)
    assert order[0] == 2 and order[-1] == 3
    assert scores[2] == pytest.approx(1.0, abs=1e-5) and scores[3] == -np.inf
    assert np.all(np.diff(scores[order][:3]) <= 0)
    expected = embedder.embed(list(clips[:3])) @ target
    np.testing.assert_allclose(scores[:3], expected, atol=1e-5)


def test_rank_candidates_resamples_to_the_embedders_rate() -> None:
    embedder = TinyEmbedder(sample_rate=48000)
    clips = np.stack([tone(f, 0.5, 16000) for f in (300.0, 2000.0)])
    target = embedder.embed([tone(2000.0, 0.5, 48000)])[0]
    order, scores = rank_candidates(clips, 16000, target, embedder)
    assert order.tolist() == [1, 0] and scores[1] > 0.99


def test_generate_from_imitation_writes_the_best_candidate_first(ldm: AudioLdm) -> None:
    model = TinyEmbedder()
    imitation = tone(660.0, 0.7, 16000)
    config = GenerationConfig(duration_s=0.5, num_steps=4, num_candidates=3, seed=5)
    result = generate_from_imitation(imitation, 16000, model, ldm, config, rerank_embedder=model)
    raw = generate(ldm, model.embed([imitation])[0], config)
    cosines = model.embed(list(raw)) @ result.condition
    assert result.candidate_indices.tolist() == np.argsort(-cosines, kind="stable").tolist()
    np.testing.assert_allclose(result.scores, np.sort(cosines)[::-1], atol=1e-5)
    np.testing.assert_array_equal(result.waveforms, raw[result.candidate_indices])
    assert result.sample_rate == 16000 and result.duration_s == pytest.approx(0.5)


def test_without_reranker_candidates_keep_draw_order(ldm: AudioLdm) -> None:
    config = GenerationConfig(duration_s=0.5, num_steps=2, num_candidates=2)
    result = generate_from_imitation(tone(500.0, 0.5, 16000), 16000, TinyEmbedder(), ldm, config)
    assert result.scores is None and result.candidate_indices.tolist() == [0, 1]


def test_reranker_in_another_space_is_refused(ldm: AudioLdm) -> None:
    with pytest.raises(GenerationError, match="space 'clap:other'"):
        generate_from_imitation(
            tone(500.0, 0.5, 16000),
            16000,
            TinyEmbedder(),
            ldm,
            FAST,
            rerank_embedder=TinyEmbedder(space="clap:other"),
        )


# --- bad imitations -----------------------------------------------------------------------------------------


def test_silent_imitation_is_refused(ldm: AudioLdm) -> None:
    with pytest.raises(SilentAudioError, match="imitation: audio is silent"):
        generate_from_imitation(np.zeros(16000, np.float32), 16000, TinyEmbedder(), ldm, FAST)


def test_imitation_is_resampled_for_the_model(ldm: AudioLdm) -> None:
    model = TinyEmbedder(sample_rate=32000)
    result = generate_from_imitation(tone(440.0, 0.5, 16000), 16000, model, ldm, FAST)
    np.testing.assert_allclose(result.condition, model.embed([tone(440.0, 0.5, 32000)])[0], atol=2e-3)


def test_model_of_the_wrong_dimension_is_refused(ldm: AudioLdm) -> None:
    class Qvim960(TinyEmbedder):
        embedding_dim = 960

    with pytest.raises(GenerationError, match="960-d embeddings; AudioLDM needs 512-d"):
        generate_from_imitation(tone(440.0, 0.5, 16000), 16000, Qvim960(), ldm, FAST)


def test_comparison_plot_is_a_png(tmp_path: Path) -> None:
    path = save_comparison_plot(
        tmp_path / "p.png", tone(440.0, 1.0, 32000), 32000, tone(880.0, 1.0, 16000), 16000
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_saved_folder_has_diffusers_layout(ldm_dir: Path) -> None:
    index = json.loads((ldm_dir / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline"
    assert {"unet", "vae", "vocoder", "scheduler", "text_encoder", "tokenizer"} <= set(index)


# --- the published AudioLDM-S configuration (built on the meta device: configs only, no memory) -----------


@pytest.fixture(scope="module")
def audioldm_s(reference_dir: Path) -> AudioLdm:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    ref = json.loads((reference_dir / "audioldm" / "audioldm-s-full-v2.json").read_text())
    cfg = {name: {k: v for k, v in ref[name].items() if k != "class"} for name in ("unet", "vae", "vocoder")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**cfg["vocoder"]))
    return AudioLdm(unet, vae, vocoder, ref["scheduler"], source="audioldm-s-full-v2 (meta)")


def test_published_audioldm_s_passes_the_checks(audioldm_s: AudioLdm) -> None:
    check_components(audioldm_s)
    assert audioldm_s.sample_rate == 16000 and audioldm_s.hop_length == 160
    assert audioldm_s.duration_step_s == pytest.approx(0.04)
    assert valid_duration(5.0, audioldm_s) == (pytest.approx(5.0), 125)
    assert valid_duration(10.0, audioldm_s) == (pytest.approx(10.0), 250)
    assert valid_duration(5.12, audioldm_s) == (pytest.approx(5.12), 128)  # the pipeline's default length
    assert valid_duration(5.01, audioldm_s) == (pytest.approx(5.04), 126)


def test_audioldm_s_with_a_768d_condition_is_refused(audioldm_s: AudioLdm) -> None:
    from diffusers import UNet2DConditionModel

    config = {**audioldm_s.unet.config, "projection_class_embeddings_input_dim": 768}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    bad = AudioLdm(unet, audioldm_s.vae, audioldm_s.vocoder, audioldm_s.scheduler_config, source="wrong")
    with pytest.raises(
        CheckpointError, match="projection_class_embeddings_input_dim is 768, AudioLDM has 512"
    ):
        check_components(bad)


@pytest.mark.slow
def test_real_audioldm_folder_generates(tmp_path: Path) -> None:
    """Set QVIMCLAP_AUDIOLDM_DIR to a local copy of cvssp/audioldm-s-full-v2 to run this."""
    import os

    folder = os.environ.get("QVIMCLAP_AUDIOLDM_DIR")
    if not folder:
        pytest.skip("QVIMCLAP_AUDIOLDM_DIR is not set")
    ldm = load_audioldm(folder, cache_dir=tmp_path)
    null = ldm.unconditional_condition()
    assert np.linalg.norm(null) == pytest.approx(1.0, abs=1e-5)
    text = ldm.embed_text(["a dog barking"])[0]
    out = generate(ldm, text, GenerationConfig(duration_s=2.0, num_steps=10, num_candidates=2))
    assert out.shape == (2, 32000) and np.isfinite(out).all() and np.abs(out).max() > 1e-3


def test_hub_id_is_read_from_the_local_cache_only(
    ldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cvssp--audioldm-s-full-v2"
    shutil.copytree(ldm_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ldm = load_audioldm("cvssp/audioldm-s-full-v2", cache_dir=tmp_path / "cache")
    assert ldm.source == "cvssp/audioldm-s-full-v2" and ldm.sample_rate == 16000
