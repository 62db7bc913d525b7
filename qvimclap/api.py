"""What the CLI does, as functions: load an embedder, embed files or datasets into stores, index, search.

A typical session::

    from qvimclap import api

    report = api.embed_dataset("sounds/", "clap:scratch", "embeddings/sounds.h5")   # resumable
    api.build_index("embeddings/sounds.h5", "indexes/sounds.faiss")
    for hit in api.search("imitation.wav", "indexes/sounds.faiss", k=5):
        print(hit.rank, f"{hit.score:.3f}", hit.id, hit.path)

Embedder specs (:func:`load_embedder`): ``clap:scratch``, ``clap:<folder, hub id, .pt or .ckpt>``,
``qvim:scratch:mn04``, ``qvim:<checkpoint>``, ``aisfx`` (the weights of the installed ``aisfx`` package),
``aisfx:<checkpoint.pth or saved folder>``, ``aligned:<dir>`` or just ``<dir>``; a ``#reference`` suffix
picks the reference tower of two-tower models. A store remembers its spec, so search can re-create the query
encoder: the same spec without ``#reference`` (queries are imitations, embedded by the imitation tower).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qvimclap.errors import (
    AudioError,
    CheckpointError,
    FingerprintMismatchError,
    QvimclapError,
    StoreError,
    about_file,
)
from qvimclap.index import IndexPlan, VectorIndex, build_index_from_store
from qvimclap.index import plan_index as plan_index_for
from qvimclap.models.base import AudioEmbedder
from qvimclap.shards import shard_files, shard_path, torchrun_rank
from qvimclap.store import EmbeddingStore

if TYPE_CHECKING:
    from qvimclap.data import Dataset

logger = logging.getLogger(__name__)

#: Which files of a dataset ``embed_dataset`` embeds.
ITEM_SETS = ("references", "queries", "all")
_TOWER_SUFFIXES = {"#reference": "reference", "#imitation": "imitation"}


@dataclass(frozen=True)
class Hit:
    """A search result: 1-based ``rank``, ``score`` (cosine), stored ``id`` and source ``path``."""

    rank: int
    score: float
    id: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "id": self.id, "path": self.path}


@dataclass(frozen=True)
class Failure:
    """A file that could not be embedded, and why (one line)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class EmbedReport:
    """What :func:`embed_dataset` did: rows added now, rows already stored (resume), unusable files."""

    store_path: Path
    num_items: int
    num_added: int
    num_skipped: int
    failures: tuple[Failure, ...] = field(default=())


# ---------------------------------------------------------------------------------------------- embedders
def parse_embedder_spec(spec: str) -> tuple[str, str, str]:
    """``spec`` -> ``(kind, source, tower)`` with kind ``"clap"``, ``"qvim"``, ``"aisfx"`` or ``"aligned"``.

    ``source`` is ``""`` for a bare ``aisfx`` (the installed package's weights)."""
    text = str(spec).strip()
    tower = "imitation"
    for suffix, name in _TOWER_SUFFIXES.items():
        if text.endswith(suffix):
            text, tower = text[: -len(suffix)], name
    if text == "aisfx":
        return "aisfx", "", tower
    for kind in ("clap", "qvim", "aisfx", "aligned"):
        if text.startswith(kind + ":") and len(text) > len(kind) + 1:
            return kind, text[len(kind) + 1 :], tower
    if text and Path(text).expanduser().is_dir():
        return "aligned", text, tower
    if Path(text).expanduser().is_file():
        raise CheckpointError(
            f"{text}: is a file, not a model folder; for a checkpoint file say which kind it is, e.g. "
            f"qvim:{text} or clap:{text}"
        )
    if "/" in text or text.startswith((".", "~")):  # meant as a model folder
        raise CheckpointError(
            f"{text}: no such model folder; pass an aligned model folder written by `qvimclap align`, or a "
            "spec such as clap:scratch or qvim:scratch:mn04"
        )
    raise CheckpointError(
        f"encoder spec {spec!r} is not understood; use clap:scratch, clap:<CLAP folder or checkpoint>, "
        "qvim:scratch:mn04, qvim:<checkpoint>, aisfx, aisfx:<checkpoint.pth or folder>, "
        "aligned:<model folder> or a model folder "
        "(add #reference for the reference tower)"
    )


