"""What ``qvimclap serve`` holds in memory: the loaded indexes with their query encoders; and uploads, checked
by the library's own audio loader.

Everything here is loaded ONCE at start-up and then only read, so any number of request threads may search at
the same time (FAISS CPU search and torch inference in eval mode do not mutate shared state). Search is
:func:`qvimclap.api.search`, the function behind ``qvimclap search``; nothing here re-implements it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from qvimclap import api
from qvimclap.audio import AUDIO_EXTENSIONS, audio_info
from qvimclap.errors import AudioError, CheckpointError, QvimclapError, StoreError
from qvimclap.index import VectorIndex
from qvimclap.models.base import AudioEmbedder

logger = logging.getLogger(__name__)


class UploadError(QvimclapError):
    """An uploaded file is too large, too long, or not audio the loader accepts (HTTP ``status``)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Recordings in the page stop at ``max_record_s``."""

    max_upload_bytes: int = 20 * 2**20
    max_duration_s: float = 30.0
    max_record_s: float = 10.0
    max_k: int = 100
    max_generate_s: float = 10.24  # AudioLDM was trained on 10.24 s clips
    max_generate_steps: int = 200
    max_pending_jobs: int = 8

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoadedIndex:
    """One index, the encoder that embeds queries into its space, and its ids' rows (for file look-ups)."""

    name: str
    path: Path
    index: VectorIndex
    embedder: AudioEmbedder
    embedder_spec: str
    rows: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "num_items": len(self.index),
            "dim": self.index.dim,
            "kind": self.index.kind,
            "space": self.index.fingerprint.get("space"),
            "query_encoder": self.embedder_spec,
        }

    def item_path(self, item_id: str) -> Path:
        """The source file of a stored item. Only ids of this index resolve, so no client-given path is ever
        opened (a ``../`` id is simply an unknown id)."""
        row = self.rows.get(item_id)
        if row is None:
            raise StoreError(f"index {self.name!r} has no item {item_id!r}")
        path = Path(self.index.paths[row])
        if not self.index.paths[row] or not path.is_file():
            raise StoreError(
                f"item {item_id!r} of index {self.name!r}: its file {path} is not on this machine"
            )
        return path


def load_indexes(index_paths: Sequence[str | Path], *, model: str | None = None) -> dict[str, LoadedIndex]:
    """Load every index once, keyed by file stem, each with its query encoder: ``model`` when given, else the
    encoder recorded with the index (imitation tower). Encoders are shared between indexes of one spec.
    A query encoder of another vector space is refused here, at start-up, not at the first search."""
    if not index_paths:
        raise StoreError("give at least one --index (an index file written by `qvimclap index`)")
    paths = [Path(p) for p in index_paths]
    for i, path in enumerate(paths):  # before any slow loading
        if same := [p for p in paths[:i] if p.stem == path.stem]:
            raise StoreError(f"two indexes are named {path.stem!r} ({same[0]}, {path}); rename one")
    embedders: dict[str, AudioEmbedder] = {}
    loaded: dict[str, LoadedIndex] = {}
    for path in paths:
        index = api.load_index(path)
        spec = model if model is not None else _recorded_query_spec(index, path)
        if spec not in embedders:
            embedders[spec] = api.load_embedder(spec)
        api.check_query_space(embedders[spec].fingerprint(), index.fingerprint)
        rows = {item_id: row for row, item_id in enumerate(index.ids)}
        loaded[path.stem] = LoadedIndex(path.stem, path, index, embedders[spec], spec, rows)
        logger.info("loaded %s: %d items, queries by %s", path, len(index), spec)
    return loaded


def _recorded_query_spec(index: VectorIndex, path: Path) -> str:
    if not index.embedder_spec:
        raise CheckpointError(f"{path}: the index does not record which encoder built it; pass --model SPEC")
    return api.query_spec(index.embedder_spec)


def search(library: LoadedIndex, audio_path: Path, k: int) -> list[dict[str, Any]]:
    """``qvimclap search --json`` for one query file: ``[{"rank", "score", "id", "path"}, ...]``, each with
    the item's ``label`` where the index knows it."""
    hits = api.search(audio_path, library.index, k, encoder=library.embedder)
    labels = library.index.labels
    return [
        {**hit.to_dict(), **({"label": label} if (label := labels[library.rows[hit.id]]) else {})}
        for hit in hits
    ]


class UploadFolder:
    """The one folder ``serve`` writes to: uploads live there only while a request reads them. A temporary
    folder removed at exit unless ``path`` is given (then it is created if needed and kept)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._owned = path is None
        self.path = Path(tempfile.mkdtemp(prefix="qvimclap-serve-")) if path is None else Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def saved(self, stream: BinaryIO, filename: str | None, limits: Limits) -> Iterator[Path]:
        """Copy an upload to a private file (at most ``limits.max_upload_bytes``), check its header and
        duration with :func:`qvimclap.audio.audio_info`, yield its path, and delete it afterwards."""
        name = Path(filename or "upload").name or "upload"
        suffix = Path(name).suffix.lower()
        fd, tmp_name = tempfile.mkstemp(
            dir=self.path, prefix="upload-", suffix=suffix if suffix in AUDIO_EXTENSIONS else ".bin"
        )
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb") as out:
                _copy_limited(stream, out, limits.max_upload_bytes, name)
            try:
                info = audio_info(tmp)
            except AudioError as err:
                raise UploadError(str(err).replace(str(tmp), name)) from None
            if info.duration_s > limits.max_duration_s:
                raise UploadError(
                    f"{name}: {info.duration_s:.1f} s is longer than this server's limit of "
                    f"{limits.max_duration_s:g} s; trim it",
                    status=413,
                )
            yield tmp
        except AudioError as err:  # raised by the loader while the request read the file
            raise UploadError(str(err).replace(str(tmp), name)) from None
        finally:
            tmp.unlink(missing_ok=True)


def _copy_limited(stream: BinaryIO, out: BinaryIO, max_bytes: int, name: str) -> None:
    total = 0
    while chunk := stream.read(1 << 16):
        total += len(chunk)
        if total > max_bytes:
            raise UploadError(f"{name}: larger than this server's limit of {max_bytes / 2**20:g} MiB", 413)
        out.write(chunk)
    if total == 0:
        raise UploadError(f"{name}: file is empty (0 bytes)")
