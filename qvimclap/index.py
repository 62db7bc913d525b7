"""Inner-product indexes over stored embeddings, with the id mapping and fingerprint in the same file.

An index file is one file, written atomically (format version 2)::

    payload | UTF-8 JSON header | uint64 little-endian header length | b"QVIMIDX2"

The payload comes first so that it starts at offset 0 and is opened memory-mapped: for ``flat`` it is the raw
little-endian float32 ``[N, D]`` matrix (``np.memmap``); for the other kinds it is the FAISS index, read with
``faiss.IO_FLAG_MMAP_IFC`` (FAISS ignores the bytes after it). Search therefore starts without reading the
whole file; pages are read as they are touched. Version 1 files (``b"QVIMIDX1"`` | header length | header |
FAISS bytes) are still read, into memory.

The JSON header holds ``kind``, search ``params``, ``dim``, ``num_vectors``, the store's ``fingerprint`` and
``embedder_spec``, the ``center`` (or null), the ``ids``, source ``paths`` and ``labels`` ("" where unknown)
of every vector in index order, and for ``ivfpq`` the ``stores`` whose float32 vectors re-rank its
candidates.

Scores are cosine similarities after centring: by default an index subtracts the mean of the vectors it holds
(the ``center``, fitted once at build time and stored) from them and from every query, and re-normalises
both. Embeddings from one encoder share a common direction (a CLAP space is a narrow cone), and that shared
part only adds a per-vector bias to raw cosines; measured on the built-in corpus, centring raised validation
MRR from 0.151 to 0.179 in CLAP space and from 0.503 to 0.514 in QVIM space (``bench/bench_align.py``).
``center=False`` keeps raw cosine similarities.

Kinds: ``flat`` (exact, the default), ``hnsw`` (graph; fast single queries on large libraries), ``ivf``
(inverted lists over k-means cells; fast batched queries) and ``ivfpq`` (inverted lists of product-quantised
codes, 64 bytes a 512-d vector instead of 2048, whose candidates are re-ranked exactly against the store's
float32 vectors, memory-mapped). ``auto`` picks one from the number of vectors and a memory budget
(:func:`plan_index`). Parameters are chosen from the number of vectors by :func:`default_params` and can be
overridden.

Exact (flat) search is a BLAS matrix product in numpy rather than FAISS's ``IndexFlatIP``, which measured
0.3x numpy here (``bench/bench_index.py --investigate``): FAISS 1.15 sends batches of fewer than
``distance_compute_blas_threshold / d`` queries (250 at d=512) down a path that scans the whole library once
per query, and its single-query search ran 3x slower on its 2 OpenMP threads than on 1 on 2 shared cores.

Flat and IVF indexes search on a GPU when faiss was built with GPU support and a GPU is present (same results
up to float32 round-off); HNSW and IVF-PQ always run on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qvimclap.errors import FingerprintMismatchError, MissingDependencyError, StoreError

logger = logging.getLogger(__name__)

MAGIC = b"QVIMIDX1"  # version 1: header first, FAISS bytes after it (read into memory)
TRAILER_MAGIC = b"QVIMIDX2"  # version 2: payload first (memory-mapped), header at the end
FORMAT_VERSION = 2
KINDS = ("flat", "hnsw", "ivf", "ivfpq")
#: Below this many vectors ``auto`` keeps exact search: a flat scan of 50k 512-d vectors takes ~10 ms.
AUTO_FLAT_MAX = 50_000
#: Up to this many vectors ``auto`` picks HNSW when it fits (build minutes on 2 cores; beyond, hours).
AUTO_HNSW_MAX = 250_000
#: Rows of the library per matrix product in flat search: bounds the [Q, block] score matrix to 64 MB.
_FLAT_BLOCK_FLOATS = 1 << 24
_IO_FLAGS_MMAP = "IO_FLAG_MMAP_IFC"


def default_params(kind: str, num_vectors: int, dim: int = 512) -> dict[str, int]:
    """Index parameters for ``num_vectors`` vectors, tuned on 512-d embeddings (see ``bench/bench_index.py``).

    ``hnsw``: ``m`` links per node, ``ef_construction`` and ``ef_search`` beam widths. ``ivf``: ``nlist``
    k-means cells (about 2 sqrt(N), at least 39 training points each) and ``nprobe`` cells visited per query.
    ``ivfpq``: ``nlist`` (as ``ivf``), ``nprobe`` (at least 16), ``pq_m`` bytes per code (d/8),
    ``pq_nbits`` (8; fewer for tiny libraries, which cannot train 256 centroids per sub-space), ``opq`` (0/1:
    learn a rotation first) and ``rerank`` candidates re-scored exactly per query.
    """
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"m": 32, "ef_construction": 128, "ef_search": 128}
    if kind == "ivf":
        nlist = max(1, min(int(2 * math.sqrt(num_vectors)), num_vectors // 39))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, int(math.ceil(nlist / 16))))}
    if kind == "ivfpq":
        nlist = max(1, min(int(2 * math.sqrt(num_vectors)), num_vectors // 39))
        return {
            "nlist": nlist,
            "nprobe": min(nlist, max(16, int(math.ceil(nlist / 64)))),
            "pq_m": _pq_bytes(dim, max(1, dim // 8)),
            "pq_nbits": max(1, min(8, int(math.log2(max(2, num_vectors // 39))))),
            "opq": 0,
            "rerank": 100,
        }
    raise StoreError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)} or auto")


def _pq_bytes(dim: int, at_most: int) -> int:
    """The largest divisor of ``dim`` not above ``at_most`` (a PQ splits the vector into equal sub-spaces)."""
    return max(m for m in range(1, max(1, at_most) + 1) if dim % m == 0)


def index_memory(kind: str, num_vectors: int, dim: int, params: Mapping[str, int]) -> int:
    """Bytes the index structure needs in memory to search (FAISS's layouts; ids and paths not included)."""
    n, d = num_vectors, dim
    if kind == "flat":
        return n * d * 4
    if kind == "hnsw":  # vectors + level-0 links (2m int32) + upper levels (~1/m of nodes, m links each)
        m = int(params["m"])
        return n * (d * 4 + 2 * m * 4 + 4 * 4 + 8) + n * 4 * m // max(1, m - 1)
    if kind == "ivf":
        return n * (d * 4 + 8) + int(params["nlist"]) * d * 4
    if kind == "ivfpq":
        m, nbits = int(params["pq_m"]), int(params["pq_nbits"])
        code = (m * nbits + 7) // 8
        return (
            n * (code + 8)
            + int(params["nlist"]) * d * 4
            + d * (1 << nbits) * 4
            + int(params["opq"]) * d * d * 4
        )
    raise StoreError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)} or auto")


