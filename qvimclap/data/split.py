"""The split of a dataset into training and validation references, and its record in a model folder.

Training splits with :func:`split_by_reference` and writes a :class:`SplitRecord` (``split.json``) into the
model folder; evaluation reads it back (:func:`read_split`), so that ``--split val`` is the validation set
training used without retyping its seed and fraction, and :func:`select_split` warns when the references
evaluated include ones the model was trained on (``--split train``, another val fraction or seed, or another
dataset holding the same sound files).

References are identified by content (SHA-256 of the file's bytes), not by path: a copied or moved corpus
is still recognised, and two corpora that happen to use the same file names are not confused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qvimclap.data import Dataset, item_id
from qvimclap.errors import DatasetError, StoreError
from qvimclap.files import atomic_path

SPLIT_NAME = "split.json"
SPLITS = ("all", "train", "val")
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0


def split_by_reference(
    dataset: Dataset, *, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED
) -> tuple[Dataset, Dataset]:
    """Split into (train, validation) so that no reference, and so no pair, is on both sides.

    The references are shuffled with ``seed`` (deterministic) and ``round(val_fraction * R)`` of them, at
    least one and at most ``R - 1``, go to validation. Each side keeps the order of the original pairs and
    references.
    """
    if not 0.0 < val_fraction < 1.0 or not math.isfinite(val_fraction):
        raise DatasetError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    num_refs = len(dataset.references)
    if num_refs < 2:
        raise DatasetError(f"{dataset.root}: cannot split {num_refs} reference(s); a split needs at least 2")
    num_val = min(max(round(val_fraction * num_refs), 1), num_refs - 1)
    order = np.random.default_rng(seed).permutation(num_refs)
    val_refs = {dataset.references[i] for i in order[:num_val]}
    return _subset(dataset, lambda r: r not in val_refs), _subset(dataset, lambda r: r in val_refs)


def _subset(dataset: Dataset, keep) -> Dataset:
    refs = [(r, dataset.label_of(r)) for r in dataset.references if keep(r)]
    return Dataset(
        root=dataset.root,
        layout=dataset.layout,
        pairs=tuple(p for p in dataset.pairs if keep(p.reference_path)),
        references=tuple(r for r, _ in refs),
        reference_labels=tuple(label for _, label in refs),
    )


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes (first 16 hex digits; None for a missing or unreadable file)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset) -> str:
    """What a split depends on: the references in order (by content) and the pairs (by id); 16 hex digits.

    Two datasets with the same fingerprint split identically for the same seed and fraction.
    """
    content = {
        "references": [[item_id(r, dataset.root), file_sha256(r)] for r in dataset.references],
        "pairs": [
            [item_id(p.query_path, dataset.root), item_id(p.reference_path, dataset.root)]
            for p in dataset.pairs
        ],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SplitRecord:
    """The split a model was trained with, as written to ``split.json`` in its folder.

    ``train_references`` / ``val_references`` map each reference's id (its path relative to the dataset
    root) to the SHA-256 of its file (:func:`file_sha256`).
    """

    seed: int
    val_fraction: float
    dataset_root: str
    dataset_fingerprint: str
    train_references: dict[str, str | None]
    val_references: dict[str, str | None]

    @classmethod
    def of(cls, dataset: Dataset, *, val_fraction: float, seed: int) -> SplitRecord:
        """The record of ``split_by_reference(dataset, val_fraction=..., seed=...)``."""
        train, val = split_by_reference(dataset, val_fraction=val_fraction, seed=seed)
        return cls(
            seed=seed,
            val_fraction=val_fraction,
            dataset_root=str(dataset.root),
            dataset_fingerprint=dataset_fingerprint(dataset),
            train_references={item_id(r, dataset.root): file_sha256(r) for r in train.references},
            val_references={item_id(r, dataset.root): file_sha256(r) for r in val.references},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "dataset_root": self.dataset_root,
            "dataset_fingerprint": self.dataset_fingerprint,
            "train_references": self.train_references,
            "val_references": self.val_references,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitRecord:
        from qvimclap.config import require_known_keys

        require_known_keys(cls, data, "split record", StoreError)
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/split.json`` atomically."""
        path = Path(folder) / SPLIT_NAME
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def read_split(folder: str | Path) -> SplitRecord | None:
    """The split recorded in a model folder; None when it has none (a folder from before the record, or a
    checkpoint file)."""
    path = Path(folder) / SPLIT_NAME
    if not path.is_file():
        return None
    try:
        return SplitRecord.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise StoreError(f"{path}: not a valid split record ({err}); delete it or retrain") from None


def select_split(
    dataset: Dataset,
    split: str,
    *,
    record: SplitRecord | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
) -> tuple[Dataset, list[str]]:
    """The part of ``dataset`` to evaluate (``split``: all, train or val), and warnings for the user.

    ``val_fraction`` / ``seed`` default to the ``record``'s (the model's training split), else to
    :data:`DEFAULT_VAL_FRACTION` / :data:`DEFAULT_SEED`. A warning is returned when any evaluated reference
    is one the model was trained on (by file content), naming how many and why that may be.
    """
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    subset = dataset
    if split != "all":
        if val_fraction is None:
            val_fraction = record.val_fraction if record else DEFAULT_VAL_FRACTION
        if seed is None:
            seed = record.seed if record else DEFAULT_SEED
        train, val = split_by_reference(dataset, val_fraction=val_fraction, seed=seed)
        subset = val if split == "val" else train
    if record is None:
        return subset, []
    return subset, _overlap_warnings(dataset, subset, split, record)


def _overlap_warnings(dataset: Dataset, subset: Dataset, split: str, record: SplitRecord) -> list[str]:
    trained = {h for h in record.train_references.values() if h is not None}
    seen = [r for r in subset.references if file_sha256(r) in trained]
    if not seen:
        return []
    if split == "train":
        why = "--split train evaluates the training references"
    elif dataset_fingerprint(dataset) != record.dataset_fingerprint:
        why = f"this dataset is not the one the model was split on ({record.dataset_root})"
    elif split == "all":
        why = "--split all includes the training references; --split val holds them out"
    else:
        why = (
            f"the split differs from training's (seed {record.seed}, val fraction {record.val_fraction}); "
            "drop --seed/--val-fraction to use it"
        )
    return [
        f"{len(seen)} of the {len(subset.references)} references evaluated were training references of this "
        f"model ({why}); these numbers are not a held-out measure"
    ]
