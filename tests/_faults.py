"""Helpers shared by the fault tests (issue 12): the CLI runner, short clips, tmpfs disks, ``clap:tiny``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _tiny_audioldm import TinyEmbedder
from typer.testing import CliRunner

from qvimclap import api
from qvimclap.cli import app

SAMPLE_RATE = 16000
ENCODER = "clap:tiny"  # the numpy TinyEmbedder of the generation tests: a fixed random spectral projection


def tiny_embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_embedder("clap:tiny")`` gives a TinyEmbedder (real specs load as usual)."""
    load = api.load_embedder
    monkeypatch.setattr(
        api, "load_embedder", lambda spec, **kw: TinyEmbedder() if spec == ENCODER else load(spec, **kw)
    )


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def write_clips(folder: Path, freqs: list[float], *, stem: str = "clip") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    paths = []
    for i, freq in enumerate(freqs):
        path = folder / f"{stem}{i:02d}.wav"
        sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SAMPLE_RATE)
        paths.append(path)
    return paths


@contextmanager
def tmpfs(parent: Path, size: str) -> Iterator[Path]:
    """A folder on a fresh tmpfs of ``size`` under ``parent``, unmounted afterwards; skips the test (saying
    why) where mounting is not allowed."""
    folder = parent / f"disk-{size}-{len(list(parent.glob('disk-*')))}"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs to fill ({done.stderr.strip() or 'mount failed'}); needs root"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)
