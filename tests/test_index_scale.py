"""Large-library indexes: BLAS flat search, IVF-PQ re-ranked against the store, memory-mapped files,
``--kind auto`` and its memory budget, indexes over shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qvimclap import index as index_module
from qvimclap.errors import FingerprintMismatchError, StoreError
from qvimclap.index import VectorIndex, build_index_from_store, flat_search, parse_memory, plan_index
from qvimclap.models.base import l2_normalize
from qvimclap.shards import merge_stores, shard_path
from qvimclap.store import EmbeddingStore
from tests.test_index import FP, brute_force, clustered


def recall(rows: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist(), strict=True)])
    )


def write_store(path: Path, x: np.ndarray, ids: list[str], fingerprint: dict = FP) -> Path:
    with EmbeddingStore.create(path, fingerprint, x.shape[1]) as store:
        store.append(ids, x, [{"source_path": f"/lib/{i}.wav"} for i in ids])
    return path


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("num_queries", [1, 7])
def test_flat_search_in_blocks_equals_brute_force(
    num_queries: int, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "_FLAT_BLOCK_FLOATS", 2048)  # many library blocks, merged as they come
    x = clustered(rng, 3000)
    q = clustered(rng, num_queries)
    scores, rows = flat_search(x, q, 10)
    ref_scores, ref_rows = brute_force(x, q, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # ties go to the lower row, as a stable sort would
    dup = np.concatenate([x[:5], x[:5]])
    assert flat_search(dup, x[:1], 2)[1].tolist() == [[0, 5]]


def test_ivfpq_recall_after_reranking_against_the_store(tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 5000, num_clusters=100)
    q = l2_normalize(x[rng.choice(len(x), 100)] + 0.3 * rng.standard_normal((100, 32)).astype(np.float32))
    ids = [f"sound/{i}.wav" for i in range(len(x))]
    store = write_store(tmp_path / "lib.h5", x, ids)
    out = build_index_from_store(store, tmp_path / "lib.faiss", kind="ivfpq")
    index = VectorIndex.load(out)
    assert index.kind == "ivfpq" and index.params["pq_m"] == 4  # 4 bytes a vector instead of 128
    _, exact = brute_force(x, q, 10, center=True)
    scores, rows = index.search_rows(q, 10)
    assert recall(rows, exact) >= 0.95
    # the scores are exact centred cosines of the returned rows, not PQ estimates
    xc = index_module.centered(x, index.center)
    qc = index_module.centered(q, index.center)
    np.testing.assert_allclose(scores, np.take_along_axis(qc @ xc.T, rows, 1), atol=1e-5)
    # the codes alone (no re-ranking beyond the k asked for) rank far worse: the re-ranking is what works
    index.params["rerank"] = 10
    assert recall(index.search_rows(q, 10)[1], exact) < 0.8
    # an ivfpq index reads its vectors from the store: a replaced store is refused, not silently misread
    write_store(tmp_path / "other.h5", x[::-1].copy(), ids[::-1])
    (tmp_path / "other.h5").replace(store)
    with pytest.raises(StoreError, match="no longer holds the indexed vectors"):
        VectorIndex.load(out)


def test_ivfpq_built_in_memory_cannot_be_saved(tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 2000)
    index = VectorIndex.build(x, [str(i) for i in range(2000)], fingerprint=FP, kind="ivfpq")
    assert recall(index.search_rows(x[:20], 10)[1], brute_force(x, x[:20], 10, center=True)[1]) >= 0.95
    with pytest.raises(StoreError, match="build it from a store"):
        index.save(tmp_path / "x.faiss")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_indexes_open_memory_mapped(kind: str, tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 1000)
    built = VectorIndex.build(x, [str(i) for i in range(1000)], fingerprint=FP, kind=kind)
    path = built.save(tmp_path / f"{kind}.faiss")
    assert str(path) not in mapped_files()
    loaded = VectorIndex.load(path)
    assert str(path) in mapped_files()  # the payload is mapped, not read into memory
    if kind == "flat":
        assert isinstance(loaded.vectors, np.memmap)
    np.testing.assert_array_equal(loaded.search_rows(x[:20], 5)[1], built.search_rows(x[:20], 5)[1])
    in_memory = VectorIndex.load(path, mmap=False)
    np.testing.assert_array_equal(in_memory.search_rows(x[:20], 5)[1], built.search_rows(x[:20], 5)[1])


def test_truncated_index_file_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 100)
    path = VectorIndex.build(x, [str(i) for i in range(100)], fingerprint=FP).save(tmp_path / "f.faiss")
    data = path.read_bytes()
    (tmp_path / "cut.faiss").write_bytes(data[1000:])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        VectorIndex.load(tmp_path / "cut.faiss")


@pytest.mark.parametrize(
    ("num_vectors", "budget", "kind"),
    [
        (10_000, "1G", "flat"),
        (100_000, "1G", "hnsw"),
        (100_000, "100M", "ivfpq"),  # 100k x 2 kB = 195 MB of floats do not fit 100 MB
        (1_000_000, "4G", "ivf"),
        (1_000_000, "1G", "ivfpq"),
        (10_000_000, "4G", "ivfpq"),
    ],
)
def test_auto_kind_by_size_and_budget(num_vectors: int, budget: str, kind: str) -> None:
    plan = plan_index(num_vectors, 512, kind="auto", max_memory=budget)
    assert plan.kind == kind
    assert plan.memory_bytes <= parse_memory(budget)
    assert f"{num_vectors:,} vectors" in plan.describe()


def test_ivfpq_codes_shrink_to_the_budget_or_refuse() -> None:
    roomy = plan_index(10_000_000, 512, kind="ivfpq", max_memory="4G")
    tight = plan_index(10_000_000, 512, kind="ivfpq", max_memory="300M")
    assert roomy.params["pq_m"] == 64 and tight.params["pq_m"] < 64
    assert tight.memory_bytes <= 300 << 20
    with pytest.raises(StoreError, match="over the memory budget"):
        plan_index(1_000_000, 512, kind="flat", max_memory="1G")
    with pytest.raises(StoreError, match="not understood"):
        parse_memory("lots")


def test_index_from_shards_and_merge(tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 600)
    ids = [f"s{i}" for i in range(600)]
    out = tmp_path / "lib.h5"
    for rank in range(3):
        write_store(shard_path(out, rank, 3), x[rank::3], ids[rank::3])
    # `index lib.h5` after a parallel embed: all shards, as one library
    index = VectorIndex.load(build_index_from_store(out, tmp_path / "lib.faiss"))
    assert sorted(index.ids) == sorted(ids)
    order = [ids.index(i) for i in index.ids]
    _, rows = index.search_rows(x[:5], 3)
    assert [order[r] for r in rows[:, 0]] == [0, 1, 2, 3, 4]
    # merging gives one store with every row, equal to the shards' union
    merged = merge_stores(out, tmp_path / "merged.h5")
    with EmbeddingStore.open(merged) as store:
        assert store.ids == index.ids
        np.testing.assert_array_equal(store.get(ids), x)
    # a missing shard, mixed fingerprints and duplicate ids are refused
    shard_path(out, 1, 3).rename(tmp_path / "away.h5")
    with pytest.raises(StoreError, match="rank 1 of 3 are missing"):
        build_index_from_store(out, tmp_path / "x.faiss")
    other_fp = {**FP, "space": "test:other"}
    write_store(shard_path(out, 1, 3), x[1::3], ids[1::3], fingerprint=other_fp)
    with pytest.raises(FingerprintMismatchError, match="different model"):
        build_index_from_store(out, tmp_path / "x.faiss")
    with pytest.raises(StoreError, match="is in both"):
        build_index_from_store([merged, tmp_path / "away.h5"], tmp_path / "x.faiss")
    assert not (tmp_path / "x.faiss").exists()


def test_cli_index_auto_prints_memory_and_store_merge(tmp_path: Path, rng: np.random.Generator) -> None:
    from typer.testing import CliRunner

    from qvimclap.cli import app

    x = clustered(rng, 300)
    ids = [f"s{i}" for i in range(300)]
    out = tmp_path / "lib.h5"
    for rank in range(2):
        write_store(shard_path(out, rank, 2), x[rank::2], ids[rank::2])

    def run(*args: object) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    code, stdout, stderr = run(
        "index", out, "--out", tmp_path / "a.faiss", "--kind", "auto", "--max-memory", "1G"
    )
    assert code == 0, stderr
    first, last = stdout.strip().splitlines()
    assert first.startswith(
        "building flat index of 300 vectors, dim 32: needs 37.5 kB to search, budget 1.0 GB"
    )
    assert "flat index of 300 vectors" in last
    code, _, stderr = run(
        "index", out, "--out", tmp_path / "b.faiss", "--kind", "flat", "--max-memory", "10k"
    )
    assert code == 2 and stderr.startswith("Error: a flat index of 300 vectors") and "--max-memory" in stderr
    code, stdout, stderr = run("store", "merge", out, "--out", tmp_path / "m.h5")
    assert code == 0 and "m.h5: 300 embeddings of dim 32" in stdout, stderr
    code, _, stderr = run("store", "merge", str(tmp_path / "lib.shard-*.h5"), "--out", tmp_path / "m.h5")
    assert code == 2 and "already exists" in stderr


def test_row_source_reads_rows_across_stores_in_any_order(rng: np.random.Generator) -> None:
    from qvimclap.index import RowSource

    parts = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 5, 2)]
    rows = np.array([9, 0, 3, 3, 7, 2, 8])
    np.testing.assert_array_equal(RowSource(parts).take(rows), np.concatenate(parts)[rows])
