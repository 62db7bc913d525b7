"""Datasets of (query, reference, label) pairs, read from the layouts people actually have on disk.

A query is a vocal imitation, a reference is the sound it imitates. Readers never open audio files: a path
that does not exist still becomes part of the dataset, so that ``qvimclap data check`` can report every
problem in one pass. Layouts (auto-detected by :func:`open_dataset`):

- ``"vimsketch"``: ``references/``, ``vocal_imitations/`` and their ``*_file_names.csv`` lists
  (:mod:`qvimclap.data.vimsketch`);
- ``"qvim-dev"``: ``DEV Dataset.csv`` with ``Items/<Class>/`` and ``Queries/<Class>/``
  (:mod:`qvimclap.data.qvim_dev`);
- ``"pairs"``: a ``pairs.csv`` with columns ``imitation,reference[,label]`` (:mod:`qvimclap.data.pairs`), the
  format for your own data and the one ``qvimclap synth`` writes;
- ``"folder"``: any folder of audio files, no pairs; the label of a file is the name of its parent folder.

Everything here is torch-free; the torch ``Dataset``/collate for training lives with the training code.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qvimclap.errors import DatasetError

LAYOUTS = ("vimsketch", "qvim-dev", "pairs", "folder")


def item_id(path: str | Path, root: str | Path) -> str:
    """The store id of a dataset file: its path relative to the dataset root, with ``/`` separators (the
    absolute path for a file outside the root, which a pairs file may point to).

    Symbolic links are kept as they are (not resolved), so a corpus whose folders are links still gets ids
    relative to its own root. Every store keys its rows by these ids (embeddings and the CLAP targets cache).
    """
    path, root = Path(path).absolute(), Path(root).absolute()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True)
class Pair:
    """One vocal imitation (``query_path``) of one reference sound, with the reference's class ``label``."""

    query_path: Path
    reference_path: Path
    label: str


@dataclass(frozen=True)
class Dataset:
    """Pairs plus the unique references (in first-seen order), all paths absolute.

    ``reference_labels`` (optional, parallel to ``references``) labels references that no pair mentions,
    e.g. in the ``"folder"`` layout; when it is empty such references are labelled by their parent folder's
    name.
    """

    root: Path
    layout: str
    pairs: tuple[Pair, ...]
    references: tuple[Path, ...]
    reference_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.layout in LAYOUTS, self.layout
        assert not self.reference_labels or len(self.reference_labels) == len(self.references)

    def __len__(self) -> int:
        return len(self.pairs)

    @functools.cached_property
    def queries(self) -> tuple[Path, ...]:
        """Unique query paths in first-seen order."""
        return tuple(dict.fromkeys(p.query_path for p in self.pairs))

    @functools.cached_property
    def _labels(self) -> dict[Path, str]:
        labels: dict[Path, str] = {}
        if self.reference_labels:
            labels.update(zip(self.references, self.reference_labels, strict=True))
        for pair in self.pairs:
            labels.setdefault(pair.reference_path, pair.label)
            labels.setdefault(pair.query_path, pair.label)
        return labels

    def label_of(self, path: str | Path) -> str:
        """The class label of a query or reference of this dataset (parent folder name for unlisted files)."""
        path = Path(path)
        return self._labels.get(path) or path.parent.name

    @property
    def labels(self) -> tuple[str, ...]:
        """Sorted unique class labels of the references."""
        return tuple(sorted({self.label_of(r) for r in self.references}))

    def pairs_of(self, reference_path: Path) -> tuple[Pair, ...]:
        """The pairs whose reference is ``reference_path``."""
        return tuple(p for p in self.pairs if p.reference_path == reference_path)


def make_dataset(
    root: Path, layout: str, pairs: Iterable[Pair], extra_references: Iterable[Path] = ()
) -> Dataset:
    """Build a :class:`Dataset` from pairs: duplicate pairs dropped, references unique in first-seen order."""
    unique_pairs = tuple(dict.fromkeys(pairs))
    references = dict.fromkeys(p.reference_path for p in unique_pairs)
    references.update(dict.fromkeys(extra_references))
    return Dataset(root=root, layout=layout, pairs=unique_pairs, references=tuple(references))


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder (or its CSV file), detecting the layout.

    Raises :class:`DatasetError` when ``path`` does not exist, holds no known layout, or its CSV is malformed.
    """
    from qvimclap.data import pairs, qvim_dev, vimsketch

    path = Path(path).absolute()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder; pass a dataset folder or its CSV file")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(
                f"{path}: expected a dataset folder or a .csv file, got a {path.suffix or 'plain'} file"
            )
        if qvim_dev.looks_like_qvim_dev_csv(path):
            return qvim_dev.read_qvim_dev(path.parent, csv_path=path)
        return pairs.read_pairs_csv(path)
    if (path / pairs.PAIRS_CSV).is_file():
        return pairs.read_pairs_csv(path / pairs.PAIRS_CSV)
    if (path / qvim_dev.DEV_CSV).is_file():
        return qvim_dev.read_qvim_dev(path)
    if vimsketch.looks_like_vimsketch(path):
        return vimsketch.read_vimsketch(path)
    return read_audio_folder(path)


def read_audio_folder(root: Path) -> Dataset:
    """The ``"folder"`` layout: every audio file under ``root`` is a reference labelled by its parent
    folder."""
    from qvimclap.audio import find_audio_files

    root = Path(root).absolute()
    files = find_audio_files(root)
    if not files:
        raise DatasetError(
            f"{root}: no dataset found (no pairs.csv, 'DEV Dataset.csv', VimSketch lists or audio files); "
            "see `qvimclap data check --help` for the accepted layouts"
        )
    return Dataset(root=root, layout="folder", pairs=(), references=tuple(files))


# The split lives in its own module (training writes it, evaluation reads it); imported after Dataset exists.
from qvimclap.data.split import split_by_reference  # noqa: E402

__all__ = [
    "LAYOUTS",
    "Dataset",
    "Pair",
    "make_dataset",
    "open_dataset",
    "read_audio_folder",
    "split_by_reference",
]
