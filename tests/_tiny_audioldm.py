"""Tiny random AudioLDM components (diffusers layout) and a tiny embedder, shared by the generation tests.

The shapes follow diffusers' own AudioLDM fast tests, except what qvimclap checks: a 512-d condition, a
vocoder with AudioLDM's 10 ms hop at 16 kHz (upsample rates multiply to 160), and a 1-channel VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from qvimclap.models.base import l2_normalize

SCHEDULER_CONFIG = {  # AudioLDM-S's published DDIM settings
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def _tiny_tokenizer() -> Any:
    from transformers import RobertaTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "<mask>": 4}
    vocab.update({c: i + 5 for i, c in enumerate(chars)})
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_components(seed: int = 0, *, with_text: bool = True) -> dict[str, Any]:
    """unet, vae, vocoder, scheduler, text_encoder, tokenizer with random weights (seeded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16),
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=512,
        class_embeddings_concat=True,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=1,
        out_channels=1,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=16,
            sampling_rate=16000,
            upsample_initial_channel=16,
            upsample_rates=[5, 4, 8],
            upsample_kernel_sizes=[10, 8, 16],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            normalize_before=False,
        )
    )
    _audible_init(vocoder)
    parts: dict[str, Any] = {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "vocoder": vocoder.eval(),
        "scheduler": DDIMScheduler(**SCHEDULER_CONFIG),
        "text_encoder": None,
        "tokenizer": None,
    }
    if with_text:
        text_config = ClapTextConfig(
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=1,
            num_hidden_layers=1,
            vocab_size=40,
            projection_dim=512,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
        parts["text_encoder"] = ClapTextModelWithProjection(text_config).eval()
        parts["tokenizer"] = _tiny_tokenizer()
    return parts


def _audible_init(vocoder: torch.nn.Module) -> None:
    """HiFi-GAN's N(0, 0.01) init gives ~1e-7 output (silent); fan-in scaling keeps it audible."""
    with torch.no_grad():
        for name, param in vocoder.named_parameters():
            if param.dim() > 1:
                fan_in = param[0].numel() if "ups" not in name else param.shape[0] * param.shape[2]
                param.normal_(0.0, 1.0 / fan_in**0.5)


def save_tiny_audioldm(out_dir: Path, seed: int = 0, *, with_text: bool = True) -> Path:
    """Write a diffusers AudioLDM folder (model_index.json + component folders) with tiny random weights."""
    from diffusers import AudioLDMPipeline

    parts = build_tiny_components(seed, with_text=True)
    AudioLDMPipeline(**parts).save_pretrained(str(out_dir))
    if not with_text:
        import shutil

        shutil.rmtree(out_dir / "text_encoder")
        shutil.rmtree(out_dir / "tokenizer")
    return out_dir


class TinyEmbedder:
    """A deterministic AudioEmbedder into 512-d: a fixed random projection of a magnitude spectrum.

    Different sounds give different directions, the same sound the same one; ``space`` is a parameter so tests
    can check space refusals.
    """

    embedding_dim = 512

    def __init__(self, sample_rate: int = 16000, *, space: str = "clap:tiny", seed: int = 0) -> None:
        self.sample_rate = sample_rate
        self.space = space
        self._proj = np.random.default_rng(seed).standard_normal((257, 512)).astype(np.float32)
        self.calls = 0

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": "clap",
            "model": "tiny",
            "weights_sha256": "0" * 64,
            "preprocessing": {},
            "dim": 512,
            "space": self.space,
            "qvimclap_version": "test",
        }

    def embed(self, waveforms: Any, *, batch_size: int = 16) -> np.ndarray:
        self.calls += 1
        rows = []
        for w in waveforms:
            frames = np.lib.stride_tricks.sliding_window_view(np.pad(w, (0, 512)), 512)[::256]
            spectrum = np.abs(np.fft.rfft(frames, axis=-1)).mean(axis=0)  # [257]
            rows.append(np.log1p(spectrum) @ self._proj)
        return l2_normalize(np.stack(rows).astype(np.float32))
