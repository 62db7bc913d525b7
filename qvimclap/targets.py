"""Training targets: the frozen target embedding (CLAP, aisfx, ...) of every reference, computed once per
dataset and reused.

Training never runs CLAP per step. The first run on a dataset embeds its unique references with CLAP into an
HDF5 :class:`~qvimclap.store.EmbeddingStore` named after the CLAP fingerprint (``clap-<fingerprint id>.h5``)
under a cache folder; later runs (and evaluation) read it, embedding only references that are not in it yet. A
different CLAP model, checkpoint or preprocessing has a different fingerprint and so a different file:
targets of two spaces are never mixed (the function keeps its first name, ``clap_targets``).

References are read whole at CLAP's sample rate (never zero-padded by us: padding a clip before CLAP was one
of the project log's causes of NaN embeddings); the CLAP embedder applies its own length policy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qvimclap.audio import load_audio
from qvimclap.data import item_id
from qvimclap.errors import CheckpointError, StoreError
from qvimclap.fingerprint import fingerprint_id
from qvimclap.models.base import AudioEmbedder
from qvimclap.prepared import CACHE_DIR_NAME, file_identity  # noqa: F401 (CACHE_DIR_NAME: re-export)

logger = logging.getLogger(__name__)


def targets_path(cache_dir: Path, clap_fingerprint: dict) -> Path:
    """Where the targets of one CLAP fingerprint live."""
    return Path(cache_dir) / f"clap-{fingerprint_id(clap_fingerprint)}.h5"


def clap_targets(
    references: Sequence[Path],
    clap: AudioEmbedder,
    *,
    root: Path,
    cache_dir: Path,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """CLAP embeddings of ``references`` (``[R, D]`` float32, L2-normalised, in the given order), via the
    cache.

    Missing references are embedded and appended to the cache store first; cached rows are reused as they are.
    A row's id is the reference's item id and its file's identity (size, modification time): a rewritten file
    is embedded again, never served stale. ``clap`` may be any frozen embedder (CLAP, aisfx, ...); its
    fingerprint names the store.
    Raises :class:`CheckpointError` if CLAP returns non-finite vectors (they are never written).
    """
    from qvimclap.store import EmbeddingStore

    fingerprint = clap.fingerprint()
    path = targets_path(cache_dir, fingerprint)
    ids = [f"{item_id(p, root)}#{file_identity(p)}" for p in references]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        EmbeddingStore.create(path, fingerprint, clap.embedding_dim).close()
    with EmbeddingStore.open(path, mode="r") as store:
        _check_fingerprint(store.fingerprint, fingerprint, path)
        have = set(store.ids)
    todo = [(i, p) for i, p in zip(ids, references, strict=True) if i not in have]
    if todo:  # only then open for writing: readers (other ranks, evaluation) never take the write lock
        from tqdm.auto import tqdm

        logger.info("embedding %d references into %s", len(todo), path)
        with EmbeddingStore.open(path, mode="a") as store:
            for start in tqdm(range(0, len(todo), 64), desc="targets", disable=not progress, leave=False):
                _embed_chunk(store, todo[start : start + 64], clap, batch_size)
    with EmbeddingStore.open(path, mode="r") as store:
        return np.asarray(store.get(ids), dtype=np.float32)


def _embed_chunk(store, chunk: list[tuple[str, Path]], clap: AudioEmbedder, batch_size: int) -> None:
    waveforms = [load_audio(p, clap.sample_rate) for _, p in chunk]
    embeddings = np.asarray(clap.embed(waveforms, batch_size=batch_size), dtype=np.float32)
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        names = ", ".join(str(p) for (_, p), b in zip(chunk, bad, strict=True) if b)
        raise CheckpointError(f"CLAP produced non-finite embeddings for: {names}; check these files")
    store.append([i for i, _ in chunk], embeddings, [{"source_path": str(p)} for _, p in chunk])


def _check_fingerprint(stored: dict, expected: dict, path: Path) -> None:
    from qvimclap.fingerprint import fingerprint_differences

    diff = fingerprint_differences(stored, expected)
    if diff:
        raise StoreError(f"{path}: cached targets were made by another model ({'; '.join(diff)}); delete it")


def features_path(cache_dir: Path, fingerprint: dict) -> Path:
    """Where the target-view features of one target network and decode setting live."""
    return Path(cache_dir) / f"features-{fingerprint_id(fingerprint)}.h5"


def view_features(
    files: Sequence[Path],
    target: AudioEmbedder,
    *,
    sample_rate: int,
    cache_dir: Path,
    progress: bool = False,
) -> np.ndarray:
    """The target network's features (:func:`qvimclap.models.view.target_features`) of prepared clips
    (``files`` of :func:`qvimclap.prepared.prepare_audio`, decoded at ``sample_rate``), ``[N, F]`` float32
    in the given order, via a cache store as :func:`clap_targets` keeps the targets.

    They are computed from the decoded clips, resampled to the target's rate, exactly as an aligned model's
    embedder computes them at search time. A row's id is the clip's decode folder and key (item id and file
    identity), so a rewritten file or another decode setting is computed again, never served stale.
    """
    from qvimclap.audio import resample
    from qvimclap.models.view import feature_kind, target_features
    from qvimclap.store import EmbeddingStore

    if not files:
        raise ValueError("view_features needs at least one clip")
    fingerprint = {
        "target": target.fingerprint(),
        "features": feature_kind(target),
        "input_rate": sample_rate,
    }
    path = features_path(cache_dir, fingerprint)
    ids = [f"{Path(f).parent.name}/{Path(f).stem}" for f in files]
    have: set[str] = set()
    if path.exists():
        with EmbeddingStore.open(path, mode="r") as store:
            _check_fingerprint(store.fingerprint, fingerprint, path)
            have = set(store.ids)
    todo = [(i, f) for i, f in zip(ids, files, strict=True) if i not in have]
    if todo:
        from tqdm.auto import tqdm

        logger.info("computing the target's features of %d clips into %s", len(todo), path)
        for start in tqdm(range(0, len(todo), 64), desc="view features", disable=not progress, leave=False):
            chunk = todo[start : start + 64]
            clips = [resample(np.load(f), sample_rate, target.sample_rate) for _, f in chunk]
            features = np.asarray(target_features(target, clips), dtype=np.float32)
            bad = ~np.isfinite(features).all(axis=1)
            if bad.any():
                raise CheckpointError(
                    f"the target produced non-finite features for {int(bad.sum())} clip(s); check its weights"
                )
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                EmbeddingStore.create(path, fingerprint, features.shape[1]).close()
            with EmbeddingStore.open(path, mode="a") as store:
                store.append([i for i, _ in chunk], features)
    with EmbeddingStore.open(path, mode="r") as store:
        return np.asarray(store.get(ids), dtype=np.float32)
