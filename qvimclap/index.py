"""FAISS inner-product indexes over stored embeddings, with the id mapping and fingerprint in the same file.

An index file is one file, written atomically::

    b"QVIMIDX1" | uint64 little-endian header length | UTF-8 JSON header | faiss.serialize_index bytes

The JSON header holds ``kind``, search ``params``, ``dim``, ``num_vectors``, the store's ``fingerprint`` and
``embedder_spec``, the ``center`` (or null), and the ``ids``, source ``paths`` and ``labels`` ("" where
unknown) of every vector in faiss order.

Scores are cosine similarities after centring: by default an index subtracts the mean of the vectors it holds
(the ``center``, fitted once at build time and stored) from them and from every query, and re-normalises
both. Embeddings from one encoder share a common direction (a CLAP space is a narrow cone), and that shared
part only adds a per-vector bias to raw cosines; measured on the built-in corpus, centring raised validation
MRR from 0.151 to 0.179 in CLAP space and from 0.503 to 0.514 in QVIM space (``bench/bench_align.py``).
``center=False`` keeps raw cosine similarities.

Kinds: ``flat`` (exact, the default), ``hnsw`` (graph; fast single queries on large libraries) and ``ivf``
(inverted lists over k-means cells; fast batched queries). Their parameters are chosen from the number of
vectors by :func:`default_params` and can be overridden. Flat and IVF indexes search on a GPU when faiss was
built with GPU support and a GPU is present (same results up to float32 round-off); HNSW always runs on CPU.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qvimclap.errors import FingerprintMismatchError, MissingDependencyError, StoreError

MAGIC = b"QVIMIDX1"
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivf")


def default_params(kind: str, num_vectors: int) -> dict[str, int]:
    """Index parameters for ``num_vectors`` vectors, tuned on 512-d embeddings (see ``bench/bench_index.py``).

    ``hnsw``: ``m`` links per node, ``ef_construction`` and ``ef_search`` beam widths. ``ivf``: ``nlist``
    k-means cells (about 2 sqrt(N), at least 39 training points each) and ``nprobe`` cells visited per query.
    """
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"m": 32, "ef_construction": 128, "ef_search": 128}
    if kind == "ivf":
        nlist = max(1, min(int(2 * math.sqrt(num_vectors)), num_vectors // 39))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, int(math.ceil(nlist / 16))))}
    raise StoreError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")


class VectorIndex:
    """A FAISS inner-product index plus the ids (and source paths) of its vectors and their fingerprint."""

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
        labels: Sequence[str] | None = None,
    ) -> None:
        assert faiss_index.ntotal == len(ids), "faiss index and id list disagree"
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        self.cpu_index = faiss_index
        self.ids = list(ids)
        self.paths = list(paths) if paths is not None else [""] * len(self.ids)
        self.labels = list(labels) if labels is not None else [""] * len(self.ids)  # "" where unknown
        self.fingerprint = dict(fingerprint)
        self.kind = kind
        self.params = dict(params)
        self.embedder_spec = embedder_spec
        self._search_index = _to_device(faiss_index, kind, device)
        self.on_gpu = self._search_index is not faiss_index

    @property
    def dim(self) -> int:
        return int(self.cpu_index.d)

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
        labels: Sequence[str] | None = None,
    ) -> VectorIndex:
        """Index ``embeddings`` ``[N, D]`` float32 (finite) under ``ids`` (unique strings, one per row).

        ``center``: subtract the mean of ``embeddings`` from them and from every query (ignored for fewer
        than 2 vectors, whose mean is not a centre of anything).
        """
        x = _as_matrix(embeddings, "embeddings")
        if len(ids) != x.shape[0]:
            raise StoreError(f"{len(ids)} ids for {x.shape[0]} embeddings; give one id per row")
        if len(set(ids)) != len(ids):
            raise StoreError("ids must be unique")
        if x.shape[0] == 0:
            raise StoreError("cannot build an index from 0 embeddings; embed some audio first")
        mean = x.mean(axis=0, dtype=np.float64).astype(np.float32) if center and x.shape[0] > 1 else None
        if mean is not None:
            x = centered(x, mean)
        chosen = {**default_params(kind, x.shape[0]), **(params or {})}
        index = _new_faiss_index(kind, x.shape[1], chosen)
        if kind == "ivf":
            index.train(x)
        index.add(x)
        _apply_search_params(index, kind, chosen)
        return cls(
            index,
            ids,
            fingerprint=fingerprint,
            kind=kind,
            params=chosen,
            paths=paths,
            embedder_spec=embedder_spec,
            center=mean,
            device=device,
            labels=labels,
        )

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the index file atomically (temporary file, then rename); overwrites only with ``force``."""
        import faiss

        path = Path(path)
        if path.exists() and not force:
            raise StoreError(f"{path}: index already exists; pass force=True (--force) to overwrite it")
        header = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params,
            "dim": self.dim,
            "num_vectors": len(self.ids),
            "fingerprint": self.fingerprint,
            "embedder_spec": self.embedder_spec,
            "center": None if self.center is None else self.center.tolist(),
            "ids": self.ids,
            "paths": self.paths,
            "labels": self.labels,
        }
        header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
        body = faiss.serialize_index(self.cpu_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(MAGIC)
                fh.write(struct.pack("<Q", len(header_bytes)))
                fh.write(header_bytes)
                fh.write(memoryview(body))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> VectorIndex:
        """Read an index file written by :meth:`save`; ``device`` is ``"auto"``, ``"cpu"`` or ``"gpu"``."""
        import faiss

        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: no such index file; build one with `qvimclap index`")
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise StoreError(
                    f"{path}: not a qvimclap index file (bad magic); rebuild it with `qvimclap index`"
                )
            (header_len,) = struct.unpack("<Q", fh.read(8))
            try:
                header = json.loads(fh.read(header_len).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise StoreError(f"{path}: corrupt index header ({err}); rebuild it") from None
            body = np.frombuffer(fh.read(), dtype=np.uint8)
        if header.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: index format version {header.get('format_version')} is not supported")
        try:
            index = faiss.deserialize_index(body)
        except RuntimeError as err:
            raise StoreError(f"{path}: corrupt faiss data ({str(err).splitlines()[0]}); rebuild it") from None
        if index.ntotal != header["num_vectors"] or index.d != header["dim"]:
            raise StoreError(f"{path}: faiss data does not match its header; rebuild the index")
        _apply_search_params(index, header["kind"], header["params"])
        return cls(
            index,
            header["ids"],
            fingerprint=header["fingerprint"],
            kind=header["kind"],
            params=header["params"],
            paths=header["paths"],
            embedder_spec=header.get("embedder_spec"),
            center=header.get("center"),
            device=device,
            labels=header.get("labels"),  # absent in indexes written before labels were kept
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
        scores, rows = self._search_index.search(q, k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


def build_index_from_store(
    store_path: str | Path,
    out_path: str | Path,
    *,
    kind: str = "flat",
    force: bool = False,
    params: Mapping[str, int] | None = None,
    center: bool = True,
) -> Path:
    """Index every committed embedding of the store at ``store_path``; write the index to ``out_path``."""
    from qvimclap.store import EmbeddingStore

    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise StoreError(f"{out_path}: index already exists; pass force=True (--force) to overwrite it")
    default_params(kind, 1)  # validate kind before reading a large store
    with EmbeddingStore.open(store_path) as store:
        if len(store) == 0:
            raise StoreError(f"{store_path}: store is empty; nothing to index")
        index = VectorIndex.build(
            store.embeddings,
            store.ids,
            fingerprint=store.fingerprint,
            kind=kind,
            params=params,
            paths=store.column("source_path"),
            embedder_spec=store.embedder_spec,
            center=center,
            device="cpu",
            labels=store.column("label"),
        )
    return index.save(out_path, force=force)


def centered(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``[N, D]`` minus ``center`` ``[D]``, L2-normalised again (a row equal to the centre stays
    zero)."""
    y = np.asarray(x, dtype=np.float32) - center  # a new array: normalised in place below (1M x 512 is 2 GB)
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y


def faiss_has_gpu() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _new_faiss_index(kind: str, dim: int, params: Mapping[str, int]) -> Any:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["ef_construction"])
        return index
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # tiny libraries: one cell is fine, no warning
        index.cp.seed = 0  # reproducible k-means
        # k-means on a sample of 64 points per cell, 10 iterations: minutes become seconds at 1M vectors,
        # at no measurable cost in recall (bench/bench_index.py).
        index.cp.max_points_per_centroid = 64
        index.cp.niter = 10
        return index
    raise StoreError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")


def _apply_search_params(index: Any, kind: str, params: Mapping[str, int]) -> None:
    import faiss

    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])


def _to_device(index: Any, kind: str, device: str) -> Any:
    """The index to search with: a GPU copy for flat/IVF when asked for (or "auto") and available."""
    if device not in ("auto", "cpu", "gpu"):
        raise StoreError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "cpu":
        return index
    if not faiss_has_gpu():
        if device == "gpu":
            raise MissingDependencyError(
                "device='gpu' needs faiss with GPU support and a visible GPU; install faiss-gpu "
                "(pip install 'qvimclap[gpu]') or use device='cpu'"
            )
        return index
    if kind == "hnsw":  # faiss has no GPU HNSW; the CPU graph search is already fast
        return index
    import faiss

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
