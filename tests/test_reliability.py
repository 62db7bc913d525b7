"""Faults a hostile user meets (issue 12): full disks, concurrent writers, colliding folders, corrupt files.

Disk-full cases run on a small tmpfs mounted for the test (skipped, with the reason, where mounting is not
allowed). The encoder is a tiny random-weight aligned model (mn01 tower, half-second window) on a dozen
half-second clips, loaded once per module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from qvimclap import api
from qvimclap.cli import app
from qvimclap.cli._app import USER_ERROR_EXIT
from qvimclap.errors import StoreError
from qvimclap.store import EmbeddingStore

SAMPLE_RATE = 16000
ENCODER = ""  # the tiny model's folder, set by the module fixture below


@pytest.fixture(scope="module", autouse=True)
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A random aligned model small enough to embed a dozen clips in a blink; ``load_embedder`` is cached."""
    global ENCODER
    import torch

    from qvimclap.models.aligned import AlignedModel
    from qvimclap.models.qvim import QvimEncoder

    torch.manual_seed(0)
    model = AlignedModel.from_towers(
        QvimEncoder.from_pretrained("scratch:mn01"),
        None,
        head="linear",
        clip_duration_s=0.5,
        clap_fingerprint={"encoder": "clap", "space": "clap:0123456789ab", "dim": 512},
    )
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    ENCODER = str(folder)
    load, cache = api.load_embedder, {}
    patch = pytest.MonkeyPatch()
    patch.setattr(
        api, "load_embedder", lambda spec, **kw: cache.get(spec) or cache.setdefault(spec, load(spec, **kw))
    )
    yield ENCODER
    patch.undo()


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


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A dozen clips and the embedding each must have in any store (computed in one go, here)."""
    folder = tmp_path_factory.mktemp("lib") / "sounds"
    paths = write_clips(folder, [110.0 * 1.3**i for i in range(12)])
    x, failures = api.embed_files(paths, ENCODER)
    assert not failures
    return folder, {p.name: row for p, row in zip(paths, x, strict=True)}


def assert_complete_rows(store_path: Path, expected: dict[str, np.ndarray], folder: Path) -> int:
    """Every committed row is a whole, correct one: its id, embedding and source path."""
    with EmbeddingStore.open(store_path) as store:
        assert len(set(store.ids)) == len(store) and set(store.ids) <= set(expected)
        for item_id, row in zip(store.ids, store.embeddings, strict=True):
            np.testing.assert_allclose(row, expected[item_id], atol=1e-5, err_msg=item_id)
        assert store.column("source_path") == [str(folder / i) for i in store.ids]
        return len(store)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(size)`` -> a folder on a fresh tmpfs of that size (unmounted afterwards)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a small tmpfs to fill ({done.stderr.strip() or 'mount failed'}); needs root"
            )
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


@pytest.fixture
def tiny_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores start at 2 rows, so a dozen clips grow the file three times."""
    import qvimclap.store as store_module

    create = EmbeddingStore.create.__func__
    monkeypatch.setattr(store_module, "_MIN_CAPACITY", 2)
    monkeypatch.setattr(
        EmbeddingStore, "create", classmethod(lambda cls, *a, **k: create(cls, *a, **{**k, "capacity": 2}))
    )


# ------------------------------------------------------------------------------- 1. full disk during embed
def test_full_disk_stops_embed_with_complete_rows_and_resumes(library, small_disk, tiny_capacity) -> None:
    folder, expected = library
    disk = small_disk("64k")  # room for the store up to 8 rows; growing it to 16 needs both files at once
    store_path = disk / "s.h5"
    code, out, err = run(
        "embed", folder, "-e", ENCODER, "-o", store_path, "--batch-size", "4", "--no-progress"
    )
    assert code == USER_ERROR_EXIT, out + err
    assert (
        err.startswith(f"Error: {store_path}: no space left on device (disk full)") and err.count("\n") == 1
    )
    assert "keeps its 8 complete rows" in err
    assert assert_complete_rows(store_path, expected, folder) == 8
    assert sorted(os.listdir(disk)) == ["s.h5"]  # the half-made bigger copy is gone
    code, _, err = run("index", store_path, "-o", disk / "s.faiss")
    assert code == 0, err

    resize(disk, "256k")  # space freed: the same command resumes
    code, out, err = run(
        "embed", folder, "-e", ENCODER, "-o", store_path, "--batch-size", "4", "--no-progress"
    )
    assert code == 0 and "added 4, already stored 8" in out, err
    assert assert_complete_rows(store_path, expected, folder) == 12


def test_full_disk_on_a_new_store_leaves_nothing(library, small_disk) -> None:
    folder, _ = library
    disk = small_disk("16k")
    code, _, err = run("embed", folder, "-e", ENCODER, "-o", disk / "s.h5", "--no-progress")
    assert code == USER_ERROR_EXIT and "no space left on device" in err and err.count("\n") == 1
    assert os.listdir(disk) == []


