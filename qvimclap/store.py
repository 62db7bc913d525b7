"""HDF5 embedding stores: one file holding ids, float32 embeddings, per-item metadata and a fingerprint.

Layout of a store file (``format = "qvimclap-embeddings"``, ``format_version = 1``)::

    attrs: format, format_version, dim, fingerprint (canonical JSON), embedder_spec, created
    /num_rows                 int64 [1]        rows committed; readers trust only rows below it
    /embeddings               float32 [C, D]   row i is the embedding of id i (rows >= num_rows: garbage)
    /ids/bytes, /ids/offsets  uint8 [B], int64 [C + 1]: id i is bytes[offsets[i]:offsets[i + 1]] (UTF-8)
    /metadata/source_path/..  same string layout      /metadata/label/..   same string layout
    /metadata/duration_s      float64 [C]      (NaN when unknown)
    /metadata/sample_rate     int32 [C]        native sample rate of the source file (0 when unknown)

Why not chunked, resizable datasets: resizing rewrites HDF5's internal metadata, and a process killed in the
middle of that (even in SWMR mode, which we tried) leaves a file h5py refuses to open ("invalid dataset size,
likely file corruption"). Here every dataset is allocated at its full capacity ``C`` when the file is made, so
an append only writes raw bytes into space that already exists, then bumps ``/num_rows``; the HDF5 structure
never changes in place. A kill at any moment leaves the previous committed rows intact. When capacity runs
out the store is copied into a file twice as large, which atomically replaces the old one (amortised O(1) per
row). Readers open without HDF5 file locking and call :meth:`EmbeddingStore.refresh` to see new rows, so a
store can be read while another process appends (single writer, many readers: the writer holds HDF5's lock).

Disk space is reserved (``posix_fallocate``) when a file is made or grown, before anything is committed to it:
the capacity would otherwise be sparse, and a full disk would fail the row writes inside HDF5's buffers, where
errors are only printed, while ``num_rows`` still committed rows that never reached the disk. So a full disk
fails the creation or the growth (the old file, still complete, stays), and a write that fails anyway (a
copy-on-write file system) is never committed: both raise :class:`~qvimclap.errors.WriteError`.

One writer per store name: a new file is published with ``link`` (which fails if another process published
one meanwhile), and replacing a store (``force``) first takes the writer lock of the file it replaces.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from qvimclap.errors import FingerprintMismatchError, StoreError, WriteError, write_error
from qvimclap.files import remove_stale_temps, temp_name
from qvimclap.fingerprint import canonical_json, fingerprint_differences

logger = logging.getLogger(__name__)

FORMAT = "qvimclap-embeddings"
FORMAT_VERSION = 1
#: Per-item metadata columns and their value when a row does not give one.
METADATA_DEFAULTS: dict[str, Any] = {"source_path": "", "duration_s": math.nan, "sample_rate": 0, "label": ""}
_STRING_COLUMNS = ("ids", "metadata/source_path", "metadata/label")
_MIN_CAPACITY = 64
_BYTES_PER_STRING = 64  # initial byte capacity per row of each string column


class EmbeddingStore:
    """An HDF5 embedding store; open with :meth:`create` or :meth:`open`, use as a context manager.

    ``embeddings`` are ``[N, D]`` float32 in insertion order; ``ids`` are unique strings (by convention the
    item's path relative to its dataset root).
    """

    def __init__(self, path: Path, mode: str, handle: Any) -> None:  # use create() / open()
        self.path = path
        self.mode = mode
        self._file = handle
        self._load_header()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        fingerprint: Mapping[str, Any],
        dim: int,
        *,
        force: bool = False,
        embedder_spec: str | None = None,
        capacity: int = 1024,
    ) -> EmbeddingStore:
        """Make an empty store at ``path`` and open it for appending.

        ``fingerprint`` describes what produced the embeddings (see :mod:`qvimclap.fingerprint`);
        ``embedder_spec`` (e.g. ``"clap:scratch"``) lets search re-create the query encoder; ``capacity`` is
        a size hint in rows (the store grows as needed). An existing ``path`` is replaced only with ``force``.
        """
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path}: is a folder; give the store a file name, e.g. {path / 'NAME.h5'}")
        if path.exists() and not force:
            raise StoreError(
                f"{path}: store already exists; pass --force to overwrite it (force=True in Python)"
            )
        if int(dim) <= 0:
            raise StoreError(f"{path}: embedding dim must be positive, got {dim}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(path.parent, err) or err from None
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": int(dim),
            "fingerprint": canonical_json(dict(fingerprint)),
            "embedder_spec": embedder_spec or "",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        capacity = max(_MIN_CAPACITY, int(capacity))
        nbytes = capacity * _BYTES_PER_STRING
        remove_stale_temps(path)  # a creator killed before publishing left its file
        if not path.exists():
            return cls(path, "a", _write_file(path, header, capacity, nbytes, source=None, replace=False))
        with _writer_lock(path):  # never replace a store another process is still writing
            handle = _write_file(path, header, capacity, nbytes, source=None, replace=True)
        return cls(path, "a", handle)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> EmbeddingStore:
        """Open an existing store: ``mode="r"`` to read (no lock), ``"a"`` to append (one writer)."""
        import h5py

        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"{path}: mode must be 'r' or 'a', got {mode!r}")
        if path.is_dir():
            raise StoreError(
                f"{path}: is a folder, not an embedding store (a .h5 file written by `qvimclap embed`)"
            )
        if not path.is_file():
            raise StoreError(f"{path}: no such embedding store; make one with `qvimclap embed`")
        try:
            if mode == "r":
                handle = h5py.File(path, "r", locking=False)
            else:
                handle = h5py.File(path, "r+")  # HDF5's exclusive file lock keeps a second writer out
                _remove_leftovers(path)
        except (OSError, BlockingIOError) as err:
            if mode == "a" and "lock" in str(err).lower():
                raise StoreError(f"{path}: store is being written by another process; wait for it") from None
            raise StoreError(f"{path}: not a readable HDF5 embedding store ({err})") from None
        if handle.attrs.get("format") != FORMAT:
            handle.close()
            raise StoreError(f"{path}: not a qvimclap embedding store (missing format attribute {FORMAT!r})")
        return cls(path, mode, handle)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass

    def refresh(self) -> None:
        """Readers: pick up rows committed by a writer since this store was opened."""
        if self.mode != "r":
            return
        import h5py

        # Reopen rather than re-read: HDF5 caches small reads, and a grown store is a new file (new inode).
        self._file.close()
        self._file = h5py.File(self.path, "r", locking=False)
        self._load_header()

    # ------------------------------------------------------------------ reading
    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    @property
    def embedder_spec(self) -> str | None:
        return self._embedder_spec

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return self._num_rows

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    @property
    def ids(self) -> list[str]:
        """Committed ids in insertion order."""
        return list(self._ids)

    @property
    def embeddings(self) -> np.ndarray:
        """All committed embeddings, ``[N, D]`` float32."""
        return np.asarray(self._file["embeddings"][: self._num_rows], dtype=np.float32)

    def mapped_embeddings(self) -> np.ndarray:
        """The committed embeddings ``[N, D]`` as a read-only memory map of the file: rows are read from disk
        (or the page cache) when touched, never all loaded. The dataset is contiguous and allocated when the
        file is made, so its bytes sit at one fixed offset."""
        data = self._file["embeddings"]
        offset = data.id.get_offset()
        if self._num_rows == 0 or offset is None or data.dtype != np.dtype("<f4") or data.chunks is not None:
            return self.embeddings
        return np.memmap(self.path, dtype="<f4", mode="r", offset=offset, shape=(self._num_rows, self._dim))

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Embeddings of ``ids`` in order, ``[len(ids), D]`` float32; unknown ids raise StoreError."""
        rows = self.rows_of(ids)
        if not rows:
            return np.zeros((0, self._dim), dtype=np.float32)
        unique = sorted(set(rows))  # h5py reads increasing indices only
        block = self._file["embeddings"][unique]
        where = {row: i for i, row in enumerate(unique)}
        return np.asarray(block[[where[r] for r in rows]], dtype=np.float32)

    def rows_of(self, ids: Sequence[str]) -> list[int]:
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise StoreError(
                f"{self.path}: {len(missing)} id(s) not in the store, e.g. {missing[0]!r}; see store.ids"
            )
        return [self._row_of[i] for i in ids]

    def metadata(self, item_id: str) -> dict[str, Any]:
        """``{"id", "source_path", "duration_s", "sample_rate", "label"}`` of one item."""
        row = self.rows_of([item_id])[0]
        meta = self._file["metadata"]
        return {
            "id": item_id,
            "source_path": _read_strings(self._file["metadata/source_path"], row, row + 1)[0],
            "duration_s": float(meta["duration_s"][row]),
            "sample_rate": int(meta["sample_rate"][row]),
            "label": _read_strings(self._file["metadata/label"], row, row + 1)[0],
        }

    def column(self, name: str) -> list[Any]:
        """One metadata column for all committed rows (``source_path``, ``label``, ``duration_s``, ...)."""
        if name not in METADATA_DEFAULTS:
            raise StoreError(f"unknown metadata column {name!r}; expected one of {sorted(METADATA_DEFAULTS)}")
        if name in ("source_path", "label"):
            return _read_strings(self._file[f"metadata/{name}"], 0, self._num_rows)
        return self._file[f"metadata/{name}"][: self._num_rows].tolist()

    def iter_batches(self, batch_size: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(ids, embeddings [n, D] float32)`` in insertion order without loading the whole store."""
        for start in range(0, self._num_rows, batch_size):
            stop = min(start + batch_size, self._num_rows)
            yield self._ids[start:stop], np.asarray(self._file["embeddings"][start:stop], dtype=np.float32)

    def check_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise FingerprintMismatchError (listing what differs) unless ``fingerprint`` matches."""
        diffs = fingerprint_differences(self._fingerprint, dict(fingerprint))
        if diffs:
            raise FingerprintMismatchError(
                f"{self.path}: embeddings from a different model or preprocessing ({'; '.join(diffs)}); "
                "write them to a new store, or pass --force to replace this one"
            )

    # ------------------------------------------------------------------ writing
    def append(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadata_rows: Sequence[Mapping[str, Any]] | None = None,
        *,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> None:
        """Add rows and commit them (all or nothing): ``embeddings`` ``[n, D]`` finite float32.

        ``metadata_rows`` are dicts with any of ``source_path``, ``duration_s``, ``sample_rate``, ``label``.
        When ``fingerprint`` is given it must match the store's (FingerprintMismatchError otherwise).
        """
        if self.mode != "a":
            raise StoreError(f"{self.path}: store is open read-only; open it with mode='a' to append")
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        ids = [str(i) for i in ids]
        x = self._check_rows(ids, embeddings, metadata_rows)
        if not ids:
            return
        columns = _metadata_columns(metadata_rows, len(ids))
        strings = {
            "ids": ids,
            "metadata/source_path": columns["source_path"],
            "metadata/label": columns["label"],
        }
        encoded = {name: [s.encode("utf-8") for s in values] for name, values in strings.items()}
        self._ensure_capacity(len(ids), {n: sum(map(len, e)) for n, e in encoded.items()})

        # 1. Write the rows beyond the committed count; a kill here leaves them as ignored garbage.
        start, stop = self._num_rows, self._num_rows + len(ids)
        f = self._file
        try:
            datasets = [f["embeddings"], f["metadata/duration_s"], f["metadata/sample_rate"]]
            datasets[0][start:stop] = x
            datasets[1][start:stop] = columns["duration_s"]
            datasets[2][start:stop] = columns["sample_rate"]
            for name, values in encoded.items():
                datasets += _write_strings(f[name], start, values)
            # 2. Make them durable (flushing each dataset raises a failed write, which closing would only
            #    print), then commit them by bumping the count (one 8-byte write).
            for dataset in datasets:
                dataset.flush()
            self._sync()
            f["num_rows"][0] = stop
            f.flush()
        except (OSError, RuntimeError) as err:
            problem = write_error(self.path, err)
            if problem is None:
                raise
            self._abandon()
            raise WriteError(
                f"{problem} (the store keeps its {start} complete rows; rerun to resume)"
            ) from None
        self._num_rows = stop
        for offset, item_id in enumerate(ids):
            self._row_of[item_id] = start + offset
        self._ids.extend(ids)

    def _check_rows(
        self, ids: list[str], embeddings: np.ndarray, metadata_rows: Sequence[Mapping[str, Any]] | None
    ) -> np.ndarray:
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape != (len(ids), self._dim):
            raise StoreError(
                f"{self.path}: expected embeddings of shape [{len(ids)}, {self._dim}] for {len(ids)} ids, "
                f"got {list(x.shape)}"
            )
        if metadata_rows is not None and len(metadata_rows) != len(ids):
            raise StoreError(f"{self.path}: {len(ids)} ids but {len(metadata_rows)} metadata rows")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = [ids[i] for i in np.flatnonzero(~finite)]
            raise StoreError(
                f"{self.path}: refusing to store {len(bad)} embedding(s) with NaN or Inf, e.g. {bad[0]!r}"
            )
        if len(set(ids)) != len(ids):
            raise StoreError(f"{self.path}: duplicate ids within one append")
        present = [i for i in ids if i in self._row_of]
        if present:
            raise StoreError(
                f"{self.path}: {len(present)} id(s) already stored, e.g. {present[0]!r}; skip them to resume"
            )
        return x.astype(np.float32, copy=False)

    def _sync(self) -> None:
        """Flush HDF5's buffers and fsync, so row bytes reach the disk before the count commits them."""
        self._file.flush()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ensure_capacity(self, num_new: int, new_bytes: Mapping[str, int]) -> None:
        f = self._file
        row_capacity = f["embeddings"].shape[0]
        byte_capacity = min(f[name]["bytes"].shape[0] for name in _STRING_COLUMNS)
        end_rows = self._num_rows + num_new
        end_bytes = max(int(f[name]["offsets"][self._num_rows]) + new_bytes[name] for name in _STRING_COLUMNS)
        if end_rows <= row_capacity and end_bytes <= byte_capacity:
            return
        rows = max(2 * row_capacity, end_rows) if end_rows > row_capacity else row_capacity
        nbytes = max(2 * byte_capacity, end_bytes) if end_bytes > byte_capacity else byte_capacity
        logger.info("growing %s to %d rows / %d string bytes", self.path, rows, nbytes)
        header = {key: f.attrs[key] for key in f.attrs}
        try:
            new = _write_file(self.path, header, rows, nbytes, source=(f, self._num_rows), replace=True)
        except WriteError as err:
            raise WriteError(f"{err} (the store keeps its {self._num_rows} complete rows)") from None
        f.close()
        self._file = new

    def _abandon(self) -> None:
        """Drop a file handle whose writes failed: nothing more is written through it."""
        handle, self._file, self.mode = self._file, None, "broken"
        with _quiet_unraisable():  # HDF5 retries the failed writes when closing and only prints the errors
            try:
                handle.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ internals
    def _load_header(self) -> None:
        f = self._file
        try:
            self._dim = int(f.attrs["dim"])
            self._fingerprint = json.loads(f.attrs["fingerprint"])
            self._embedder_spec = str(f.attrs.get("embedder_spec", "")) or None
            self._num_rows = int(f["num_rows"][0])
            capacity = int(f["embeddings"].shape[0])
            if not 0 <= self._num_rows <= capacity or f["embeddings"].shape[1:] != (self._dim,):
                raise ValueError(
                    f"num_rows {self._num_rows} for a capacity of {capacity} rows of dim {self._dim}"
                )
            self._ids = _read_strings(f["ids"], 0, self._num_rows)
        except (KeyError, ValueError, TypeError, IndexError, OSError, UnicodeDecodeError) as err:
            self.close()
            raise StoreError(
                f"{self.path}: malformed embedding store ({err}); re-embed it with --force"
            ) from None
        self._row_of = {item_id: row for row, item_id in enumerate(self._ids)}


def _new_dataset(group: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A contiguous dataset whose space is allocated now (not later: appends never touch HDF5 metadata)."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # no zero-filling: unused capacity stays sparse on disk
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def _write_file(
    path: Path,
    header: Mapping[str, Any],
    rows: int,
    nbytes: int,
    *,
    source: tuple[Any, int] | None,
    replace: bool,
) -> Any:
    """Write a store of the given capacity (copying ``num_rows`` from ``source``) to a temporary file, reserve
    its disk space, and publish it as ``path`` (``replace``: over an existing file, else only if ``path`` is
    still free); returns the new file, open for writing (lock kept)."""
    import h5py

    tmp = temp_name(path)
    try:
        f = h5py.File(tmp, "w")
    except (OSError, RuntimeError) as err:
        raise write_error(path, err) or err from None
    try:
        for key, value in header.items():
            f.attrs[key] = value
        dim = int(header["dim"])
        num_rows = _new_dataset(f, "num_rows", (1,), np.int64)
        _new_dataset(f, "embeddings", (rows, dim), np.float32)
        _new_dataset(f, "metadata/duration_s", (rows,), np.float64)
        _new_dataset(f, "metadata/sample_rate", (rows,), np.int32)
        for name in _STRING_COLUMNS:
            _new_dataset(f, f"{name}/bytes", (nbytes,), np.uint8)
            _new_dataset(f, f"{name}/offsets", (rows + 1,), np.int64)
        f.flush()
        _reserve(tmp, f.id.get_filesize())  # before any row is written: a full disk fails here, cleanly
        count = 0
        if source is not None:
            old, count = source
            step = max(1, (64 << 20) // (4 * dim))  # copy in ~64 MB slabs
            for start in range(0, count, step):
                stop = min(count, start + step)
                f["embeddings"][start:stop] = old["embeddings"][start:stop]
            for name in ("metadata/duration_s", "metadata/sample_rate"):
                f[name][:count] = old[name][:count]
            for name in _STRING_COLUMNS:
                end = int(old[name]["offsets"][count])
                f[name]["offsets"][: count + 1] = old[name]["offsets"][: count + 1]
                f[name]["bytes"][:end] = old[name]["bytes"][:end]
        else:
            for name in _STRING_COLUMNS:
                f[name]["offsets"][0] = 0
        num_rows[0] = count
        f.flush()
        _fsync(tmp)
        _publish(tmp, path, replace=replace)
    except BaseException as err:
        with _quiet_unraisable():
            try:
                f.close()
            except Exception:
                pass
        tmp.unlink(missing_ok=True)
        problem = write_error(path, err) if isinstance(err, (OSError, RuntimeError)) else None
        if problem is not None:
            raise problem from None
        raise
    return f


def _reserve(path: Path, size: int) -> None:
    """Allocate ``size`` bytes of disk for ``path`` now, so writes inside it cannot fail for space later."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, max(1, size))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A file system that cannot reserve (EINVAL, EOPNOTSUPP): appends still never commit a failed write.
        logger.debug("%s: cannot reserve disk space (%s)", path, err)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, *, replace: bool) -> None:
    """Give the finished temporary file its final name (atomically: readers see the old or the new file)."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # unlike rename, fails when another process made the store meanwhile
    except FileExistsError:
        raise StoreError(
            f"{path}: another process has just created this store and is writing it; wait for it to finish, "
            "then run again to resume"
        ) from None
    except OSError:  # a file system without hard links: rename (the race above is then not caught)
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock HDF5 writers take (``flock``) on the file at ``path``, or raise StoreError."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: HDF5's own lock is all there is
        yield
        return
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"{path}: store is being written by another process; wait for it to end before replacing it"
            ) from None
        yield


def _remove_leftovers(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed writers (a live writer holds its HDF5 lock)."""
    remove_stale_temps(path)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # qvimclap <= 0.1 named it so


@contextmanager
def _quiet_unraisable() -> Iterator[None]:
    """Silence errors that h5py can only print ("Exception ignored in ... __dealloc__") while closing a file
    whose writes failed: the failure has been reported once, as an exception."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        yield
    finally:
        sys.unraisablehook = hook


def _read_strings(group: Any, start: int, stop: int) -> list[str]:
    if stop <= start:
        return []
    offsets = group["offsets"][start : stop + 1]
    data = group["bytes"][int(offsets[0]) : int(offsets[-1])].tobytes()
    base = int(offsets[0])
    return [
        data[a - base : b - base].decode("utf-8")
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def _write_strings(group: Any, start: int, values: Sequence[bytes]) -> list[Any]:
    """Write one string column's rows; returns the datasets written (to flush)."""
    data, offsets = group["bytes"], group["offsets"]
    base = int(offsets[start])
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    ends = base + np.cumsum(lengths)
    if ends.size and ends[-1] > base:
        data[base : int(ends[-1])] = np.frombuffer(b"".join(values), dtype=np.uint8)
    offsets[start + 1 : start + 1 + len(values)] = ends
    return [data, offsets]


def _metadata_columns(rows: Sequence[Mapping[str, Any]] | None, n: int) -> dict[str, list[Any]]:
    rows = rows if rows is not None else [{}] * n
    columns: dict[str, list[Any]] = {key: [] for key in METADATA_DEFAULTS}
    for row in rows:
        unknown = set(row) - set(METADATA_DEFAULTS)
        if unknown:
            raise StoreError(
                f"unknown metadata key(s) {sorted(unknown)}; accepted: {sorted(METADATA_DEFAULTS)}"
            )
        for key, default in METADATA_DEFAULTS.items():
            value = row.get(key, default)
            columns[key].append(str(value) if isinstance(default, str) else value)
    columns["duration_s"] = [float(v) for v in columns["duration_s"]]
    columns["sample_rate"] = [int(v) for v in columns["sample_rate"]]
    return columns
