"""Shared fixtures: paths to the reference vectors and small deterministic audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference vectors not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def tone(freq_hz: float, duration_s: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine tone, for tests."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.fixture(scope="session")
def serve_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(corpus, index)``: the tiny library the ``qvimclap serve`` tests search (built once per session)."""
    from _serve_library import build_library

    return build_library(tmp_path_factory.mktemp("serve-library"))
