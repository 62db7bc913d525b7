"""A prepared dataset: every clip decoded once into a memory-mappable cache, and the frozen target embeddings
of every reference, both keyed by fingerprints (``qvimclap prepare``; align and eval-retrieval run it when
something is missing).

Where it lives is decided here and only here (:func:`cache_dir_for`): an explicit folder, else
``<data>/.qvimclap-cache`` when the data folder is writable, else a folder under the user's cache named after
the data folder's path. Align, eval-retrieval, the demo and the library all call it.

Decoded audio: ``audio-<decode fingerprint id>/<key>.npy``, one float32 ``[T]`` file per clip (mono, at the
decode sample rate, at most ``max_duration_s``), opened with ``mmap_mode="r"`` so a crop reads only its
samples and processes on one machine (DataLoader workers, DDP ranks) share one copy in the page cache. The key
hashes the clip's item id with its file's size and modification time: a changed file gets a new key and is
decoded again, never served stale. float32, because float16 or int16 storage changed the QVIM encoder's
output by up to 2e-4 and 1e-4 (max |diff| of the L2-normalised mn10 embedding), far beyond float32 round-off
(2e-8); see the README. Each file is written atomically, so a killed ``prepare`` keeps every finished clip and
a rerun decodes only the rest.

Targets: an :class:`~qvimclap.store.EmbeddingStore` per target fingerprint (:mod:`qvimclap.targets`), rows
keyed by item id and file identity as well, computed on the best device (a GPU when present).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvimclap.errors import DatasetError
from qvimclap.files import atomic_path
from qvimclap.fingerprint import fingerprint_id

logger = logging.getLogger(__name__)

CACHE_DIR_NAME = ".qvimclap-cache"
#: The decode settings every prepared clip depends on; a change here means a new cache folder.
DECODER_VERSION = 1


def cache_dir_for(data_root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of a dataset: ``cache_dir`` when given, else ``<data_root>/.qvimclap-cache`` when the
    data folder is writable, else ``$XDG_CACHE_HOME/qvimclap/datasets/<hash of the data folder's path>``
    (``~/.cache`` by default)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    data_root = Path(data_root).expanduser().resolve()
    if os.access(data_root, os.W_OK):
        return data_root / CACHE_DIR_NAME
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(data_root).encode()).hexdigest()[:16]
    return user_cache / "qvimclap" / "datasets" / f"{data_root.name}-{digest}"


def file_identity(path: Path) -> str:
    """``size-mtime_ns`` of a file: what changes when the file is rewritten."""
    stat = Path(path).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def decode_fingerprint(sample_rate: int, max_duration_s: float) -> dict[str, Any]:
    return {
        "decoder": "qvimclap.audio.load_audio",
        "version": DECODER_VERSION,
        "sample_rate": int(sample_rate),
        "max_duration_s": float(max_duration_s),
        "dtype": "float32",
    }


def audio_dir(cache_dir: Path, sample_rate: int, max_duration_s: float) -> Path:
    return Path(cache_dir) / f"audio-{fingerprint_id(decode_fingerprint(sample_rate, max_duration_s))}"


def clip_key(path: Path, root: Path) -> str:
    """The cache key of one clip: its item id and its file's identity, hashed."""
    from qvimclap.data import item_id

    text = f"{item_id(path, root)}\0{file_identity(path)}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def prepare_audio(
    paths: Sequence[Path],
    *,
    root: Path,
    cache_dir: Path,
    sample_rate: int,
    max_duration_s: float,
    progress: bool = False,
) -> list[Path]:
    """Decode every clip not cached yet (one pass, with a progress bar); the ``.npy`` file of each path."""
    from tqdm.auto import tqdm

    from qvimclap.audio import load_audio

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(
            f"{missing[0]}: listed by the dataset but not found{more}; `qvimclap data check` lists every "
            "problem"
        )
    folder = audio_dir(cache_dir, sample_rate, max_duration_s)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{clip_key(p, root)}.npy" for p in paths]
    todo = [(p, f) for p, f in zip(paths, files, strict=True) if not f.is_file()]
    if todo:
        logger.info("decoding %d of %d clips into %s", len(todo), len(paths), folder)
    for path, file in tqdm(todo, desc="decode", disable=not progress or not todo, leave=False):
        waveform = load_audio(path, sample_rate, max_duration_s=max_duration_s, allow_silent=True)
        with atomic_path(file) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(waveform, dtype=np.float32))
    return files


def open_clips(files: Sequence[Path]) -> list[np.ndarray]:
    """The prepared clips, memory-mapped read-only (``[T]`` float32 each)."""
    return [np.load(f, mmap_mode="r") for f in files]


@dataclass
class PreparedDataset:
    """A dataset whose clips are decoded (``query_files`` / ``reference_files``, in the dataset's order of
    ``queries`` / ``references``) and whose references have target embeddings (``targets`` ``[R, D]``
    float32, or None when no target was asked for)."""

    dataset: Any
    cache_dir: Path
    query_files: list[Path]
    reference_files: list[Path]
    targets: np.ndarray | None
    target_fingerprint: dict[str, Any] | None
    #: the target network's features of every query (``[Q, F]``, with ``view_features``), else None
    query_features: np.ndarray | None = None

    def query_clips(self) -> list[np.ndarray]:
        return open_clips(self.query_files)

    def reference_clips(self) -> list[np.ndarray]:
        return open_clips(self.reference_files)


def prepare_dataset(
    data: Any,
    *,
    target: Any = None,
    cache_dir: str | Path | None = None,
    sample_rate: int = 32000,
    max_duration_s: float = 10.0,
    device: str = "auto",
    view_features: bool = False,
    progress: bool = False,
) -> PreparedDataset:
    """Prepare ``data`` (a dataset folder or an opened dataset): decode every query and reference once, and
    embed every reference with ``target`` (any frozen :class:`~qvimclap.models.base.AudioEmbedder`: a CLAP,
    aisfx, ...; None: no targets) on ``device``; with ``view_features``, also the target network's features
    of every query (what ``align --target-view`` trains on). Cached work is reused; a killed run resumes."""
    from qvimclap.data import open_dataset
    from qvimclap.targets import clap_targets
    from qvimclap.targets import view_features as cached_view_features

    dataset = open_dataset(data) if isinstance(data, (str, Path)) else data
    folder = cache_dir_for(dataset.root, cache_dir)
    queries, references = list(dataset.queries), list(dataset.references)
    settings = dict(
        root=dataset.root, cache_dir=folder, sample_rate=sample_rate, max_duration_s=max_duration_s
    )
    query_files = prepare_audio(queries, progress=progress, **settings)
    reference_files = prepare_audio(references, progress=progress, **settings)
    targets = fingerprint = None
    if target is not None:
        _to_device(target, device)
        targets = clap_targets(references, target, root=dataset.root, cache_dir=folder, progress=progress)
        fingerprint = target.fingerprint()
    features = None
    if view_features and target is not None and query_files:
        features = cached_view_features(
            query_files, target, sample_rate=sample_rate, cache_dir=folder, progress=progress
        )
    return PreparedDataset(dataset, folder, query_files, reference_files, targets, fingerprint, features)


def _to_device(embedder: Any, device: str) -> None:
    """Move a torch embedder to ``device`` (the targets are computed where it is fastest); others stay."""
    from qvimclap.device import resolve_device

    if hasattr(embedder, "to") and callable(embedder.to):
        embedder.to(resolve_device(device))