def canonical_spec(spec: str) -> str:
    """The spec with an existing relative path made absolute, so it still works from another folder."""
    kind, source, tower = parse_embedder_spec(spec)
    path = Path(source).expanduser()
    if source and not source.startswith("scratch") and path.exists():
        source = str(path.resolve())
    return _format_spec(kind, source) + ("#reference" if tower == "reference" else "")


def query_spec(spec: str) -> str:
    """The spec of the encoder for queries (imitations) against a store built with ``spec``."""
    kind, source, _ = parse_embedder_spec(spec)
    return _format_spec(kind, source)


def _format_spec(kind: str, source: str) -> str:
    return f"{kind}:{source}" if source else kind


def load_embedder(spec: str, *, device: str = "auto") -> AudioEmbedder:
    """Build the :class:`~qvimclap.models.base.AudioEmbedder` a spec names (see the module docstring), on
    ``device`` (``"auto"``: a CUDA GPU when torch sees one, else the CPU)."""
    from qvimclap.device import resolve_device

    kind, source, tower = parse_embedder_spec(spec)
    target = resolve_device(device)
    if kind == "clap":
        from qvimclap.models.clap import ClapEncoder

        return ClapEncoder.from_pretrained(source).to(target)
    if kind == "qvim":
        from qvimclap.models.qvim import QvimEncoder

        return QvimEncoder.from_pretrained(source, tower=tower).to(target)
    if kind == "aisfx":  # one tower: #reference names the same network
        from qvimclap.models.aisfx import AisfxEncoder

        return AisfxEncoder.from_pretrained(source or None).to(target)
    from qvimclap.models.aligned import AlignedModel

    return AlignedModel.from_pretrained(Path(source).expanduser()).to(target).embedder(tower)


def _as_embedder(encoder: str | AudioEmbedder) -> AudioEmbedder:
    return load_embedder(encoder) if isinstance(encoder, str) else encoder


# ---------------------------------------------------------------------------------------------- embedding
def embed_file(path: str | Path, embedder: str | AudioEmbedder) -> np.ndarray:
    """One audio file -> ``[D]`` float32 L2-normalised; raises AudioError for unusable audio."""
    from qvimclap.audio import load_audio

    embedder = _as_embedder(embedder)
    wave = load_audio(path, embedder.sample_rate)
    try:
        return _checked_rows(embedder.embed([wave]), [str(path)])[0]
    except AudioError as err:  # the model knows the clip as "waveform 0"; the user knows the file
        raise about_file(err, path) from None


def embed_array(waveform: np.ndarray, sample_rate: int, embedder: str | AudioEmbedder) -> np.ndarray:
    """A float32 ``[T]`` (or ``[T, C]``) waveform at ``sample_rate`` Hz -> ``[D]`` float32 L2-normalised."""
    from qvimclap.audio import prepare_waveform

    embedder = _as_embedder(embedder)
    x = prepare_waveform(waveform, sample_rate, embedder.sample_rate)
    return _checked_rows(embedder.embed([x]), ["<array>"])[0]


def embed_files(
    paths: Sequence[str | Path],
    embedder: str | AudioEmbedder,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[np.ndarray, list[Failure]]:
    """Embed audio files; unusable ones are reported, not fatal.

    Returns ``(embeddings [N_ok, D] float32, failures)``: row ``i`` belongs to the ``i``-th path that is not
    among the failures (input order kept).
    """
    embedder = _as_embedder(embedder)
    chunks, failures = [], []
    for batch in _batches([Path(p) for p in paths], batch_size, progress=progress, what="files"):
        ok_paths, x, batch_failures = _embed_batch(batch, embedder, batch_size=batch_size)
        failures.extend(batch_failures)
        chunks.append(x)
    dim = embedder.embedding_dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), failures


