"""EmbeddingStore: round trip, growth, refusals, resume, kill-safety, reading during appends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qvimclap.errors import FingerprintMismatchError, StoreError
from qvimclap.store import EmbeddingStore

DIM = 8
FP = {
    "encoder": "test",
    "model": "t",
    "weights_sha256": "ab" * 32,
    "preprocessing": {"sr": 16000},
    "dim": DIM,
}


def row_of(n: int) -> np.ndarray:
    """The embedding the writer stores for id ``i<n>``: recognisable, so torn rows would show."""
    return (n + np.arange(DIM, dtype=np.float32) / DIM).astype(np.float32)


def _append_range(store: EmbeddingStore, start: int, stop: int) -> None:
    ids = [f"i{n}" for n in range(start, stop)]
    meta = [
        {"source_path": f"/x/é{n}.wav", "label": f"c{n % 3}", "duration_s": n / 10, "sample_rate": 16000}
        for n in range(start, stop)
    ]
    store.append(ids, np.stack([row_of(n) for n in range(start, stop)]), meta)


def _assert_consistent(store: EmbeddingStore) -> None:
    n = len(store)
    assert store.ids == [f"i{k}" for k in range(n)]
    np.testing.assert_array_equal(
        store.embeddings, np.stack([row_of(k) for k in range(n)]) if n else np.zeros((0, DIM), np.float32)
    )


def test_round_trip_and_growth(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with EmbeddingStore.create(path, FP, DIM, capacity=1, embedder_spec="clap:scratch") as store:
        for start in range(0, 300, 37):  # capacity 64 -> grows several times
            _append_range(store, start, min(start + 37, 300))
        assert len(store) == 300
    with EmbeddingStore.open(path) as store:
        _assert_consistent(store)
        assert store.fingerprint == FP and store.dim == DIM and store.embedder_spec == "clap:scratch"
        assert store.metadata("i5") == {
            "id": "i5",
            "source_path": "/x/é5.wav",
            "duration_s": 0.5,
            "sample_rate": 16000,
            "label": "c2",
        }
        np.testing.assert_array_equal(
            store.get(["i7", "i2", "i7"]), np.stack([row_of(7), row_of(2), row_of(7)])
        )
        assert store.column("label")[:4] == ["c0", "c1", "c2", "c0"]
        batches = list(store.iter_batches(128))
        assert [len(ids) for ids, _ in batches] == [128, 128, 44]
        np.testing.assert_array_equal(np.concatenate([x for _, x in batches]), store.embeddings)
        assert "i299" in store and "i300" not in store
        with pytest.raises(StoreError, match="not in the store"):
            store.get(["nope"])
        with pytest.raises(StoreError, match="read-only"):
            _append_range(store, 300, 301)
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]  # no temporary files left behind


def test_refusals(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    store = EmbeddingStore.create(path, FP, DIM)
    _append_range(store, 0, 3)
    with pytest.raises(StoreError, match="NaN or Inf"):
        store.append(["a", "b"], np.stack([row_of(0), np.full(DIM, np.nan, np.float32)]))
    with pytest.raises(StoreError, match=r"shape \[1, 8\]"):
        store.append(["a"], np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(StoreError, match="already stored"):
        store.append(["i1"], row_of(1)[None])
    with pytest.raises(StoreError, match="duplicate"):
        store.append(["a", "a"], np.zeros((2, DIM), np.float32))
    with pytest.raises(StoreError, match="unknown metadata"):
        store.append(["a"], np.zeros((1, DIM), np.float32), [{"colour": "red"}])
    other = {**FP, "weights_sha256": "cd" * 32, "qvimclap_version": "9"}
    with pytest.raises(FingerprintMismatchError, match="weights_sha256: expected") as err:
        store.append(["a"], np.zeros((1, DIM), np.float32), fingerprint=other)
    assert "qvimclap_version" not in str(err.value)  # informational keys never block an append
    store.append(["a"], np.zeros((1, DIM), np.float32), fingerprint={**FP, "qvimclap_version": "9"})
    assert len(store) == 4  # refused appends left nothing behind
    store.close()
    with pytest.raises(StoreError, match="already exists.*--force"):
        EmbeddingStore.create(path, FP, DIM)
    with EmbeddingStore.create(path, FP, DIM, force=True) as fresh:
        assert len(fresh) == 0
    with pytest.raises(StoreError, match="no such embedding store"):
        EmbeddingStore.open(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        EmbeddingStore.open(tmp_path / "junk.h5")


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import FP, DIM, _append_range
    from qvimclap.store import EmbeddingStore
    path, start = sys.argv[1], int(sys.argv[2])
    store = EmbeddingStore.open(path, "a") if start else EmbeddingStore.create(path, FP, DIM, capacity=1)
    n = len(store)
    print("ready", flush=True)
    while True:  # append until killed; batches of 7 rows, growing the file now and then
        _append_range(store, n, n + 7)
        n += 7
    """
)


def _start_writer(path: Path, start: int) -> subprocess.Popen:
    code = WRITER.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(start)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def test_killed_writer_leaves_complete_rows_and_readers_follow(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    seen = 0
    for delay in [0.15, 0.4, 0.05]:
        proc = _start_writer(path, start=seen)
        try:
            # While it appends, a reader sees a growing, always-complete prefix.
            with EmbeddingStore.open(path) as reader:
                counts = []
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    reader.refresh()
                    _assert_consistent(reader)
                    counts.append(len(reader))
                assert counts == sorted(counts)
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # at an arbitrary point of an append
            proc.wait()
        with EmbeddingStore.open(path) as store:
            _assert_consistent(store)
            assert len(store) % 7 == 0 and len(store) >= seen
            seen = len(store)
    assert seen > 0
    # Resume after the kills: appending continues where the committed rows end.
    with EmbeddingStore.open(path, "a") as store:
        _append_range(store, seen, seen + 3)
    with EmbeddingStore.open(path) as store:
        _assert_consistent(store)
        assert len(store) == seen + 3


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    EmbeddingStore.create(path, FP, DIM).close()
    proc = _start_writer(path, start=1)
    try:
        with pytest.raises(StoreError, match="being written by another process"):
            EmbeddingStore.open(path, "a")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