# ------------------------------------------------------------------------- 3. one writer per store name
WRITER = """
import sys, time
import h5py
handle = h5py.File(sys.argv[1], "r+")  # what an appending `embed` holds: HDF5's writer lock
print("ready", flush=True)
time.sleep(60)
"""


def test_a_store_being_written_is_never_replaced(library, tmp_path: Path) -> None:
    folder, _ = library
    store_path = tmp_path / "s.h5"
    with EmbeddingStore.create(store_path, {"dim": 4}, 4) as store:
        store.append(["a"], np.ones((1, 4), np.float32))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store_path)], stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == b"ready"
        for force in ([], ["--force"]):
            code, _, err = run("embed", folder, "-e", ENCODER, "-o", store_path, *force, "--no-progress")
            assert code == USER_ERROR_EXIT and "being written by another process" in err, err
        with pytest.raises(StoreError, match="being written by another process"):
            EmbeddingStore.create(store_path, {"dim": 4}, 4, force=True)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    with EmbeddingStore.open(store_path) as store:
        assert store.ids == ["a"]  # the writer's store, untouched


def test_two_creators_of_a_new_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qvimclap.store as store_module

    store_path = tmp_path / "s.h5"
    reserve = store_module._reserve

    def other_process_creates_it_meanwhile(path: Path, size: int) -> None:
        reserve(path, size)
        if not others:
            others.append(None)
            others[0] = EmbeddingStore.create(store_path, {"dim": 4}, 4)

    others: list[EmbeddingStore | None] = []
    monkeypatch.setattr(store_module, "_reserve", other_process_creates_it_meanwhile)
    with pytest.raises(StoreError, match="another process has just created this store"):
        EmbeddingStore.create(store_path, {"dim": 8}, 8)
    assert others[0] is not None
    others[0].close()
    with EmbeddingStore.open(store_path) as store:
        assert store.dim == 4  # the first one stays
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]


# -------------------------------------------------------------------- 4. two folders, one relative name
def test_same_name_in_two_folders_is_never_skipped(tmp_path: Path) -> None:
    col_a = write_clips(tmp_path / "sounds" / "colA", [220.0])[0]
    col_b = write_clips(tmp_path / "sounds" / "colB", [660.0])[0]
    store_path = tmp_path / "s.h5"
    assert run("embed", col_a.parent, "-e", ENCODER, "-o", store_path, "--no-progress")[0] == 0
    code, out, err = run("embed", col_b.parent, "-e", ENCODER, "-o", store_path, "--no-progress")
    assert code == USER_ERROR_EXIT, out
    assert f"id 'clip00.wav' is already stored from {col_a}, not from {col_b}" in err
    code, out, _ = run("embed", col_a.parent, "-e", ENCODER, "-o", store_path, "--no-progress")
    assert code == 0 and "already stored 1" in out  # the same folder resumes

    both = tmp_path / "both.h5"
    code, out, err = run("embed", tmp_path / "sounds", "-e", ENCODER, "-o", both, "--no-progress")
    assert code == 0 and "added 2" in out, err
    with EmbeddingStore.open(both) as store:
        assert store.ids == ["colA/clip00.wav", "colB/clip00.wav"]


# ------------------------------------------------------------------ 5. samples far beyond full scale
def test_out_of_range_samples_are_the_files_fault(tmp_path: Path) -> None:
    folder = tmp_path / "sounds"
    write_clips(folder, [220.0, 440.0])
    bad = folder / "loud.wav"
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    sf.write(bad, (1e30 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    reason = f"{bad}: samples reach 1e+30, far beyond full scale"

    code, out, _ = run("data", "check", folder)
    assert code == 1 and reason in out
    code, out, err = run("embed", folder, "-e", ENCODER, "-o", tmp_path / "s.h5", "--no-progress")
    assert code == 0 and "added 2, already stored 0, unusable 1" in out
    assert reason in err
    code, _, err = run("index", tmp_path / "s.h5", "-o", tmp_path / "s.faiss")
    assert code == 0, err
    code, _, err = run("search", bad, "--index", tmp_path / "s.faiss")
    assert code == USER_ERROR_EXIT and err.startswith(f"Error: {reason}")


# --------------------------------------------------------------------- 8. nothing left behind by embed
def test_bad_batch_size_leaves_no_store(library, tmp_path: Path) -> None:
    folder, _ = library
    code, _, err = run("embed", folder, "-e", ENCODER, "-o", tmp_path / "s.h5", "--batch-size", "0")
    assert code == USER_ERROR_EXIT and "batch size must be at least 1, got 0" in err
    assert not (tmp_path / "s.h5").exists()