def parse_memory(text: str | int | None) -> int | None:
    """``"4G"``, ``"512M"``, ``"1.5GB"``, ``"300k"`` or a number of bytes -> bytes (``None`` stays None)."""
    if text is None or isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if scale > 1 else s)
    except ValueError:
        raise StoreError(f"memory budget {text!r} is not understood; write e.g. 4G, 512M or 2GB") from None
    if value <= 0:
        raise StoreError(f"memory budget must be positive, got {text!r}")
    return int(value * scale)


def default_memory_budget() -> int:
    """Half this machine's physical memory: the index shares it with the encoder and everything else."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


@dataclass(frozen=True)
class IndexPlan:
    """What :func:`plan_index` chose: the kind, its parameters and the memory it will need."""

    kind: str
    params: dict[str, int]
    num_vectors: int
    dim: int
    memory_bytes: int
    max_memory: int
    reasons: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return (
            f"{self.kind} index of {self.num_vectors:,} vectors, dim {self.dim}: needs "
            f"{_human(self.memory_bytes)} to search, budget {_human(self.max_memory)}{why}"
        )


def plan_index(
    num_vectors: int,
    dim: int,
    *,
    kind: str = "auto",
    max_memory: int | str | None = None,
    params: Mapping[str, int] | None = None,
) -> IndexPlan:
    """Choose the kind (for ``"auto"``) and parameters of an index for ``num_vectors`` ``dim``-d vectors
    within ``max_memory`` bytes (default: half of physical memory), and say how much memory it needs.

    ``auto``: exact ``flat`` up to 50,000 vectors; then, when the full float32 vectors fit the budget,
    ``hnsw`` up to 250,000 and ``ivf`` beyond; otherwise ``ivfpq`` with codes sized to fit (fewer PQ bytes
    per vector until they do). An explicit kind that does not fit raises StoreError.
    """
    budget = parse_memory(max_memory) or default_memory_budget()
    n = int(num_vectors)
    reasons: list[str] = []
    if kind == "auto":
        full = {k: index_memory(k, n, dim, default_params(k, n, dim)) for k in ("flat", "hnsw", "ivf")}
        if n <= AUTO_FLAT_MAX and full["flat"] <= budget:
            kind, reasons = "flat", [f"at most {AUTO_FLAT_MAX:,} vectors: exact search is fast enough"]
        elif n <= AUTO_HNSW_MAX and full["hnsw"] <= budget:
            kind, reasons = "hnsw", [f"at most {AUTO_HNSW_MAX:,} vectors and the full vectors fit"]
        elif full["ivf"] <= budget:
            kind, reasons = "ivf", ["the full vectors fit the budget"]
        else:
            kind, reasons = "ivfpq", ["the full vectors do not fit the budget: compressed codes"]
    chosen = {**default_params(kind, n, dim), **(params or {})}
    if kind == "ivfpq" and not (params and "pq_m" in params):
        while index_memory(kind, n, dim, chosen) > budget and chosen["pq_m"] > 1:
            chosen["pq_m"] = _pq_bytes(dim, chosen["pq_m"] - 1)
    need = index_memory(kind, n, dim, chosen)
    if need > budget:
        raise StoreError(
            f"a {kind} index of {n:,} vectors of dim {dim} needs {_human(need)}, over the memory budget "
            f"{_human(budget)}; raise --max-memory or use --kind ivfpq (compressed) or auto"
        )
    return IndexPlan(kind, chosen, n, dim, need, budget, tuple(reasons))


def _human(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


class VectorIndex:
    """An inner-product index plus the ids (and source paths) of its vectors and their fingerprint.

    ``flat`` indexes hold their (centred, normalised) vectors as an ``[N, D]`` float32 array, possibly a
    memory map; the other kinds hold a FAISS index. ``ivfpq`` indexes also hold the float32 vectors their
    candidates are re-ranked against (:class:`RowSource`).
    """

    def __init__(
        self,
        faiss_index: Any,
        ids: Sequence[str],
        *,
        fingerprint: Mapping[str, Any],
        kind: str,
        params: Mapping[str, int],
        paths: Sequence[str] | None = None,
        embedder_spec: str | None = None,
        center: np.ndarray | None = None,
        device: str = "auto",
        vectors: np.ndarray | None = None,
        rerank: RowSource | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        size = len(vectors) if faiss_index is None else faiss_index.ntotal
        assert size == len(ids), "index and id list disagree"
        assert (faiss_index is None) == (kind == "flat"), "flat indexes keep vectors, other kinds faiss"
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        self.cpu_index = faiss_index
        self.vectors = vectors
        self.rerank = rerank
        self.ids = list(ids)
        self.paths = list(paths) if paths is not None else [""] * len(self.ids)
        self.labels = list(labels) if labels is not None else [""] * len(self.ids)  # "" where unknown
        self.fingerprint = dict(fingerprint)
        self.kind = kind
        self.params = dict(params)
        self.embedder_spec = embedder_spec
        self._dim = int(vectors.shape[1] if faiss_index is None else faiss_index.d)
        self._gpu_index = _to_device(faiss_index, vectors, kind, device)
        self.on_gpu = self._gpu_index is not None

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ build / save / load
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str],
        *,
        fingerprint: Mapping[str, Any],
        kind: str = "flat",
        params: Mapping[str, int] | None = None,
        paths: Sequence[str] | None = None,
        embedder_spec: str | None = None,
        center: bool = True,
        device: str = "auto",
        rerank: RowSource | None = None,
        labels: Sequence[str] | None = None,
    ) -> VectorIndex:
        """Index ``embeddings`` ``[N, D]`` float32 (finite) under ``ids`` (unique strings, one per row).

        ``center``: subtract the mean of ``embeddings`` from them and from every query (ignored for fewer
        than 2 vectors, whose mean is not a centre of anything). ``rerank`` (``ivfpq`` only): where the
        float32 vectors of the rows live (default: ``embeddings`` itself, which then cannot be saved).
        """
        x = _as_matrix(embeddings, "embeddings")
        own_copy = not np.shares_memory(x, np.asarray(embeddings))  # e.g. read from a memory-mapped store
        if len(ids) != x.shape[0]:
            raise StoreError(f"{len(ids)} ids for {x.shape[0]} embeddings; give one id per row")
        if len(set(ids)) != len(ids):
            raise StoreError("ids must be unique")
        if x.shape[0] == 0:
            raise StoreError("cannot build an index from 0 embeddings; embed some audio first")
        mean = x.mean(axis=0, dtype=np.float64).astype(np.float32) if center and x.shape[0] > 1 else None
        if kind == "ivfpq" and rerank is None:
            rerank = RowSource([x])
        if mean is not None:  # in place when x is our own copy: 1M x 512 floats is 2 GB
            x = centered(x, mean, inplace=own_copy and kind != "ivfpq")
        chosen = {**default_params(kind, x.shape[0], x.shape[1]), **(params or {})}
        index = None  # a flat index searches its vectors with numpy (flat_search); other kinds are faiss's
        if kind != "flat":
            index = _new_faiss_index(kind, x.shape[1], chosen)
            if kind in ("ivf", "ivfpq"):
                index.train(_training_sample(x, chosen))
            index.add(x)
            _apply_search_params(index, kind, chosen)
        return cls(
            index,
            ids,
            fingerprint=fingerprint,
            kind=kind,
            params=chosen,
            paths=paths,
            labels=labels,
            embedder_spec=embedder_spec,
            center=mean,
            device=device,
            vectors=x if kind == "flat" else None,
            rerank=rerank,
        )

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the index file atomically (temporary file, then rename); overwrites only with ``force``."""
        import faiss

        from qvimclap.files import atomic_path

        path = Path(path)
        check_output_path(path, force)
        if self.kind == "ivfpq" and (self.rerank is None or self.rerank.stores is None):
            raise StoreError(
                "an ivfpq index re-ranks against its store's vectors: build it from a store "
                "(`qvimclap index STORE --kind ivfpq`) to save it"
            )
        header = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params,
            "dim": self.dim,
            "num_vectors": len(self.ids),
            "fingerprint": self.fingerprint,
            "embedder_spec": self.embedder_spec,
            "center": None if self.center is None else self.center.tolist(),
            "stores": None if self.rerank is None else self.rerank.stores,
            "ids": self.ids,
            "paths": self.paths,
            "labels": self.labels,
        }
        header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
        with atomic_path(path) as tmp:
            if self.kind == "flat":
                with open(tmp, "wb") as fh:
                    step = max(1, _FLAT_BLOCK_FLOATS // self.dim)
                    for start in range(0, len(self.vectors), step):  # slabs: a memory map stays unread
                        fh.write(np.ascontiguousarray(self.vectors[start : start + step], dtype="<f4").data)
            else:
                faiss.write_index(self.cpu_index, str(tmp))  # straight to disk: no second copy in memory
            with open(tmp, "ab") as fh:
                header["payload_bytes"] = fh.tell()
                header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
                fh.write(header_bytes)
                fh.write(struct.pack("<Q", len(header_bytes)))
                fh.write(TRAILER_MAGIC)
                fh.flush()
                os.fsync(fh.fileno())
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", mmap: bool = True) -> VectorIndex:
        """Read an index file written by :meth:`save`; ``device`` is ``"auto"``, ``"cpu"`` or ``"gpu"``.

        ``mmap`` (default): the vectors or FAISS structures are memory-mapped, read from disk as searches
        touch them, instead of being read whole before the first search.
        """
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"{path}: is a folder, not an index file (written by `qvimclap index`)")
        if not path.is_file():
            raise StoreError(f"{path}: no such index file; build one with `qvimclap index`")
        header, index, vectors = _read_index_file(path, mmap=mmap)
        rerank = None
        if header["kind"] == "ivfpq":
            rerank = RowSource.from_stores(
                header.get("stores") or [], header["ids"], header["fingerprint"], path
            )
        if index is not None:
            _apply_search_params(index, header["kind"], header["params"])
        return cls(
            index,
            header["ids"],
            fingerprint=header["fingerprint"],
            kind=header["kind"],
            params=header["params"],
            paths=header["paths"],
            labels=header.get("labels"),  # absent in indexes written before labels were kept
            embedder_spec=header.get("embedder_spec"),
            center=header.get("center"),
            device=device,
            vectors=vectors,
            rerank=rerank,
        )

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` by inner product: ``queries`` ``[Q, D]`` (or ``[D]``) float32 ->
        ``(scores [Q, k'] float32 descending, ids [Q][k'])`` with ``k' = min(k, len(index))``."""
        scores, rows = self.search_rows(queries, k)
        return scores, [[self.ids[r] for r in row if r >= 0] for row in rows.tolist()]

    def search_rows(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` but returns row numbers ``[Q, k']`` int64 (-1 where an approximate index
        found fewer than ``k'`` vectors)."""
        q = _as_matrix(np.atleast_2d(queries), "queries")
        if q.shape[1] != self.dim:
            raise FingerprintMismatchError(
                f"query embeddings have dim {q.shape[1]} but the index holds dim {self.dim}; "
                "embed the query with the encoder that built the index"
            )
        if k < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        k = min(int(k), len(self.ids))
        if self.center is not None:
            q = centered(q, self.center)
        if self._gpu_index is not None:
            scores, rows = self._gpu_index.search(q, k)
        elif self.kind == "flat":
            scores, rows = flat_search(self.vectors, q, k)
        elif self.kind == "ivfpq":
            candidates = min(len(self.ids), max(k, int(self.params["rerank"])))
            rows = self.cpu_index.search(q, candidates)[1]
            scores, rows = self._rerank(q, rows, k)
        else:
            scores, rows = self.cpu_index.search(q, k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)

    def _rerank(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact centred cosines of each query's candidate rows (float32 rows of the store); top ``k``."""
        assert self.rerank is not None
        vectors = self.rerank.take(np.where(rows >= 0, rows, 0).ravel())
        if self.center is not None:
            vectors = centered(vectors, self.center)
        sims = np.einsum("qcd,qd->qc", vectors.reshape(*rows.shape, -1), q)
        sims[rows < 0] = -np.inf
        order = np.lexsort((rows, -sims), axis=-1)[:, :k]  # best first; ties by row, as flat search
        scores, found = np.take_along_axis(sims, order, 1), np.take_along_axis(rows, order, 1)
        found[~np.isfinite(scores)] = -1
        return np.nan_to_num(scores, neginf=-1.0), found


class RowSource:
    """Rows of one or more ``[N_i, D]`` float32 arrays (memory-mapped stores) as one stack, read on demand.

    ``stores``: ``[{"path", "rows"}]`` when the arrays are stores' embeddings (what an index file records),
    else ``None`` (in-memory arrays, not savable).
    """

    def __init__(self, arrays: Sequence[np.ndarray], stores: list[dict[str, Any]] | None = None) -> None:
        self.arrays = list(arrays)
        self.stores = stores
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Float32 vectors of ``rows`` (any order, repeats allowed) ``[len(rows), D]``."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # increasing rows: forward page reads from the memory map
        wanted = rows[order]
        out = np.empty((len(rows), self.arrays[0].shape[1]), np.float32)
        which = np.searchsorted(self.starts, wanted, side="right") - 1
        for i, array in enumerate(self.arrays):
            mask = which == i
            if mask.any():
                out[order[mask]] = array[wanted[mask] - self.starts[i]]
        return out

    @classmethod
    def from_stores(
        cls,
        stores: Sequence[Mapping[str, Any]],
        ids: Sequence[str],
        fingerprint: Mapping[str, Any],
        where: Path,
    ) -> RowSource:
        """Memory-map the stores an index was built from, checking they still hold the indexed rows."""
        from qvimclap.store import EmbeddingStore

        if not stores:
            raise StoreError(f"{where}: ivfpq index without its stores; rebuild it with `qvimclap index`")
        arrays, start = [], 0
        for entry in stores:
            store_path, rows = Path(entry["path"]), int(entry["rows"])
            with EmbeddingStore.open(store_path) as store:
                if (
                    store.fingerprint != dict(fingerprint)
                    or len(store) < rows
                    or store.ids[:rows] != list(ids[start : start + rows])
                ):
                    raise StoreError(
                        f"{where}: its re-ranking store {store_path} no longer holds the indexed vectors "
                        "(re-embedded or replaced); rebuild the index with `qvimclap index`"
                    )
                arrays.append(store.mapped_embeddings()[:rows])
            start += rows
        return cls(arrays, [dict(s) for s in stores])


def flat_search(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``q`` ``[Q, D]`` against ``x`` ``[N, D]``: one BLAS matrix product
    per block of library rows (the score matrix stays under 64 MB), top ``k`` kept as blocks go; ties are
    broken by the lower row."""
    n = x.shape[0]
    step = max(1024, _FLAT_BLOCK_FLOATS // max(1, len(q)))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, step):
        sims = q @ x[start : start + step].T
        kk = min(k, sims.shape[1])
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < sims.shape[1] else None
        if top is None:
            top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        best_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        best_r = np.concatenate([best_r, top + start], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_r = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_r, keep, 1)
    order = np.lexsort((best_r, -best_s), axis=-1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_r, order, 1)


def _read_index_file(path: Path, *, mmap: bool) -> tuple[dict[str, Any], Any, np.ndarray | None]:
    """``(header, faiss index or None, flat vectors or None)`` of an index file of either version."""
    import faiss

    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) == MAGIC:  # version 1
            if size < 16:
                raise StoreError(f"{path}: index file is truncated ({size} bytes); {_REBUILD}")
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 16:
                raise StoreError(
                    f"{path}: index header length says {header_len} bytes but only {size - 16} follow "
                    f"(truncated or damaged); {_REBUILD}"
                )
            header = _parse_header(fh.read(header_len), path)
            if header.get("format_version") != 1:
                raise StoreError(
                    f"{path}: index format version {header.get('format_version')} is not supported"
                )
            body = np.frombuffer(fh.read(), dtype=np.uint8)
            index = _deserialize(lambda: faiss.deserialize_index(body), path)
            return _v1_as_flat(header, index, path)
        if size < 16:
            raise StoreError(
                f"{path}: not a qvimclap index file (too short); rebuild it with `qvimclap index`"
            )
        fh.seek(size - 16)
        header_len, magic = struct.unpack("<Q", fh.read(8))[0], fh.read(8)
        if magic != TRAILER_MAGIC:
            raise StoreError(
                f"{path}: not a qvimclap index file (bad magic); rebuild it with `qvimclap index`"
            )
        if header_len > size - 16:
            raise StoreError(
                f"{path}: index header length says {header_len} bytes but the file has {size - 16} before "
                f"it (truncated or damaged); {_REBUILD}"
            )
        fh.seek(size - 16 - header_len)
        header = _parse_header(fh.read(header_len), path)
    if header.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: index format version {header.get('format_version')} is not supported")
    n, d, payload = header["num_vectors"], header["dim"], size - 16 - header_len
    if header.get("payload_bytes") != payload:
        raise StoreError(f"{path}: index file is truncated or corrupt; rebuild it with `qvimclap index`")
    if header["kind"] == "flat":
        if payload != n * d * 4:
            raise StoreError(f"{path}: flat vectors do not match the header; rebuild the index")
        if mmap:
            return header, None, np.memmap(path, dtype="<f4", mode="r", shape=(n, d))
        return header, None, np.fromfile(path, dtype="<f4", count=n * d).reshape(n, d)
    flags = (getattr(faiss, _IO_FLAGS_MMAP, 0) | faiss.IO_FLAG_READ_ONLY) if mmap else 0
    index = _deserialize(lambda: faiss.read_index(str(path), flags), path)
    if index.ntotal != n or index.d != d:
        raise StoreError(f"{path}: faiss data does not match its header; rebuild the index")
    return header, index, None


def _v1_as_flat(
    header: dict[str, Any], index: Any, path: Path
) -> tuple[dict[str, Any], Any, np.ndarray | None]:
    if index.ntotal != header["num_vectors"] or index.d != header["dim"]:
        raise StoreError(f"{path}: faiss data does not match its header; rebuild the index")
    if header["kind"] != "flat":
        return header, index, None
    import faiss

    vectors = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), index.ntotal * index.d)
    return header, None, np.array(vectors, dtype=np.float32).reshape(index.ntotal, index.d)


def _parse_header(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: corrupt index header ({err}); rebuild it") from None
    if not isinstance(header, dict) or header.get("kind") not in KINDS:
        raise StoreError(f"{path}: corrupt index header (no known kind); rebuild it")
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise StoreError(f"{path}: index header lacks {', '.join(missing)}; {_REBUILD}")
    if not isinstance(header["ids"], list) or len(header["ids"]) != header["num_vectors"]:
        raise StoreError(
            f"{path}: index header's ids do not match its {header['num_vectors']} vectors; {_REBUILD}"
        )
    return header


#: Header keys every index file has (``embedder_spec``, ``center``, ``stores``, ``labels`` are optional).
_HEADER_KEYS = ("format_version", "kind", "params", "dim", "num_vectors", "fingerprint", "ids", "paths")
_REBUILD = "rebuild it with `qvimclap index`"


def check_output_path(path: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a folder (even with ``force``), or an existing index without ``force``."""
    if path.is_dir():
        raise StoreError(f"{path}: is a folder; give the index a file name, e.g. {path / 'NAME.faiss'}")
    if path.exists() and not force:
        raise StoreError(f"{path}: index already exists; pass --force to overwrite it (force=True in Python)")


def _deserialize(read: Any, path: Path) -> Any:
    try:
        return read()
    except RuntimeError as err:
        raise StoreError(f"{path}: corrupt faiss data ({str(err).splitlines()[0]}); rebuild it") from None


def build_index_from_store(
    store_path: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    kind: str = "flat",
    force: bool = False,
    params: Mapping[str, int] | None = None,
    center: bool = True,
    max_memory: int | str | None = None,
    plan: IndexPlan | None = None,
) -> Path:
    """Index every committed embedding of the store(s) at ``store_path`` (one path, the ``--out`` of a
    parallel embed whose shards are then used, a glob, or a list of stores of one fingerprint with no id in
    two of them); write the index to ``out_path``. ``kind`` may be ``"auto"`` (see :func:`plan_index`)."""
    from qvimclap.shards import open_stores

    out_path = Path(out_path)
    check_output_path(out_path, force)
    if kind != "auto":
        default_params(kind, 1)  # validate kind before reading a large store
    with open_stores(store_path) as library:
        if library.num_rows == 0:
            raise StoreError(f"{library.describe()}: store is empty; nothing to index")
        if plan is None:
            plan = plan_index(library.num_rows, library.dim, kind=kind, max_memory=max_memory, params=params)
        rerank = RowSource(library.arrays, library.store_entries())
        if plan.kind == "ivfpq":
            index = _build_streaming_ivfpq(library, plan, center=center, rerank=rerank)
        else:
            embeddings = np.concatenate(library.arrays) if len(library.arrays) > 1 else library.arrays[0]
            bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
            if bad.size:  # stores refuse NaN, so a file was damaged or edited: say which and what to do
                raise StoreError(
                    f"{library.describe()}: {bad.size} stored embedding(s) contain NaN or Inf, e.g. id "
                    f"{library.ids[bad[0]]!r}; re-embed the store (qvimclap embed --force)"
                )
            index = VectorIndex.build(
                embeddings,
                library.ids,
                fingerprint=library.fingerprint,
                kind=plan.kind,
                params=plan.params,
                paths=library.column("source_path"),
                labels=library.column("label"),
                embedder_spec=library.embedder_spec,
                center=center,
                device="cpu",
            )
        return index.save(out_path, force=force)


def _build_streaming_ivfpq(library: Any, plan: IndexPlan, *, center: bool, rerank: RowSource) -> VectorIndex:
    """IVF-PQ over stores without loading them: the mean and the adds stream over memory-mapped slabs, the
    training reads a sample of rows."""
    n, d, step = plan.num_vectors, plan.dim, 65_536
    mean = None
    if center and n > 1:
        total = np.zeros(d, np.float64)
        for start in range(0, n, step):
            total += rerank.take(np.arange(start, min(n, start + step))).sum(0, dtype=np.float64)
        mean = (total / n).astype(np.float32)

    def slab(rows: np.ndarray) -> np.ndarray:
        x = _as_matrix(rerank.take(rows), "embeddings")
        return centered(x, mean) if mean is not None else x

    index = _new_faiss_index("ivfpq", d, plan.params)
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, _train_size(plan.params)), replace=False))
    index.train(slab(sample))
    for start in range(0, n, step):
        index.add(slab(np.arange(start, min(n, start + step))))
    _apply_search_params(index, "ivfpq", plan.params)
    return VectorIndex(
        index,
        library.ids,
        fingerprint=library.fingerprint,
        kind="ivfpq",
        params=plan.params,
        paths=library.column("source_path"),
        labels=library.column("label"),
        embedder_spec=library.embedder_spec,
        center=mean,
        device="cpu",
        rerank=rerank,
    )


