"""Writes aisfx_essentia.npz: the aiSFX package's own (Essentia) spectrograms of two test clips.

Run once, with a Python that has ``essentia`` and ``soundfile`` (e.g. ``python3 -m venv /tmp/ess &&
/tmp/ess/bin/pip install essentia soundfile``), passing the package's front-end file::

    /tmp/ess/bin/python tests/data/make_aisfx_reference.py \\
        .venv/lib/python3.11/site-packages/aisfx/spectrogram/spectrogram_essentia.py

It calls the package's ``compute_spectrogram`` with the settings of ``aisfx.inference.main`` (44.1 kHz, blocks
of 2048, hop 1024, 96 mel bands, 0-22050 Hz) on :func:`test_clip` written as a float WAV, and stores the
raw ``[frames, 96]`` float32 result (before the package's division by 9.4578). Generated with essentia
2.1b6.dev1389 and aisfx 0.1.2; tests/test_aisfx.py recomputes the clips with the same formula.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44_100
CLIP_LENGTHS = (110_250, 13_231)  # 2.5 s (109 frames: one block, partial), 0.3 s (14 frames)


def test_clip(num_samples: int) -> np.ndarray:
    """A chirp, a short 3 kHz tone and seeded noise: float32 mono at 44.1 kHz."""
    t = np.arange(num_samples) / SAMPLE_RATE
    x = 0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t**2))
    x += 0.2 * np.sin(2 * np.pi * 3000 * t) * (t < 0.2)
    x += 0.05 * np.random.default_rng(0).standard_normal(num_samples)
    return x.astype(np.float32)


def main(front_end_file: str) -> None:
    import soundfile as sf

    spec = importlib.util.spec_from_file_location("spectrogram_essentia", front_end_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in CLIP_LENGTHS:
            wav = Path(tmp) / f"clip{n}.wav"
            sf.write(wav, test_clip(n), SAMPLE_RATE, subtype="FLOAT")
            out[f"spectrogram_{n}"] = module.compute_spectrogram(
                str(wav), sr=44100.0, block_size=2048, hop_size=1024, n_mels=96, f_min=0.0, f_max=22050.0
            ).astype(np.float32)
    np.savez_compressed(Path(__file__).with_name("aisfx_essentia.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