def embed_dataset(
    data_path: str | Path,
    embedder_spec: str,
    out_path: str | Path,
    *,
    resume: bool = True,
    force: bool = False,
    batch_size: int = 16,
    items: str = "references",
    progress: bool = True,
    workers: int = 0,
) -> EmbedReport:
    """Embed a dataset's files into an HDF5 store at ``out_path``, committing each batch (kill-safe).

    Under ``torchrun`` (``WORLD_SIZE > 1``) each rank embeds its shard of the files
    (:func:`qvimclap.shards.shard_files`) into its own store beside ``out_path``
    (:func:`qvimclap.shards.shard_path`), on its own GPU when there is one (``LOCAL_RANK``); ranks never wait
    for each other, and a re-run resumes every shard. ``workers``: processes decoding audio while the model
    runs (a torch DataLoader; 0 decodes in this process).

    ``items``: ``"references"`` (the sound library, default), ``"queries"`` or ``"all"``. Ids are paths
    relative to the dataset root. An existing store is resumed (ids already stored are skipped; the
    fingerprint must match) unless ``force`` replaces it; with ``resume=False`` an existing store is an error.
    Unusable files are listed in the report, not fatal.
    """
    from qvimclap.data import item_id, open_dataset

    # 1. Inputs: dataset files, embedder, ids (all checked before a store is made).
    if items not in ITEM_SETS:
        raise StoreError(f"items must be one of {', '.join(ITEM_SETS)}, got {items!r}")
    _check_batch_size(batch_size)
    if workers < 0:
        raise StoreError(f"workers must be 0 or more, got {workers}")
    rank, world = torchrun_rank()
    out_path = Path(out_path) if world == 1 else shard_path(out_path, rank, world)
    if out_path.is_dir():
        raise StoreError(
            f"{out_path}: is a folder; --out takes the store's file name, e.g. {out_path / 'NAME.h5'}"
        )
    dataset = open_dataset(data_path)
    files = _dataset_files(dataset, items)
    if world > 1:
        files = shard_files(files, rank, world)
    if out_path.exists() and not (resume or force):
        raise StoreError(f"{out_path}: store already exists; pass --force to replace it or resume it")
    embedder = load_embedder(embedder_spec)
    fingerprint = embedder.fingerprint()
    ids = [item_id(path, dataset.root) for path in files]

    # 2. The store: resume (matching fingerprint, same files under the same ids) or create.
    created = force or not out_path.exists()
    if created:
        store = EmbeddingStore.create(
            out_path,
            fingerprint,
            embedder.embedding_dim,
            force=force,
            embedder_spec=canonical_spec(embedder_spec),
            capacity=len(files),
        )
    else:
        store = EmbeddingStore.open(out_path, mode="a")
        try:
            store.check_fingerprint(fingerprint)
            _check_same_files(store, ids, files)
        except StoreError:
            store.close()
            raise

    # 3. Embed what is missing, batch by batch; each batch is committed before the next starts.
    try:
        with store:
            todo = [(i, p) for i, p in zip(ids, files, strict=True) if i not in store]
            num_skipped = len(files) - len(todo)
            if num_skipped:
                logger.info("%s: resuming, %d of %d items already stored", out_path, num_skipped, len(files))
            id_of = {p: i for i, p in todo}
            failures: list[Failure] = []
            num_added = 0
            loaded = _loaded_batches(
                [p for _, p in todo], embedder.sample_rate, batch_size, workers=workers, progress=progress
            )
            for paths, waves, load_failures in loaded:
                ok_paths, x, batch_failures = _embed_waves(paths, waves, embedder, batch_size=batch_size)
                failures.extend(load_failures + batch_failures)
                if ok_paths:
                    rows = [_metadata_row(p, dataset) for p in ok_paths]
                    store.append([id_of[p] for p in ok_paths], x, rows)
                    num_added += len(ok_paths)
    except BaseException:
        if created and len(store) == 0:
            out_path.unlink(missing_ok=True)  # an empty store made by this run would only block the next one
        raise
    return EmbedReport(out_path, len(files), num_added, num_skipped, tuple(failures))


def _check_same_files(store: EmbeddingStore, ids: Sequence[str], files: Sequence[Path]) -> None:
    """Refuse to resume a store whose rows under these ids came from other files.

    Ids are paths relative to the dataset root, so ``colA/x.wav`` and ``colB/x.wav`` embedded from their own
    folders would both be ``x.wav``: skipping the second as "already stored" would silently lose it.
    """
    stored = [(i, p) for i, p in zip(ids, files, strict=True) if i in store]
    if not stored:
        return
    rows = store.rows_of([i for i, _ in stored])
    sources = store.column("source_path")
    for (item, path), row in zip(stored, rows, strict=True):
        if not _same_file(sources[row], path):
            raise StoreError(
                f"{store.path}: id {item!r} is already stored from {sources[row]}, not from {path}; "
                "a store holds one folder: embed the folders' common parent (ids keep the sub-folder), "
                "use another --out, or --force to replace the store"
            )


