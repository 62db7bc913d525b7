"""Store and index benchmark, random 512-d unit vectors: write time, size, build time, queries/s, recall@10.

    .venv/bin/python bench/bench_index.py                 # 100,000 vectors (a few minutes on 2 cores)
    .venv/bin/python bench/bench_index.py --large         # 1,000,000 vectors (~2 GB store; run once)
    .venv/bin/python bench/bench_index.py --data clustered

Queries are stored vectors plus noise (cosine ~0.7 to their source), like an imitation near its reference.
Every speed is also given as a ratio to the exact flat index and to plain numpy brute force measured in the
same run, because the machine is shared and absolute numbers drift. ``--data uniform`` (default) is the
hardest case for approximate search (i.i.d. directions: the 10 nearest are barely nearer than the rest);
``clustered`` is closer to real embeddings. Indexes are built as ``qvimclap index`` builds them (centred on
the library mean), and numpy brute force works in the same centred geometry.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qvimclap.index import VectorIndex, centered, default_params  # noqa: E402
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


def per_second(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = q @ x.T  # [Q, N]
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall_at_10(rows: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist(), strict=True)])
    )


def bench_store(x: np.ndarray, folder: Path) -> tuple[float, float]:
    ids = [f"sound/{i:07d}.wav" for i in range(len(x))]
    start = time.perf_counter()
    with EmbeddingStore.create(folder / "bench.h5", FP, x.shape[1], capacity=len(x)) as store:
        for s in range(0, len(x), 10_000):
            rows = [{"source_path": f"/library/{i}", "label": "bench"} for i in ids[s : s + 10_000]]
            store.append(ids[s : s + 10_000], x[s : s + 10_000], rows)
    seconds = time.perf_counter() - start
    return seconds, (folder / "bench.h5").stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-vectors", type=int, default=100_000)
    parser.add_argument("--large", action="store_true", help="1,000,000 vectors")
    parser.add_argument("--data", choices=["uniform", "clustered"], default="uniform")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    parser.add_argument(
        "--kinds", default="hnsw,ivf", help="approximate kinds to sweep (HNSW builds take long at 1M)"
    )
    args = parser.parse_args()
    n, dim, k = (1_000_000 if args.large else args.num_vectors), 512, 10
    x, q = make_data(args.data, n, dim, args.queries)
    single = q[: args.single]

    with tempfile.TemporaryDirectory() as tmp:
        store_s, store_mb = bench_store(x, Path(tmp))

    ids = [str(i) for i in range(n)]
    # numpy in the index's geometry: the library centred once, each query centred as it comes
    center = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    xc = centered(x, center)
    np_single = per_second(
        lambda: [numpy_search(xc, centered(v[None], center), k) for v in single], len(single)
    )
    np_batch = per_second(lambda: numpy_search(xc, centered(q, center), k), len(q))
    t0 = time.perf_counter()
    flat = VectorIndex.build(x, ids, fingerprint=FP, device="cpu")
    flat_build = time.perf_counter() - t0
    exact = flat.search_rows(q, k)[1]
    flat_single = per_second(lambda: [flat.search_rows(v[None], k) for v in single], len(single))
    flat_batch = per_second(lambda: flat.search_rows(q, k), len(q))

    rows = [("numpy brute force", "-", 0.0, np_single, np_batch, 1.0)]
    rows.append(
        (
            "flat (exact)",
            "-",
            flat_build,
            flat_single,
            flat_batch,
            recall_at_10(exact, numpy_search(xc, centered(q, center), k)),
        )
    )
    sweeps = {"hnsw": ("ef_search", [64, 128, 256, 512]), "ivf": ("nprobe", None)}
    for kind, (name, values) in sweeps.items():
        if kind not in args.kinds.split(","):
            continue
        t0 = time.perf_counter()
        index = VectorIndex.build(x, ids, fingerprint=FP, kind=kind, device="cpu")
        build = time.perf_counter() - t0
        if values is None:
            base = default_params(kind, n)[name]
            values = sorted({max(1, base // 2), base, 2 * base, 4 * base, 8 * base})
        for value in values:
            index.params[name] = value
            _set_param(index, kind, value)
            found = index.search_rows(q, k)[1]
            s_qps = per_second(lambda idx=index: [idx.search_rows(v[None], k) for v in single], len(single))
            b_qps = per_second(lambda idx=index: idx.search_rows(q, k), len(q))
            default = " (default)" if value == default_params(kind, n)[name] else ""
            rows.append((kind, f"{name}={value}{default}", build, s_qps, b_qps, recall_at_10(found, exact)))

    print(
        f"\n{n:,} {args.data} unit vectors, d={dim}, {len(q)} queries ({len(single)} timed singly), k={k}\n"
    )
    print(f"store: write {store_s:.1f} s ({n / store_s:,.0f} rows/s), {store_mb:.0f} MB on disk\n")
    print("| index | params | build s | single q/s | × flat | × numpy | batched q/s | × flat | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, params, build, s_qps, b_qps, recall in rows:
        print(
            f"| {kind} | {params} | {build:.1f} | {s_qps:,.0f} | {s_qps / flat_single:.1f} | "
            f"{s_qps / np_single:.1f} | {b_qps:,.0f} | {b_qps / flat_batch:.1f} | {recall:.3f} |"
        )
    print("\ntarget: recall@10 >= 0.95 at >= 20x the exact single-query throughput")


def _set_param(index: VectorIndex, kind: str, value: int) -> None:
    import faiss

    if kind == "hnsw":
        faiss.downcast_index(index.cpu_index).hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index.cpu_index).nprobe = value


if __name__ == "__main__":
    main()
