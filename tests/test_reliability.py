"""Faults a hostile user meets (issue 12): full disks, concurrent writers, colliding folders, corrupt files.

Disk-full cases run on a small tmpfs mounted for the test (skipped, with the reason, where mounting is not
allowed). The encoder is a fixed random projection of spectra (``_tiny_audioldm.TinyEmbedder``) on a dozen
half-second clips: what is tested is where rows go, not what they hold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _faults import ENCODER, SAMPLE_RATE, resize, run, tiny_embedders, tmpfs, write_clips

from qvimclap import api
from qvimclap.cli import app
from qvimclap.cli._app import USER_ERROR_EXIT
from qvimclap.errors import StoreError
from qvimclap.store import EmbeddingStore


@pytest.fixture(scope="module", autouse=True)
def _tiny_encoder() -> Iterator[None]:
    patch = pytest.MonkeyPatch()
    tiny_embedders(patch)
    yield
    patch.undo()


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
def tiny_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores start at 2 rows, so a dozen clips grow the file three times."""
    import qvimclap.store as store_module

    create = EmbeddingStore.create.__func__
    monkeypatch.setattr(store_module, "_MIN_CAPACITY", 2)
    monkeypatch.setattr(
        EmbeddingStore, "create", classmethod(lambda cls, *a, **k: create(cls, *a, **{**k, "capacity": 2}))
    )


# ------------------------------------------------------------------------------- 1. full disk during embed
def test_full_disk_stops_embed_with_complete_rows_and_resumes(library, tmp_path, tiny_capacity) -> None:
    folder, expected = library
    with tmpfs(tmp_path, "64k") as disk:  # room for up to 8 rows; growing to 16 needs both files at once
        _fill_and_resume(folder, expected, disk / "s.h5")


def _fill_and_resume(folder: Path, expected: dict[str, np.ndarray], store_path: Path) -> None:
    disk = store_path.parent
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


def test_a_creator_killed_before_publishing_leaves_nothing_for_long(library, tmp_path: Path) -> None:
    from qvimclap.files import temp_name

    folder, _ = library
    store_path = tmp_path / "s.h5"
    leftover = temp_name(store_path)  # what a creator killed mid-way leaves: unlocked, unpublished
    leftover.write_bytes(b"half an HDF5 file")
    code, _, err = run("embed", folder, "-e", ENCODER, "-o", store_path, "--no-progress")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]


def test_full_disk_on_a_new_store_leaves_nothing(library, tmp_path) -> None:
    folder, _ = library
    with tmpfs(tmp_path, "16k") as disk:
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


# ------------------------------------------------------------- fault injection: embed killed anywhere
def _embed_and_die(folder: str, store_path: str, encoder: str, kill_at: int) -> None:
    """A forked `qvimclap embed` that SIGKILLs itself at its ``kill_at``-th HDF5 write (0: never)."""
    import itertools

    import h5py

    import qvimclap.store as store_module

    create = EmbeddingStore.create.__func__
    store_module._MIN_CAPACITY = 2  # grow at 2, 4, 8 and 16 rows
    EmbeddingStore.create = classmethod(lambda cls, *a, **k: create(cls, *a, **{**k, "capacity": 2}))
    writes, setitem = itertools.count(1), h5py.Dataset.__setitem__
    tiny_embedders(pytest.MonkeyPatch())

    def write_or_die(self, key, value):
        if next(writes) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return setitem(self, key, value)

    h5py.Dataset.__setitem__ = write_or_die
    try:
        app(["embed", folder, "-e", encoder, "-o", store_path, "--batch-size", "2", "--no-progress"])
    except SystemExit as done:
        os._exit(int(done.code or 0))
    os._exit(0)


def test_embed_killed_at_random_points_and_on_a_full_disk_keeps_only_complete_rows(
    library, tmp_path: Path
) -> None:
    import multiprocessing

    folder, expected = library
    try:  # a disk that fills up when the store grows from 8 to 16 rows
        disk = tmp_path / "disk"
        disk.mkdir()
        mounted = (
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode == 0
        )
    except OSError:
        mounted = False
    store_path = (disk if mounted else tmp_path) / "s.h5"
    # Children fork from a server that imported qvimclap once (no torch state yet): a kill costs no start-up.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qvimclap.cli", "qvimclap.api"])
    rng = np.random.default_rng(12)
    codes = []
    try:
        for kill_at in [*rng.integers(1, 25, size=6).tolist(), 0, 0]:
            child = context.Process(
                target=_embed_and_die, args=(str(folder), str(store_path), ENCODER, kill_at)
            )
            child.start()
            child.join(120)
            codes.append(child.exitcode)
            if store_path.exists():
                assert_complete_rows(store_path, expected, folder)
            if child.exitcode == USER_ERROR_EXIT:  # the disk was full: free space, then carry on
                assert mounted
                resize(disk, "256k")
        assert assert_complete_rows(store_path, expected, folder) == 12
        assert os.listdir(store_path.parent) == ["s.h5"]  # temporary files of killed writers are gone
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert codes.count(-signal.SIGKILL) >= 4, codes  # most runs were killed mid-way
    assert not mounted or USER_ERROR_EXIT in codes, codes  # and one met the full disk
