"""The QVIM-DEV layout (AES AIMLA 2025 challenge): 121 references, 985 imitations.

::

    qvim-dev/
      DEV Dataset.csv          # line 1: a title; line 2: header Label,Class,Items,Query 1,Query 2,Query 3
      Items/<Class>/<Items>
      Queries/<Class>/<Query k>

Each row pairs one reference (``Items``) with up to three imitations; empty query cells are skipped and the
same item may appear in several rows (it is one reference). The label is ``Class``, as in the challenge's
class-wise NDCG.
"""

from __future__ import annotations

import csv
from pathlib import Path

from qvimclap.data import Dataset, Pair, make_dataset
from qvimclap.errors import DatasetError

DEV_CSV = "DEV Dataset.csv"
REFERENCES_DIR = "Items"
QUERIES_DIR = "Queries"
_REQUIRED = ("Class", "Items")
_QUERY_PREFIX = "Query"
#: The header is line 2; a few more lines are searched so that a file saved without its title still reads.
_HEADER_SEARCH_LINES = 5


def looks_like_qvim_dev_csv(csv_path: Path) -> bool:
    """The CSV has a ``Class``/``Items`` header within its first lines."""
    try:
        return _find_header(_read_rows(csv_path)) is not None
    except DatasetError:
        return False


def read_qvim_dev(root: str | Path, *, csv_path: Path | None = None) -> Dataset:
    """Read a QVIM-DEV folder; raises :class:`DatasetError` naming the file, line and problem."""
    root = Path(root).absolute()
    csv_path = Path(csv_path or root / DEV_CSV).absolute()
    rows = _read_rows(csv_path)
    header_at = _find_header(rows)
    if header_at is None:
        raise DatasetError(
            f"{csv_path}: no header with columns {', '.join(_REQUIRED)} in the first "
            f"{_HEADER_SEARCH_LINES} lines (expected line 1 a title, "
            "line 2 Label,Class,Items,Query 1,Query 2,Query 3)"
        )
    header = [c.strip() for c in rows[header_at]]
    class_col, item_col = header.index("Class"), header.index("Items")
    query_cols = [i for i, name in enumerate(header) if name.startswith(_QUERY_PREFIX)]

    pairs: list[Pair] = []
    for line_no, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        cells = [c.strip() for c in row] + [""] * len(header)
        if not any(cells):
            continue
        label, item = cells[class_col], cells[item_col]
        if not label or not item:
            raise DatasetError(f"{csv_path}, line {line_no}: 'Class' and 'Items' must not be empty")
        reference = root / REFERENCES_DIR / label / item
        for col in query_cols:
            if cells[col]:  # empty query cells are skipped
                pairs.append(Pair(root / QUERIES_DIR / label / cells[col], reference, label))
    if not pairs:
        raise DatasetError(f"{csv_path}: no row has a query; fill the 'Query 1..3' columns")
    return make_dataset(root, "qvim-dev", pairs)


def _read_rows(csv_path: Path) -> list[list[str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f))
    except FileNotFoundError:
        raise DatasetError(f"{csv_path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{csv_path}: not UTF-8 text ({err.reason}); save it as UTF-8") from None
    except csv.Error as err:
        raise DatasetError(f"{csv_path}: malformed CSV ({err})") from None


def _find_header(rows: list[list[str]]) -> int | None:
    for i, row in enumerate(rows[:_HEADER_SEARCH_LINES]):
        names = {c.strip() for c in row}
        if all(name in names for name in _REQUIRED):
            return i
    return None
