"""Index benchmark, 512-d unit vectors: memory, build time, queries/s against exact search, recall@10.

    .venv/bin/python bench/bench_index.py                          # 100,000 uniform vectors
    .venv/bin/python bench/bench_index.py --large --data clustered # 1,000,000 vectors (~2 GB store)
    .venv/bin/python bench/bench_index.py --investigate            # why FAISS's flat search lost to numpy
    .venv/bin/python bench/bench_index.py --hnsw-build 4000        # why HNSW builds slowly

Queries are stored vectors plus noise (cosine ~0.7 to their source), like an imitation near its reference.
Every speed is also given as a ratio to the exact flat index measured in the same run, because the machine is
shared and absolute numbers drift. ``--data uniform`` (default) is the hardest case for approximate search
(i.i.d. directions: the 10 nearest are barely nearer than the rest); ``clustered`` is closer to real
embeddings. Indexes are built and opened as ``qvimclap index`` / ``search`` do (from a store, centred on the
library mean, files memory-mapped); numpy brute force and FAISS's ``IndexFlatIP`` search the same centred
vectors. "memory" is what the index holds to search (the memory-mapped payload); IVF-PQ also reads the
float32 rows of its candidates from the store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qvimclap.index import VectorIndex, build_index_from_store, centered, default_params  # noqa: E402
from qvimclap.models.base import l2_normalize  # noqa: E402
from qvimclap.store import EmbeddingStore  # noqa: E402

FP = {"encoder": "bench", "weights_sha256": "0" * 64, "dim": 512, "space": "bench:0"}


def make_data(kind: str, n: int, dim: int, num_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slabs: the 1M case stays near 2 GB
        stop = min(n, start + 100_000)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if kind == "clustered":
            block += 1.5 * centres[rng.integers(0, len(centres), stop - start)]
        x[start:stop] = l2_normalize(block)
    noise = rng.standard_normal((num_queries, dim), dtype=np.float32) / np.sqrt(dim)
    q = l2_normalize(x[rng.choice(n, num_queries, replace=False)] + noise)
    return x, q


def per_second(fn, count: int, repeats: int = 3) -> float:
    """Best of ``repeats`` runs: the least disturbed by other jobs on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = q @ x.T  # [Q, N]
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall_at_10(rows: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist(), strict=True)])
    )


def write_store(x: np.ndarray, path: Path) -> tuple[float, float]:
    ids = [f"sound/{i:07d}.wav" for i in range(len(x))]
    start = time.perf_counter()
    with EmbeddingStore.create(path, FP, x.shape[1], capacity=len(x)) as store:
        for s in range(0, len(x), 10_000):
            rows = [{"source_path": f"/library/{i}", "label": "bench"} for i in ids[s : s + 10_000]]
            store.append(ids[s : s + 10_000], x[s : s + 10_000], rows)
    return time.perf_counter() - start, path.stat().st_size / 1e6


def payload_mb(path: Path) -> float:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(size - 16)
        header_len = int.from_bytes(fh.read(8), "little")
    return (size - 16 - header_len) / 1e6


def investigate(n: int) -> None:
    """The flat-search diagnosis: thread counts, BLAS libraries and kernels, FAISS's code paths."""
    import faiss
    import threadpoolctl

    x, q = make_data("uniform", n, 512, 200)
    single = q[:20]
    info = [
        f"{i['internal_api']} {i.get('version')} ({i['prefix']}, kernel {i.get('architecture')}, "
        f"{i['num_threads']} threads, {i.get('threading_layer', '-')})"
        for i in threadpoolctl.threadpool_info()
    ]
    print(f"\n{n:,} uniform vectors, d=512; faiss {faiss.__version__} ({faiss.get_compile_options()})")
    print(f"faiss.omp_get_max_threads() = {faiss.omp_get_max_threads()}")
    print(f"faiss.cvar.distance_compute_blas_threshold = {faiss.cvar.distance_compute_blas_threshold}")
    print("thread pools: " + "; ".join(info) + "\n")
    flat = faiss.IndexFlatIP(512)
    flat.add(x)
    rows = []

    def measure(name: str, fn) -> None:
        s_qps = per_second(lambda: [fn(v[None]) for v in single], len(single))
        b_qps = per_second(lambda: fn(q), len(q))
        rows.append((name, s_qps, b_qps))

    measure("numpy: q @ x.T + argpartition", lambda v: numpy_search(x, v, 10))
    measure("qvimclap flat_search (numpy BLAS, blocked)", lambda v: _flat(x, v))
    measure("faiss IndexFlatIP, default", lambda v: flat.search(v, 10))
    faiss.omp_set_num_threads(1)
    measure("faiss IndexFlatIP, 1 OpenMP thread", lambda v: flat.search(v, 10))
    faiss.omp_set_num_threads(2)
    threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    measure("faiss IndexFlatIP, BLAS path forced (threshold 0)", lambda v: flat.search(v, 10))
    faiss.cvar.distance_compute_blas_threshold = threshold
    print("| exact search | single q/s | × numpy | batched (200) q/s | × numpy |")
    print("|---|---:|---:|---:|---:|")
    for name, s_qps, b_qps in rows:
        print(
            f"| {name} | {s_qps:,.1f} | {s_qps / rows[0][1]:.2f} | {b_qps:,.1f} | {b_qps / rows[0][2]:.2f} |"
        )


