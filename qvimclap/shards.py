"""Libraries kept in several stores: the shards of a parallel embed, lists and globs of stores, and merging.

A parallel ``qvimclap embed --out S.h5`` (under ``torchrun``, one process per rank) writes one store per rank
beside ``S.h5``::

    S.shard-00000-of-00004.h5   S.shard-00001-of-00004.h5   ...

:func:`shard_files` deals a file list out to the ranks (deterministic, disjoint, covering it);
:func:`open_stores` opens what ``qvimclap index`` is given: a store, the ``--out`` path of a parallel embed
(then all its shards, which must all be there), a glob, or a list of stores. The stores must share one
fingerprint and no id may be in two of them. :func:`merge_stores` writes them into one store.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from qvimclap.errors import FingerprintMismatchError, StoreError
from qvimclap.fingerprint import fingerprint_differences
from qvimclap.store import METADATA_DEFAULTS, EmbeddingStore

T = TypeVar("T")
_SHARD = re.compile(r"\.shard-(\d{5})-of-(\d{5})$")


def torchrun_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process as ``torchrun`` set them (``RANK``, ``WORLD_SIZE``); ``(0, 1)``
    outside torchrun. Embedding ranks never talk to each other, so no process group is joined: a dead node
    costs only its own shards, which a re-run resumes."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise StoreError(f"RANK={rank} and WORLD_SIZE={world} do not describe a torchrun process")
    return rank, world


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes the shard of the store ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{rank:05d}-of-{world_size:05d}{out.suffix}")


def shard_files(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world_size``-th item from ``rank`` on.

    Deterministic (the same list gives every rank the same split, on any machine), disjoint and covering;
    striding rather than cutting into blocks balances folders of long and short clips across ranks.
    """
    if not 0 <= rank < world_size:
        raise StoreError(f"rank {rank} is outside a world of {world_size} processes")
    return list(items[rank::world_size])


def find_shards(out: str | Path) -> list[Path]:
    """The shards a parallel embed with ``--out out`` wrote, in rank order; [] when there are none.

    Raises StoreError when shards of different world sizes are mixed or a rank's shard is missing."""
    out = Path(out)
    found: dict[int, dict[int, Path]] = {}
    for name in glob.glob(glob.escape(str(out.with_name(out.stem))) + ".shard-*-of-*" + out.suffix):
        match = _SHARD.search(Path(name).stem)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = Path(name)
    if not found:
        return []
    if len(found) > 1:
        raise StoreError(
            f"{out}: shards of parallel embeds with different process counts ({sorted(found)}) lie together; "
            "remove the stale ones"
        )
    ((world, ranks),) = found.items()
    missing = sorted(set(range(world)) - set(ranks))
    if missing:
        raise StoreError(
            f"{out}: shard(s) of rank {', '.join(map(str, missing))} of {world} are missing; re-run the "
            "parallel embed (it resumes) so every rank writes its shard"
        )
    return [ranks[r] for r in range(world)]


def resolve_store_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Store paths named by ``spec``: a store, the ``--out`` of a parallel embed (its shards), a glob, or a
    list of those."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            paths.append(path)
        elif shards := find_shards(path):
            paths.extend(shards)
        elif glob.has_magic(str(item)) and (matches := sorted(glob.glob(str(item)))):
            paths.extend(Path(m) for m in matches)
        else:
            raise StoreError(
                f"{path}: no such embedding store (nor shards of one); make one with `qvimclap embed`"
            )
    if not paths:
        raise StoreError("no embedding store given")
    if len({p.resolve() for p in paths}) != len(paths):
        raise StoreError("a store is named twice; give each store once")
    return paths


@dataclass
class Library:
    """Open stores of one fingerprint, read as one: rows in store order, ids unique across them."""

    stores: list[EmbeddingStore]
    ids: list[str]

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.stores[0].dim

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.stores[0].fingerprint

    @property
    def embedder_spec(self) -> str | None:
        return self.stores[0].embedder_spec

    @property
    def arrays(self) -> list[np.ndarray]:
        """Each store's embeddings, memory-mapped (nothing read until touched)."""
        return [s.mapped_embeddings() for s in self.stores]

    def column(self, name: str) -> list[Any]:
        return [value for s in self.stores for value in s.column(name)]

    def store_entries(self) -> list[dict[str, Any]]:
        """What an index records to find the rows again: absolute store paths and their row counts."""
        return [{"path": str(s.path.resolve()), "rows": len(s)} for s in self.stores]

    def describe(self) -> str:
        first = str(self.stores[0].path)
        return first if len(self.stores) == 1 else f"{first} (+{len(self.stores) - 1} more stores)"


@contextmanager
def open_stores(spec: str | Path | Sequence[str | Path]) -> Iterator[Library]:
    """Open the stores ``spec`` names (see :func:`resolve_store_paths`) for reading, as one :class:`Library`.

    Raises FingerprintMismatchError for stores of different fingerprints and StoreError for an id stored in
    two of them."""
    stores: list[EmbeddingStore] = []
    try:
        for path in resolve_store_paths(spec):
            stores.append(EmbeddingStore.open(path))
        first = stores[0]
        for store in stores[1:]:
            diffs = fingerprint_differences(first.fingerprint, store.fingerprint)
            if diffs or store.dim != first.dim:
                raise FingerprintMismatchError(
                    f"{store.path}: embeddings from a different model or preprocessing than {first.path} "
                    f"({'; '.join(diffs) or 'dim differs'}); index stores of one fingerprint together"
                )
        ids = [i for s in stores for i in s.ids]
        if len(set(ids)) != len(ids):
            seen: dict[str, Path] = {}
            for store in stores:
                for item in store.ids:
                    if item in seen:
                        raise StoreError(
                            f"id {item!r} is in both {seen[item]} and {store.path}; a library needs each id "
                            "once (were the same files embedded twice?)"
                        )
                    seen[item] = store.path
        yield Library(stores, ids)
    finally:
        for store in stores:
            store.close()


def merge_stores(
    spec: str | Path | Sequence[str | Path], out: str | Path, *, force: bool = False, batch_size: int = 8192
) -> Path:
    """Write the stores ``spec`` names (e.g. the shards of a parallel embed) into one store at ``out``.

    Same checks as :func:`open_stores`; rows keep their order (store by store). The new store is written
    under a temporary name and renamed when complete, so a kill leaves no half store at ``out``."""
    from qvimclap.files import atomic_path

    out = Path(out)
    if out.exists() and not force:
        raise StoreError(f"{out}: store already exists; pass --force to overwrite it")
    with open_stores(spec) as library:
        if any(s.path.resolve() == out.resolve() for s in library.stores):
            raise StoreError(f"{out}: is one of the stores being merged; write the merge to a new path")
        with atomic_path(out) as tmp:
            tmp.unlink()  # EmbeddingStore.create makes the file itself
            with EmbeddingStore.create(
                tmp,
                library.fingerprint,
                library.dim,
                embedder_spec=library.embedder_spec,
                capacity=library.num_rows,
            ) as merged:
                for store, vectors in zip(library.stores, library.arrays, strict=True):
                    columns = {name: store.column(name) for name in METADATA_DEFAULTS}
                    for start in range(0, len(store), batch_size):
                        stop = min(len(store), start + batch_size)
                        rows = [{k: columns[k][i] for k in columns} for i in range(start, stop)]
                        merged.append(store.ids[start:stop], np.asarray(vectors[start:stop]), rows)
    return out
