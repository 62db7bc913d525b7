"""The generic ``pairs.csv`` layout: the format for your own data (and the one ``qvimclap synth`` writes).

A comma-separated file with a header row and the columns ``imitation,reference[,label]`` (``query`` is
accepted for ``imitation``). Paths are relative to the CSV's folder (absolute paths work too). Without a
``label`` column (or with an empty cell) a pair is labelled by its reference: the reference's folder name
when the references sit in more than one folder (class folders), else the reference's file stem (each
reference its own class).
"""

from __future__ import annotations

import csv
from pathlib import Path

from qvimclap.data import Dataset, Pair, make_dataset
from qvimclap.errors import DatasetError

PAIRS_CSV = "pairs.csv"
_QUERY_COLUMNS = ("imitation", "query")


def read_pairs_csv(csv_path: str | Path) -> Dataset:
    """Read a ``pairs.csv``; raises :class:`DatasetError` naming the file, row and problem."""
    csv_path = Path(csv_path).absolute()
    root = csv_path.parent
    rows = _read_rows(csv_path)
    header = [c.strip().lower() for c in rows[0]]
    query_col = next((header.index(c) for c in _QUERY_COLUMNS if c in header), None)
    if query_col is None or "reference" not in header:
        raise DatasetError(
            f"{csv_path}: header {rows[0]} must name the columns imitation,reference[,label] "
            "(paths relative to the CSV)"
        )
    ref_col = header.index("reference")
    label_col = header.index("label") if "label" in header else None

    entries: list[tuple[Path, Path, str]] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = [c.strip() for c in row] + [""] * len(header)
        query, reference = cells[query_col], cells[ref_col]
        if not query or not reference:
            raise DatasetError(f"{csv_path}, line {line_no}: both 'imitation' and 'reference' need a path")
        label = cells[label_col] if label_col is not None else ""
        entries.append((root / query, root / reference, label))
    if not entries:
        raise DatasetError(f"{csv_path}: no pairs (only a header); add one imitation,reference row per pair")

    default_label = _default_labeler([ref for _, ref, _ in entries])
    pairs = [Pair(q, r, label or default_label(r)) for q, r, label in entries]
    return make_dataset(root, "pairs", pairs)


def write_pairs_csv(csv_path: Path, pairs: list[Pair], *, root: Path | None = None) -> Path:
    """Write ``pairs`` as a ``pairs.csv`` with paths relative to ``root`` (default: the CSV's folder)."""
    root = root or csv_path.parent
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["imitation", "reference", "label"])
        for p in pairs:
            writer.writerow([_relative(p.query_path, root), _relative(p.reference_path, root), p.label])
    return csv_path


def _read_rows(csv_path: Path) -> list[list[str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{csv_path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None
    except csv.Error as err:
        raise DatasetError(f"{csv_path}: malformed CSV ({err})") from None
    if not rows:
        raise DatasetError(f"{csv_path}: file is empty; expected a header imitation,reference[,label]")
    return rows


def _default_labeler(references: list[Path]):
    if len({r.parent for r in references}) > 1:
        return lambda r: r.parent.name
    return lambda r: r.stem


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
