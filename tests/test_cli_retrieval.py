"""`qvimclap embed`, `index` and `search` end to end: synthetic corpus, real (random) QVIM encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qvimclap.cli import app
from qvimclap.cli._app import USER_ERROR_EXIT
from qvimclap.data import open_dataset
from qvimclap.data.synth import make_corpus
from qvimclap.index import VectorIndex
from qvimclap.store import EmbeddingStore

ENCODER = "qvim:scratch:mn04"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c", num_references=4, imitations_per_reference=1)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_embed_index_search(corpus: Path, tmp_path: Path) -> None:
    store_path, index_path = tmp_path / "embeddings" / "c.h5", tmp_path / "indexes" / "c.faiss"
    code, out, err = run("embed", corpus, "--encoder", ENCODER, "--out", store_path, "--batch-size", "3")
    assert code == 0, err
    assert "added 4, already stored 0, unusable 0 (of 4 files)" in out
    code, out, _ = run("embed", corpus, "--encoder", ENCODER, "--out", store_path)  # resumes
    assert code == 0 and "added 0, already stored 4" in out

    code, out, err = run("index", store_path, "--out", index_path)
    assert code == 0, err
    assert "flat index of 4 vectors, dim 384, centred on the library mean" in out
    raw_path = tmp_path / "indexes" / "raw.faiss"
    code, out, err = run("index", store_path, "--out", raw_path, "--no-center")
    assert code == 0 and "raw cosine" in out, err
    with EmbeddingStore.open(store_path) as store:
        vectors = np.asarray(store.embeddings)
    assert VectorIndex.load(raw_path).center is None
    np.testing.assert_allclose(VectorIndex.load(index_path).center, vectors.mean(0), atol=1e-6)
    code, _, err = run("index", store_path, "--out", index_path)
    assert code == USER_ERROR_EXIT and err.startswith("Error: ") and "--force" in err
    assert run("index", store_path, "--out", index_path, "--kind", "hnsw", "--force")[0] == 0

    dataset = open_dataset(corpus)
    reference = dataset.references[2]
    code, out, err = run("search", reference, "--index", index_path, "-k", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "path"] and len(lines) == 4
    rank, score, item_id, path = lines[1].split()
    assert (rank, item_id, path) == ("1", reference.relative_to(corpus).as_posix(), str(reference))
    assert float(score) == pytest.approx(1.0, abs=1e-3)  # a stored sound finds itself first

    code, out, _ = run("search", dataset.queries[0], "--index", index_path, "-k", "2", "--json")
    assert code == 0
    hits = json.loads(out)
    assert [h["rank"] for h in hits] == [1, 2] and set(hits[0]) == {"rank", "score", "id", "path"}
    with EmbeddingStore.open(store_path) as store:
        assert set(h["id"] for h in hits) <= set(store.ids)

    code, _, err = run("search", reference, "--index", index_path, "--encoder", "qvim:scratch:mn05")
    assert code == USER_ERROR_EXIT and "space" in err and "--encoder" in err


def test_embed_lists_unusable_files(corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sounds"
    shutil.copytree(corpus / "references", folder)
    (folder / "broken.wav").write_bytes(b"not audio at all")
    code, out, err = run("embed", folder, "-e", ENCODER, "-o", tmp_path / "s.h5", "--no-progress")
    assert code == 0
    assert "added 4, already stored 0, unusable 1 (of 5 files)" in out
    assert "Skipped 1 unusable file(s):" in err and "broken.wav" in err


def test_user_errors(tmp_path: Path) -> None:
    code, _, err = run("embed", tmp_path / "missing", "-e", ENCODER, "-o", tmp_path / "x.h5")
    assert code == USER_ERROR_EXIT and "no such file or folder" in err
    code, _, err = run("index", tmp_path / "missing.h5", "-o", tmp_path / "x.faiss")
    assert code == USER_ERROR_EXIT and "no such embedding store" in err
    code, _, err = run("search", tmp_path / "q.wav", "--index", tmp_path / "none.faiss")
    assert code == USER_ERROR_EXIT and "no such index file" in err