def _train_size(params: Mapping[str, int]) -> int:
    """Training points: 64 per k-means cell and 64 per PQ centroid, at most 131,072 (k-means subsamples
    to this anyway; more only costs memory and time)."""
    return min(131_072, max(64 * int(params["nlist"]), 64 * (1 << int(params.get("pq_nbits", 8)))))


def _training_sample(x: np.ndarray, params: Mapping[str, int]) -> np.ndarray:
    size = _train_size(params)
    if len(x) <= size:
        return x
    return x[np.sort(np.random.default_rng(0).choice(len(x), size, replace=False))]


def centered(x: np.ndarray, center: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Rows of ``x`` ``[N, D]`` minus ``center`` ``[D]``, L2-normalised again (a row equal to the centre stays
    zero); ``inplace`` overwrites ``x`` (float32) instead of making a new array."""
    if inplace:
        x -= center
        y = x
    else:
        y = np.asarray(x, dtype=np.float32) - center  # a new array, normalised in place below
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y


def faiss_has_gpu() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _new_faiss_index(kind: str, dim: int, params: Mapping[str, int]) -> Any:
    import faiss

    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["ef_construction"])
        return index
    if kind in ("ivf", "ivfpq"):
        quantizer = faiss.IndexFlatIP(dim)
        nlist = int(params["nlist"])
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m, nbits = int(params["pq_m"]), int(params["pq_nbits"])
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            # PQ k-means costs n_train x 256 x d per iteration whatever the code size, in low-dimensional
            # sub-spaces where BLAS does not help: 64 points per centroid, 10 iterations keep it to seconds.
            index.pq.cp.seed = 0
            index.pq.cp.niter = 10
            index.pq.cp.max_points_per_centroid = 64
        index.cp.min_points_per_centroid = 1  # tiny libraries: one cell is fine, no warning
        index.cp.seed = 0  # reproducible k-means
        # k-means on a sample of 64 points per cell, 10 iterations: minutes become seconds at 1M vectors,
        # at no measurable cost in recall (bench/bench_index.py).
        index.cp.max_points_per_centroid = 64
        index.cp.niter = 10
        if kind == "ivfpq" and int(params.get("opq", 0)):
            opq = faiss.OPQMatrix(dim, int(params["pq_m"]))
            opq.niter = 20
            return faiss.IndexPreTransform(opq, index)  # the wrappers keep references to their parts
        return index
    raise StoreError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)} or auto")


def _apply_search_params(index: Any, kind: str, params: Mapping[str, int]) -> None:
    import faiss

    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    elif kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])


def _to_device(index: Any, vectors: np.ndarray | None, kind: str, device: str) -> Any:
    """A GPU copy to search with for flat/IVF when asked for (or "auto") and available, else None."""
    if device not in ("auto", "cpu", "gpu"):
        raise StoreError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "cpu":
        return None
    if not faiss_has_gpu():
        if device == "gpu":
            raise MissingDependencyError(
                "device='gpu' needs faiss with GPU support and a visible GPU; install faiss-gpu "
                "(pip install 'qvimclap[gpu]') or use device='cpu'"
            )
        return None
    if kind not in ("flat", "ivf"):  # faiss has no GPU HNSW; IVF-PQ re-ranks on CPU from the store
        return None
    import faiss

    if kind == "flat":
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu_index._resources = resources  # keep the GPU memory pool alive as long as the index
    return gpu_index


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise StoreError(f"{name} must be a 2-D [N, D] array, got shape {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise StoreError(f"{name} contain NaN or Inf values; refusing to index or search them")
    return arr