def _same_file(stored: str, path: Path) -> bool:
    if not stored:  # rows appended without a source path: nothing to compare
        return True
    try:
        return os.path.samefile(stored, path)
    except (
        OSError
    ):  # the stored file is gone: only the same name is the same file (a moved library needs --force)
        return Path(stored).absolute() == path.absolute()


def _embed_batch(
    paths: Sequence[Path], embedder: AudioEmbedder, *, batch_size: int
) -> tuple[list[Path], np.ndarray, list[Failure]]:
    """Load and embed one batch; unusable files become failures instead of errors."""
    ok_paths, waves, failures = _load_batch(paths, embedder.sample_rate)
    ok_paths, x, embed_failures = _embed_waves(ok_paths, waves, embedder, batch_size=batch_size)
    return ok_paths, x, failures + embed_failures


def _load_batch(
    paths: Sequence[Path], sample_rate: int
) -> tuple[list[Path], list[np.ndarray], list[Failure]]:
    """Decode one batch of files (in a DataLoader worker when there are workers)."""
    from qvimclap.audio import load_audio

    ok_paths, waves, failures = [], [], []
    for path in paths:
        try:
            waves.append(load_audio(path, sample_rate))
            ok_paths.append(path)
        except AudioError as err:
            failures.append(Failure(path, str(about_file(err, path))))
    return ok_paths, waves, failures


class _DecodedBatches:
    """Batches of files as a map-style dataset: item ``i`` is batch ``i`` decoded (a torch DataLoader runs it
    in worker processes, in order, so decoding overlaps with the model)."""

    def __init__(self, batches: list[list[Path]], sample_rate: int) -> None:
        self.batches, self.sample_rate = batches, sample_rate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[list[Path], list[np.ndarray], list[Failure]]:
        return _load_batch(self.batches[i], self.sample_rate)


def _loaded_batches(
    paths: list[Path], sample_rate: int, batch_size: int, *, workers: int, progress: bool
) -> Iterator[tuple[list[Path], list[np.ndarray], list[Failure]]]:
    batches = list(_batches(paths, batch_size, progress=False, what="files"))
    if workers == 0:
        decoded: Any = (_load_batch(b, sample_rate) for b in batches)
    else:
        from torch.utils.data import DataLoader

        decoded = DataLoader(
            _DecodedBatches(batches, sample_rate),
            batch_size=None,  # items are whole batches already
            num_workers=workers,
            prefetch_factor=2,
            collate_fn=_as_is,
        )
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), unit="files", disable=not progress, leave=False) as bar:
        for ok_paths, waves, failures in decoded:
            yield ok_paths, waves, failures
            bar.update(len(ok_paths) + len(failures))


def _as_is(item: Any) -> Any:
    return item


def _embed_waves(
    ok_paths: list[Path], waves: list[np.ndarray], embedder: AudioEmbedder, *, batch_size: int
) -> tuple[list[Path], np.ndarray, list[Failure]]:
    """Embed decoded clips; clips the embedder cannot use become failures, never NaN rows."""
    failures: list[Failure] = []
    if not waves:
        return [], np.zeros((0, embedder.embedding_dim), np.float32), failures
    try:
        x = np.asarray(embedder.embed(waves, batch_size=batch_size), dtype=np.float32)
    except AudioError:
        # Some clip the loader accepted is still unusable for this embedder: isolate it file by file.
        return _embed_one_by_one(ok_paths, waves, embedder, failures)
    finite = np.isfinite(x).all(axis=1)
    for i in np.flatnonzero(~finite):  # never store NaN: report the file instead
        failures.append(Failure(ok_paths[i], f"{ok_paths[i]}: the encoder produced NaN or Inf for this clip"))
    return [p for p, ok in zip(ok_paths, finite, strict=True) if ok], x[finite], failures


