"""VectorIndex: exact search equals brute force, approximate kinds keep recall, files round-trip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qvimclap.errors import FingerprintMismatchError, StoreError
from qvimclap.index import VectorIndex, build_index_from_store, default_params, faiss_has_gpu
from qvimclap.models.base import l2_normalize
from qvimclap.store import EmbeddingStore

FP = {"encoder": "test", "weights_sha256": "ab" * 32, "dim": 32, "space": "test:abababababab"}


def clustered(rng: np.random.Generator, n: int, dim: int = 32, num_clusters: int = 50) -> np.ndarray:
    """Unit vectors around random centres: structured like real embeddings, unlike i.i.d. noise."""
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, num_clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return l2_normalize(x)


def brute_force(
    x: np.ndarray, q: np.ndarray, k: int, *, center: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    if center:  # by hand, in float64: subtract the library mean, re-normalise both sides
        m = x.astype(np.float64).mean(0)
        x, q = (v.astype(np.float64) - m for v in (x, q))
        x, q = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, q))
    sims = q @ x.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("center", [True, False])
def test_flat_equals_brute_force(center: bool, rng: np.random.Generator) -> None:
    x = clustered(rng, 500)
    q = clustered(rng, 20)
    ids = [f"item{i}" for i in range(len(x))]
    index = VectorIndex.build(x, ids, fingerprint=FP, center=center)
    scores, found = index.search(q, k=7)
    ref_scores, ref_rows = brute_force(x, q, 7, center=center)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert found == [[ids[r] for r in row] for row in ref_rows]
    # One query as [D]; k beyond the library is clipped to its size.
    s1, ids1 = index.search(q[0], k=10_000)
    assert s1.shape == (1, 500) and ids1[0][:7] == found[0]
    assert np.all(np.diff(s1[0]) <= 1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_keep_recall(kind: str, rng: np.random.Generator) -> None:
    x = clustered(rng, 4000)
    q = l2_normalize(x[rng.choice(len(x), 100)] + 0.3 * rng.standard_normal((100, 32)).astype(np.float32))
    index = VectorIndex.build(x, [str(i) for i in range(len(x))], fingerprint=FP, kind=kind)
    _, rows = index.search_rows(q, 10)
    _, exact = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f}"
    assert index.params == default_params(kind, 4000)


def test_centring_removes_the_shared_direction(rng: np.random.Generator) -> None:
    """In a narrow cone (like a CLAP space) raw cosine favours the vectors nearest the cone's axis; the
    default index ranks by the offsets from the library mean instead, which is what tells items apart."""
    axis = np.zeros(32, dtype=np.float32)
    axis[0] = 1.0
    offsets = rng.standard_normal((200, 32)).astype(np.float32)
    offsets[:, 0] = 0.0
    scale = rng.uniform(0.02, 0.2, (200, 1)).astype(np.float32)  # some items sit nearer the axis than others
    x = l2_normalize(axis + scale * l2_normalize(offsets))
    q = l2_normalize(axis + 0.05 * l2_normalize(offsets[:50]))  # each query points along its item's offset
    raw = VectorIndex.build(x, [str(i) for i in range(200)], fingerprint=FP, center=False)
    centred = VectorIndex.build(x, [str(i) for i in range(200)], fingerprint=FP)
    np.testing.assert_allclose(centred.center, x.mean(0), atol=1e-6)
    hits_centred = (centred.search_rows(q, 1)[1][:, 0] == np.arange(50)).mean()
    hits_raw = (raw.search_rows(q, 1)[1][:, 0] == np.arange(50)).mean()
    assert hits_centred >= 0.9 > hits_raw + 0.3
    # One vector has no meaningful mean: that index is left uncentred.
    assert VectorIndex.build(x[:1], ["a"], fingerprint=FP).center is None


def test_save_load_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 300)
    ids = [f"ü{i}" for i in range(300)]
    paths = [f"/lib/{i}.wav" for i in range(300)]
    for kind in ("flat", "hnsw", "ivf"):
        index = VectorIndex.build(
            x, ids, fingerprint=FP, kind=kind, paths=paths, embedder_spec="clap:scratch"
        )
        out = index.save(tmp_path / f"{kind}.faiss")
        loaded = VectorIndex.load(out)
        assert (loaded.ids, loaded.paths, loaded.fingerprint, loaded.kind) == (ids, paths, FP, kind)
        assert loaded.labels == [""] * 300  # none given
        assert loaded.params == index.params and loaded.embedder_spec == "clap:scratch"
        np.testing.assert_array_equal(loaded.center, index.center)
        np.testing.assert_array_equal(loaded.search_rows(x[:5], 5)[1], index.search_rows(x[:5], 5)[1])
        with pytest.raises(StoreError, match="already exists"):
            index.save(out)
        index.save(out, force=True)
    assert sorted(os.listdir(tmp_path)) == ["flat.faiss", "hnsw.faiss", "ivf.faiss"]  # no .tmp left
    (tmp_path / "bad.faiss").write_bytes(b"garbage!" * 4)
    with pytest.raises(StoreError, match="bad magic"):
        VectorIndex.load(tmp_path / "bad.faiss")
    with pytest.raises(StoreError, match="no such index"):
        VectorIndex.load(tmp_path / "none.faiss")


def test_refusals(rng: np.random.Generator) -> None:
    x = clustered(rng, 50)
    index = VectorIndex.build(x, [str(i) for i in range(50)], fingerprint=FP)
    with pytest.raises(FingerprintMismatchError, match="dim 16"):
        index.search(np.zeros((1, 16), np.float32))
    with pytest.raises(StoreError, match="NaN"):
        index.search(np.full((1, 32), np.nan, np.float32))
    with pytest.raises(StoreError, match="unique"):
        VectorIndex.build(x[:2], ["a", "a"], fingerprint=FP)
    with pytest.raises(StoreError, match="unknown index kind 'lsh'"):
        VectorIndex.build(x, [str(i) for i in range(50)], fingerprint=FP, kind="lsh")


def test_ivf_on_a_tiny_library(rng: np.random.Generator) -> None:
    x = clustered(rng, 10)  # fewer points than one k-means cell wants: one cell, still exact
    index = VectorIndex.build(x, [str(i) for i in range(10)], fingerprint=FP, kind="ivf")
    assert index.params["nlist"] == 1
    np.testing.assert_array_equal(index.search_rows(x, 3)[1], brute_force(x, x, 3, center=True)[1])


def test_build_index_from_store(tmp_path: Path, rng: np.random.Generator) -> None:
    x = clustered(rng, 40)
    with EmbeddingStore.create(tmp_path / "s.h5", FP, 32, embedder_spec="qvim:scratch:mn04") as store:
        store.append(
            [f"a/{i}.wav" for i in range(40)],
            x,
            [{"source_path": f"/d/a/{i}.wav", "label": "dog" if i % 2 else ""} for i in range(40)],
        )
    out = build_index_from_store(tmp_path / "s.h5", tmp_path / "idx" / "s.faiss")
    index = VectorIndex.load(out)
    assert index.ids[3] == "a/3.wav" and index.paths[3] == "/d/a/3.wav"
    assert index.labels[:4] == ["", "dog", "", "dog"]  # the store's labels, "" where unknown
    assert index.fingerprint == FP and index.embedder_spec == "qvim:scratch:mn04"
    assert index.search(x[3], 1)[1] == [["a/3.wav"]]
    with pytest.raises(StoreError, match="already exists"):
        build_index_from_store(tmp_path / "s.h5", out)
    EmbeddingStore.create(tmp_path / "empty.h5", FP, 32).close()
    with pytest.raises(StoreError, match="empty"):
        build_index_from_store(tmp_path / "empty.h5", tmp_path / "e.faiss")


@pytest.mark.skipif(not faiss_has_gpu(), reason="faiss without GPU support, or no GPU")
def test_gpu_matches_cpu(rng: np.random.Generator) -> None:
    x = clustered(rng, 2000)
    for kind in ("flat", "ivf"):
        cpu = VectorIndex.build(x, [str(i) for i in range(2000)], fingerprint=FP, kind=kind, device="cpu")
        gpu = VectorIndex.build(x, [str(i) for i in range(2000)], fingerprint=FP, kind=kind, device="gpu")
        assert gpu.on_gpu and not cpu.on_gpu
        s_cpu, r_cpu = cpu.search_rows(x[:50], 10)
        s_gpu, r_gpu = gpu.search_rows(x[:50], 10)
        np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-4)
        assert np.mean(r_gpu == r_cpu) > 0.99  # near-ties may swap under different float summation order
