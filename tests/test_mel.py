"""Log-mel front end vs the shipped EfficientAT reference arrays; its training-time augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qvimclap.errors import CheckpointError
from qvimclap.models.mel import MelConfig, MelFrontEnd, kaldi_mel_banks

BANK = "kaldi_melbank_128x513_sr32000_nfft1024_fmin0_fmax15000_{}.npy"


def _test_signal(num_samples: int = 32000) -> np.ndarray:
    """The test vector's input: 0.5 sin(440 Hz) + 0.1 sin(3000 Hz) at 32 kHz, float64."""
    n = np.arange(num_samples)
    return 0.5 * np.sin(2 * np.pi * 440 * n / 32000) + 0.1 * np.sin(2 * np.pi * 3000 * n / 32000)


# float32 log is exact only to an ulp, and which way it rounds depends on the CPU's vector math (one torch
# build differs between machines): an ulp of a mel value near 3500 is 2.4e-4, over a band 27 mel wide ~1e-5
@pytest.mark.parametrize(
    "dtype, name, atol", [(torch.float32, "float32", 2.5e-5), (torch.float64, "float64", 1e-12)]
)
def test_mel_bank_equals_reference(reference_dir, dtype, name, atol):
    expected = np.load(reference_dir / "efficientat" / BANK.format(name))
    bank = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0, dtype=dtype)
    assert bank.dtype == dtype
    assert bank.shape == expected.shape == (128, 513)
    np.testing.assert_allclose(bank.numpy(), expected, rtol=0, atol=atol)
    assert float(bank[:, -1].abs().max()) == 0.0  # the padded Nyquist column


def test_window_is_symmetric_hann_800(reference_dir):
    expected = np.load(reference_dir / "efficientat" / "hann_window_800_symmetric_float64.npy")
    window = MelFrontEnd()._window(torch.float64, torch.device("cpu"))
    np.testing.assert_allclose(window.numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "dtype, name, atol", [(torch.float64, "float64", 1e-9), (torch.float32, "float32", 1e-4)]
)
def test_log_mel_1s_equals_reference(reference_dir, dtype, name, atol):
    expected = np.load(reference_dir / "efficientat" / f"mn10_testvector_mel_1s_{name}.npy")
    mel = MelFrontEnd().eval()(torch.tensor(_test_signal(), dtype=dtype)[None])
    assert mel.dtype == dtype and mel.shape == (1, 128, 100)
    np.testing.assert_allclose(mel[0].numpy(), expected, rtol=0, atol=atol)


def test_log_mel_padded_10s_summary(reference_dir):
    vector = json.loads((reference_dir / "efficientat" / "mn10_testvector.json").read_text())
    expected = vector["results"]["padded10s_float64"]["mel"]
    wave = np.concatenate([_test_signal(), np.zeros(288000)])
    mel = MelFrontEnd().eval()(torch.tensor(wave)[None])[0].numpy()
    assert list(mel.shape) == expected["shape"] == [128, 1000]
    assert mel.mean() == pytest.approx(expected["mean"], abs=1e-9)
    assert mel.std() == pytest.approx(expected["std"], abs=1e-9)
    assert mel.min() == pytest.approx(expected["min"], abs=1e-9)
    assert mel.max() == pytest.approx(expected["max"], abs=1e-9)


def test_config_defaults_round_trip_and_reject_unknown_keys():
    config = MelConfig()
    assert config.fmax_effective == 15000.0  # sr // 2 - fmax_aug_range // 2
    assert MelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(CheckpointError, match="unknown keys"):
        MelConfig.from_dict({**config.to_dict(), "htk": True})
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=20000)


def test_num_frames_matches_output():
    front = MelFrontEnd().eval()
    for num_samples in (3200, 32000, 320000, 12345):
        out = front(torch.zeros(1, num_samples))
        assert out.shape[-1] == front.num_frames(num_samples)
    assert front.num_frames(320000) == 1000


def test_augmentation_only_in_training_mode():
    front = MelFrontEnd()
    wave = torch.tensor(_test_signal(64000), dtype=torch.float32).repeat(4, 1)  # 4 identical examples
    eval_out = front.eval()(wave)
    assert torch.equal(eval_out, front(wave))  # eval is deterministic
    with torch.random.fork_rng():
        torch.manual_seed(0)
        train_out = front.train()(wave)
    assert not torch.allclose(train_out, eval_out)
    # masked stripes hold log-value 0 before normalisation, i.e. exactly 0.9 after it
    masked = train_out == 0.9
    assert masked.any()
    # the time mask is drawn per example: identical inputs get different masked frames
    masked_frames = [tuple(torch.nonzero(masked[i].all(dim=0)).flatten().tolist()) for i in range(4)]
    assert len(set(masked_frames)) > 1
    assert all(len(frames) < 200 for frames in masked_frames)  # width < time_mask
    assert torch.equal(front.eval()(wave), eval_out)  # back in eval mode nothing is left over


def test_fmin_fmax_jitter_changes_bank_within_range():
    front = MelFrontEnd().train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        edges = [front._band_edges() for _ in range(200)]
    fmins, fmaxs = zip(*edges, strict=True)
    assert min(fmins) >= 0 and max(fmins) <= 9
    assert min(fmaxs) >= 14001 and max(fmaxs) <= 16000
    assert len(set(fmaxs)) > 50
    front.eval()
    assert front._band_edges() == (0.0, 15000.0)


@pytest.mark.parametrize("training", [False, True])
def test_gradients_reach_the_waveform(training):
    wave = torch.tensor(_test_signal(64000), dtype=torch.float32)[None].requires_grad_(True)
    MelFrontEnd().train(training)(wave).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_time_mask_never_covers_a_short_clip():
    front = MelFrontEnd().train()
    wave = torch.tensor(_test_signal(8000), dtype=torch.float32).repeat(64, 1)  # 25 frames < time_mask 200
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = front(wave)
    assert not (out == 0.9).all(dim=1).all(dim=1).any()


def test_rejects_non_batched_input():
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        MelFrontEnd()(torch.zeros(32000))