def _embed_one_by_one(
    paths: list[Path], waves: list[np.ndarray], embedder: AudioEmbedder, failures: list[Failure]
) -> tuple[list[Path], np.ndarray, list[Failure]]:
    ok_paths, rows = [], []
    for path, wave in zip(paths, waves, strict=True):
        try:
            row = np.asarray(embedder.embed([wave]), dtype=np.float32)
        except AudioError as err:
            failures.append(Failure(path, str(about_file(err, path))))
            continue
        if not np.isfinite(row).all():
            failures.append(Failure(path, f"{path}: the encoder produced NaN or Inf for this clip"))
            continue
        ok_paths.append(path)
        rows.append(row)
    x = np.concatenate(rows) if rows else np.zeros((0, embedder.embedding_dim), np.float32)
    return ok_paths, x, failures


def _dataset_files(dataset: Dataset, items: str) -> list[Path]:
    if items == "references":
        return list(dataset.references)
    if items == "queries":
        return list(dataset.queries)
    return list(dict.fromkeys([*dataset.references, *dataset.queries]))


def _metadata_row(path: Path, dataset: Dataset) -> dict[str, Any]:
    from qvimclap.audio import audio_info

    info = audio_info(path)
    return {
        "source_path": str(path),
        "duration_s": info.duration_s,
        "sample_rate": info.sample_rate,
        "label": dataset.label_of(path),
    }


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise StoreError(f"batch size must be at least 1, got {batch_size} (--batch-size)")


