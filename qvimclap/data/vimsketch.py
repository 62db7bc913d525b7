"""The VimSketch layout (Kim & Pardo): 542 references, 12,543 vocal imitations.

::

    VimSketch/
      references/NNN_<id>.wav
      vocal_imitations/NNNNN_<id>.wav
      reference_file_names.csv         # tab-separated, no header, one file name a line
      vocal_imitation_file_names.csv

An imitation belongs to the reference with the same ``<id>`` (the file name with its numeric prefix and
extension removed); ``<id>`` is also the label. Names contain spaces, punctuation and non-ASCII characters, so
nothing here splits on anything but the tab and the first ``_`` after the digits. When a list file is
absent the folder is listed instead (sorted).
"""

from __future__ import annotations

import re
from pathlib import Path

from qvimclap.audio import AUDIO_EXTENSIONS
from qvimclap.data import Dataset, Pair, make_dataset
from qvimclap.errors import DatasetError

REFERENCES_DIR = "references"
IMITATIONS_DIR = "vocal_imitations"
REFERENCES_CSV = "reference_file_names.csv"
IMITATIONS_CSV = "vocal_imitation_file_names.csv"
_PREFIX = re.compile(r"^\d+_")


def looks_like_vimsketch(root: Path) -> bool:
    """Both folders, or both list files, are present."""
    dirs = (root / REFERENCES_DIR).is_dir() and (root / IMITATIONS_DIR).is_dir()
    lists = (root / REFERENCES_CSV).is_file() and (root / IMITATIONS_CSV).is_file()
    return dirs or lists


def sound_id(file_name: str) -> str:
    """``"012_Dog bark, big.wav"`` -> ``"Dog bark, big"``: the name without numeric prefix and extension."""
    return _PREFIX.sub("", Path(file_name).stem, count=1)


def read_vimsketch(root: str | Path) -> Dataset:
    """Read a VimSketch folder; raises :class:`DatasetError` for duplicate reference ids or orphan
    imitations."""
    root = Path(root).absolute()
    ref_names = _file_names(root, REFERENCES_CSV, REFERENCES_DIR)
    imitation_names = _file_names(root, IMITATIONS_CSV, IMITATIONS_DIR)

    ref_by_id: dict[str, Path] = {}
    for name in ref_names:
        ref_id = sound_id(name)
        if ref_id in ref_by_id:
            raise DatasetError(
                f"{root}: references {ref_by_id[ref_id].name!r} and {name!r} share the id {ref_id!r}; "
                "each reference needs a unique name after its numeric prefix"
            )
        ref_by_id[ref_id] = root / REFERENCES_DIR / name

    pairs: list[Pair] = []
    orphans: list[str] = []
    for name in imitation_names:
        ref_id = sound_id(name)
        if ref_id not in ref_by_id:
            orphans.append(name)
            continue
        pairs.append(Pair(root / IMITATIONS_DIR / name, ref_by_id[ref_id], ref_id))
    if orphans:
        raise DatasetError(
            f"{root}: {len(orphans)} imitation(s) match no reference id, e.g. {orphans[0]!r}; "
            f"an imitation NNNNN_<id> needs a reference NNN_<id> in {REFERENCES_CSV}"
        )
    if not pairs:
        raise DatasetError(f"{root}: VimSketch layout without any imitation; check {IMITATIONS_CSV}")
    return make_dataset(root, "vimsketch", pairs, extra_references=ref_by_id.values())


def _file_names(root: Path, list_name: str, folder_name: str) -> list[str]:
    """File names from the list file (first tab-separated column), else from the folder."""
    list_path = root / list_name
    if list_path.is_file():
        try:
            lines = list_path.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as err:
            raise DatasetError(f"{list_path}: not UTF-8 text ({err.reason}); save it as UTF-8") from None
        names = [line.split("\t")[0].strip() for line in lines]
        return list(dict.fromkeys(n for n in names if n))
    folder = root / folder_name
    if not folder.is_dir():
        raise DatasetError(f"{root}: VimSketch layout needs {list_name} or a {folder_name}/ folder")
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