def hnsw_build(n: int) -> None:
    """Why HNSW builds slowly: build time, recall, graph-search work by data, efConstruction, threads."""
    import faiss

    print(
        "| data | M | efConstruction | OpenMP threads | build s | vectors/s | recall@10 | distances/query |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for data in ("uniform", "clustered"):
        x, q = make_data(data, n, 512, 200)
        center = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        xc, qc = centered(x, center), centered(q, center)
        exact = numpy_search(xc, qc, 10)
        for m, ef_construction, threads in [(32, 128, 2), (32, 128, 1), (32, 40, 2)]:
            faiss.omp_set_num_threads(threads)
            index = faiss.IndexHNSWFlat(512, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            start = time.perf_counter()
            index.add(xc)
            seconds = time.perf_counter() - start
            index.hnsw.efSearch = 128
            faiss.cvar.hnsw_stats.reset()
            found = index.search(qc, 10)[1]
            work = faiss.cvar.hnsw_stats.ndis / len(qc)
            print(
                f"| {data} | {m} | {ef_construction} | {threads} | {seconds:.1f} | {n / seconds:,.0f} | "
                f"{recall_at_10(found, exact):.3f} | {work:,.0f} |"
            )
    faiss.omp_set_num_threads(2)


def _flat(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    from qvimclap.index import flat_search

    return flat_search(x, q, 10)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-vectors", type=int, default=100_000)
    parser.add_argument("--large", action="store_true", help="1,000,000 vectors")
    parser.add_argument("--data", choices=["uniform", "clustered"], default="uniform")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--kinds", default="hnsw,ivf,ivfpq", help="approximate kinds (HNSW builds take long)")
    parser.add_argument("--opq", action="store_true", help="also build IVF-PQ with an OPQ rotation")
    parser.add_argument("--investigate", action="store_true", help="diagnose flat search and exit")
    parser.add_argument("--hnsw-build", type=int, metavar="N", help="diagnose HNSW build time on N vectors")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    n, dim, k = (1_000_000 if args.large else args.num_vectors), 512, 10
    if args.investigate:
        investigate(n)
        return
    if args.hnsw_build:
        hnsw_build(args.hnsw_build)
        return
    kinds = args.kinds.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        x, q = make_data(args.data, n, dim, args.queries)
        store_s, store_mb = write_store(x, folder / "bench.h5")
        del x  # from here on every reader maps the store or an index file, as qvimclap does
        print(f"\n{n:,} {args.data} unit vectors, d={dim}, {len(q)} queries ({args.single} timed singly)")
        print(f"k={k}\n")
        print(f"store: write {store_s:.1f} s ({n / store_s:,.0f} rows/s), {store_mb:.0f} MB on disk\n")
        columns = (
            "index | params | memory MB | build s | single q/s | × exact | batched q/s | × exact | recall@10"
        )
        print(f"| {columns} |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        single = q[: args.single]
        rows = []

        def built(kind: str, **params: int) -> tuple[VectorIndex, float, float]:
            path = folder / f"{kind}.faiss"
            start = time.perf_counter()
            build_index_from_store(folder / "bench.h5", path, kind=kind, params=params or None, force=True)
            seconds = time.perf_counter() - start
            return VectorIndex.load(path, device="cpu"), seconds, payload_mb(path)

        def measure(name: str, params: str, index, build: float, mb: float, exact) -> None:
            found = index(q)
            s_qps = per_second(lambda: [index(v[None]) for v in single], len(single))
            b_qps = per_second(lambda: index(q), len(q))
            rows.append((name, params, mb, build, s_qps, b_qps, recall_at_10(found, exact)))
            print_row(rows[-1], rows)

        flat, flat_build, flat_mb = built("flat")
        xc = flat.vectors  # the centred library, memory-mapped
        qc = centered(q, flat.center)
        exact = numpy_search(np.asarray(xc), qc, k)
        measure("flat (exact)", "", lambda v: flat.search_rows(v, k)[1], flat_build, flat_mb, exact)
        measure(
            "numpy brute force",
            "",
            lambda v: numpy_search(xc, centered(v, flat.center), k),
            0,
            flat_mb,
            exact,
        )
        rows.append(_faiss_flat_row(np.asarray(xc), q, flat, single, k, exact))
        print_row(rows[-1], rows)
        for kind in [k_ for k_ in kinds if k_ in ("hnsw", "ivf")]:
            index, build, mb = built(kind)
            name, values = {"hnsw": ("ef_search", [64, 128, 256]), "ivf": ("nprobe", None)}[kind]
            base = default_params(kind, n)[name]
            values = values or sorted({max(1, base // 2), base, 4 * base})
            for value in values:
                index.params[name] = value
                _set_param(index, kind, value)
                default = " (default)" if value == base else ""
                measure(
                    kind,
                    f"{name}={value}{default}",
                    lambda v, i=index: i.search_rows(v, k)[1],
                    build,
                    mb,
                    exact,
                )
            del index
        if "ivfpq" in kinds:
            for opq in [0, 1] if args.opq else [0]:
                index, build, mb = built("ivfpq", opq=opq)
                base = default_params("ivfpq", n)
                for nprobe, rerank in [
                    (base["nprobe"], base["rerank"]),
                    (base["nprobe"] // 2, 50),
                    (base["nprobe"], 50),
                    (2 * base["nprobe"], base["rerank"]),
                    (base["nprobe"], 0),
                ]:
                    index.params.update(nprobe=nprobe, rerank=rerank)
                    _set_param(index, "ivfpq", nprobe)
                    default = " (default)" if (nprobe, rerank) == (base["nprobe"], base["rerank"]) else ""
                    label = f"m={index.params['pq_m']}{', OPQ' if opq else ''}, nprobe={nprobe}, "
                    label += f"rerank={rerank or 'none'}{default}"
                    measure("ivfpq", label, lambda v, i=index: i.search_rows(v, k)[1], build, mb, exact)
                del index

    print(
        "\ntarget (IVF-PQ): recall@10 >= 0.95 at >= 20x exact single-query throughput in <= 1/4 flat's memory"
    )
    if args.json:
        keys = ("index", "params", "memory_mb", "build_s", "single_qps", "batched_qps", "recall_at_10")
        args.json.write_text(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=1))


def print_row(row: tuple, rows: list[tuple]) -> None:
    """One table row as soon as it is measured (a long run cut short keeps what it had); ratios are against
    the exact flat index, always the first row."""
    name, params, mb, build, s_qps, b_qps, recall = row
    ref = rows[0]
    print(
        f"| {name} | {params} | {mb:,.0f} | {build:.1f} | {s_qps:,.1f} | {s_qps / ref[4]:.2f} | "
        f"{b_qps:,.0f} | {b_qps / ref[5]:.2f} | {recall:.3f} |",
        flush=True,
    )


def _faiss_flat_row(
    xc: np.ndarray, q: np.ndarray, flat: VectorIndex, single: np.ndarray, k: int, exact
) -> tuple:
    """FAISS's IndexFlatIP over the same centred vectors: what ``flat`` searched with before."""
    import faiss

    index = faiss.IndexFlatIP(xc.shape[1])
    start = time.perf_counter()
    index.add(xc)
    build = time.perf_counter() - start

    def search(v: np.ndarray) -> np.ndarray:
        return index.search(centered(v, flat.center), k)[1]

    found = search(q)
    s_qps = per_second(lambda: [search(v[None]) for v in single], len(single))
    b_qps = per_second(lambda: search(q), len(q))
    return (
        "faiss IndexFlatIP (before)",
        "",
        xc.nbytes / 1e6,
        build,
        s_qps,
        b_qps,
        recall_at_10(found, exact),
    )


def _set_param(index: VectorIndex, kind: str, value: int) -> None:
    import faiss

    if kind == "hnsw":
        faiss.downcast_index(index.cpu_index).hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index.cpu_index).nprobe = value


if __name__ == "__main__":
    main()
