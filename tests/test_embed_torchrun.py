"""Parallel embedding under torchrun (2 processes, CPU): deterministic disjoint shards, a rank killed and the
run resumed, the shards' union equal to a single-process run, and ``index`` over the shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qvimclap.api import embed_dataset
from qvimclap.data.synth import make_corpus
from qvimclap.index import VectorIndex, build_index_from_store
from qvimclap.shards import find_shards, open_stores, shard_files
from qvimclap.store import EmbeddingStore

ENCODER = "qvim:scratch:mn04"
REPO = Path(__file__).resolve().parents[1]


def torchrun(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def test_shards_are_disjoint_and_cover() -> None:
    items = list(range(11))
    shards = [shard_files(items, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == items and shards[1] == [1, 4, 7, 10]
    assert shard_files(items, 1, 3) == shards[1]  # the same on every call, every machine


def test_torchrun_embed_killed_resumed_equals_single_process(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c", num_references=6, imitations_per_reference=1)
    out = tmp_path / "e" / "lib.h5"
    embed = ["embed", corpus, "--encoder", ENCODER, "--out", out, "--batch-size", "1", "--no-progress"]

    # rank 1 is SIGKILLed after two committed batches: torchrun stops, the shards keep what they committed
    died = torchrun("tests/_embed_and_die.py", "1", *embed)
    assert died.returncode != 0
    shards = find_shards(out)
    assert [p.name for p in shards] == ["lib.shard-00000-of-00002.h5", "lib.shard-00001-of-00002.h5"]
    with EmbeddingStore.open(shards[1]) as killed:
        assert len(killed) == 2  # of its 3 files

    # the same command again resumes every shard (--workers: decoding in a DataLoader worker)
    resumed = torchrun("-m", "qvimclap.cli", *embed, "--workers", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "lib.shard-00001-of-00002.h5: added 1, already stored 2" in resumed.stdout

    single = embed_dataset(corpus, ENCODER, tmp_path / "one.h5", progress=False)
    assert single.num_added == 6
    with open_stores(out) as library, EmbeddingStore.open(single.store_path) as one:
        assert sorted(library.ids) == sorted(one.ids) and len(set(library.ids)) == 6
        assert library.fingerprint == one.fingerprint
        np.testing.assert_allclose(np.concatenate(library.arrays), one.get(library.ids), atol=1e-5)

    index = VectorIndex.load(build_index_from_store(out, tmp_path / "lib.faiss"))
    assert sorted(index.ids) == sorted(single_ids(single.store_path))


def single_ids(path: Path) -> list[str]:
    with EmbeddingStore.open(path) as store:
        return store.ids


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}])
def test_bad_torchrun_environment_is_refused(
    env: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from qvimclap.errors import StoreError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StoreError, match="do not describe a torchrun process"):
        embed_dataset(tmp_path, ENCODER, tmp_path / "x.h5", progress=False)