def _batches(items: list[Path], batch_size: int, *, progress: bool, what: str):
    from tqdm.auto import tqdm

    _check_batch_size(batch_size)
    with tqdm(total=len(items), unit=what, disable=not progress, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            yield batch
            bar.update(len(batch))


def _checked_rows(x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AudioError(f"{names[0]}: the encoder produced NaN or Inf for this clip")
    return x


# ------------------------------------------------------------------------------------------ stores / indexes
def open_store(path: str | Path, mode: str = "r") -> EmbeddingStore:
    """Open an embedding store (``"r"`` to read, ``"a"`` to append); use as a context manager."""
    return EmbeddingStore.open(path, mode=mode)


def plan_index(
    store_path: str | Path | Sequence[str | Path],
    *,
    kind: str = "flat",
    max_memory: int | str | None = None,
    params: Mapping[str, int] | None = None,
) -> IndexPlan:
    """The kind (``"auto"`` chooses by size and ``max_memory``), parameters and memory of the index that
    :func:`build_index` would build over the store(s); nothing is built."""
    from qvimclap.shards import open_stores

    with open_stores(store_path) as library:
        return plan_index_for(library.num_rows, library.dim, kind=kind, max_memory=max_memory, params=params)


def build_index(
    store_path: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    kind: str = "flat",
    center: bool = True,
    force: bool = False,
    max_memory: int | str | None = None,
    params: Mapping[str, int] | None = None,
    plan: IndexPlan | None = None,
) -> Path:
    """Build an index (``flat`` exact, ``hnsw``, ``ivf``, ``ivfpq`` or ``auto``) over a store, the shards
    of a parallel embed (its ``--out`` path), a glob or a list of stores; returns the index path.

    ``center`` (default): scores are cosines after subtracting the library's mean vector (stored in the
    index). ``max_memory`` (bytes or ``"4G"``): the budget ``auto`` and ``ivfpq`` size the index to.
    """
    return build_index_from_store(
        store_path,
        out_path,
        kind=kind,
        center=center,
        force=force,
        max_memory=max_memory,
        params=params,
        plan=plan,
    )


def merge_stores(
    stores: str | Path | Sequence[str | Path], out_path: str | Path, *, force: bool = False
) -> Path:
    """One store at ``out_path`` holding the rows of ``stores`` (e.g. a parallel embed's ``--out``, whose
    shards are merged); mixed fingerprints and ids stored twice are refused."""
    from qvimclap.shards import merge_stores as _merge

    return _merge(stores, out_path, force=force)


def load_index(path: str | Path) -> VectorIndex:
    return VectorIndex.load(path)


# ---------------------------------------------------------------------------------------------- search
def search(
    query: str | Path | np.ndarray,
    index: str | Path | VectorIndex,
    k: int = 10,
    *,
    encoder: str | AudioEmbedder | None = None,
    sample_rate: int | None = None,
) -> list[Hit]:
    """The ``k`` nearest stored items to one query, best first.

    ``query`` is an audio file path; or a waveform array together with its ``sample_rate``; or, without
    ``sample_rate``, an embedding vector ``[D]`` already in the index's space. ``encoder`` (spec or embedder)
    embeds audio queries; by default the one recorded with the index (imitation tower). A query encoder whose
    vector space or dimension differs from the index's raises FingerprintMismatchError.
    """
    index = index if isinstance(index, VectorIndex) else VectorIndex.load(index)
    if isinstance(query, np.ndarray) and sample_rate is None:
        vector = np.asarray(query, dtype=np.float32).reshape(1, -1)
        return search_vectors(vector, index, k)[0]
    embedder = _query_embedder(index, encoder)
    check_query_space(embedder.fingerprint(), index.fingerprint)
    if isinstance(query, np.ndarray):
        assert sample_rate is not None
        vector = embed_array(query, sample_rate, embedder)
    else:
        vector = embed_file(query, embedder)
    return search_vectors(vector[None, :], index, k)[0]


def search_vectors(vectors: np.ndarray, index: str | Path | VectorIndex, k: int = 10) -> list[list[Hit]]:
    """Embeddings ``[Q, D]`` float32 -> one best-first hit list per query."""
    index = index if isinstance(index, VectorIndex) else VectorIndex.load(index)
    scores, rows = index.search_rows(np.atleast_2d(vectors), k)
    return [
        [
            Hit(rank=r + 1, score=float(s), id=index.ids[i], path=index.paths[i])
            for r, (s, i) in enumerate(zip(score_row, row_ids, strict=True))
            if i >= 0
        ]
        for score_row, row_ids in zip(scores.tolist(), rows.tolist(), strict=True)
    ]


def check_query_space(query_fingerprint: Mapping[str, Any], index_fingerprint: Mapping[str, Any]) -> None:
    """Refuse queries from an encoder whose vector ``space`` or ``dim`` differs from the index's."""
    problems = []
    for key in ("space", "dim"):
        expected, got = index_fingerprint.get(key), query_fingerprint.get(key)
        if expected != got:
            problems.append(f"{key}: index has {expected!r}, query encoder gives {got!r}")
    if problems:
        raise FingerprintMismatchError(
            "the query encoder does not embed into the index's vector space ("
            + "; ".join(problems)
            + "); pass --encoder with an encoder of that space, e.g. the one that built the store"
        )


def _query_embedder(index: VectorIndex, encoder: str | AudioEmbedder | None) -> AudioEmbedder:
    if encoder is not None:
        return _as_embedder(encoder)
    if not index.embedder_spec:
        raise StoreError("the index does not record which encoder built it; pass --encoder SPEC")
    try:
        return load_embedder(query_spec(index.embedder_spec))
    except QvimclapError as err:
        raise CheckpointError(
            f"cannot re-create the query encoder {query_spec(index.embedder_spec)!r} recorded with the index "
            f"({err}); pass --encoder SPEC"
        ) from None


__all__ = [
    "EmbedReport",
    "Failure",
    "Hit",
    "build_index",
    "check_query_space",
    "embed_array",
    "embed_dataset",
    "embed_file",
    "embed_files",
    "load_embedder",
    "load_index",
    "merge_stores",
    "open_store",
    "plan_index",
    "search",
    "search_vectors",
]

# Alignment into a target space and retrieval evaluation (qvimclap align / eval-retrieval).
from qvimclap.evaluation import RetrievalReport, evaluate_retrieval  # noqa: E402
from qvimclap.train.align import AlignConfig, AlignResult, train_alignment  # noqa: E402

__all__ += ["AlignConfig", "AlignResult", "RetrievalReport", "evaluate_retrieval", "train_alignment"]

from qvimclap.generation import GenerationConfig, generate, generate_from_imitation, load_audioldm  # noqa: E402

__all__ += ["GenerationConfig", "generate", "generate_from_imitation", "load_audioldm"]

# Datasets, their one-pass check and the built-in corpus (qvimclap data check / synth).
from qvimclap.data import Dataset, Pair, open_dataset, split_by_reference  # noqa: E402
from qvimclap.data.check import CheckReport, check_dataset  # noqa: E402
from qvimclap.data.synth import make_corpus  # noqa: E402

__all__ += ["CheckReport", "Dataset", "Pair", "check_dataset", "make_corpus", "open_dataset"]
__all__ += ["split_by_reference"]
