"""Dataset readers (VimSketch, QVIM-DEV, pairs.csv, folder), auto-detection, split and the one-pass check."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from qvimclap.data import Dataset, Pair, open_dataset, split_by_reference
from qvimclap.data.check import check_dataset
from qvimclap.data.pairs import read_pairs_csv, write_pairs_csv
from qvimclap.data.vimsketch import sound_id
from qvimclap.errors import DatasetError

SR = 16000
# Names as real datasets have them: spaces, punctuation, quotes and non-ASCII.
VIMSKETCH_REFS = [
    "001_Dog bark, big (loud).wav",
    "002_Café crème — spoon.wav",
    "003_Siren; 'ambulance' & co.wav",
]
VIMSKETCH_IMITATIONS = [
    "00001_Dog bark, big (loud).wav",
    "00002_Dog bark, big (loud).wav",
    "00003_Café crème — spoon.wav",
    "00004_Siren; 'ambulance' & co.wav",
    "00005_Siren; 'ambulance' & co.wav",
]


def _write_tone(path: Path, freq: float = 440.0, duration_s: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(freq, duration_s, SR), SR)


@pytest.fixture
def vimsketch(tmp_path) -> Path:
    root = tmp_path / "Vim Sketch"
    for name in VIMSKETCH_REFS:
        _write_tone(root / "references" / name)
    for name in VIMSKETCH_IMITATIONS:
        _write_tone(root / "vocal_imitations" / name, 220)
    # tab-separated, no header, one name a line; an extra column must not matter
    (root / "reference_file_names.csv").write_text(
        "".join(f"{n}\tx\n" for n in VIMSKETCH_REFS), encoding="utf-8"
    )
    (root / "vocal_imitation_file_names.csv").write_text(
        "\n".join(VIMSKETCH_IMITATIONS) + "\n", encoding="utf-8"
    )
    return root


@pytest.fixture
def qvim_dev(tmp_path) -> Path:
    root = tmp_path / "qvim-dev"
    rows = [
        ["Label", "Class", "Items", "Query 1", "Query 2", "Query 3"],
        ["Dog", "Animal, Domestic", "bark 1, big.wav", "q 1.wav", "q 2.wav", ""],
        ["Dog", "Animal, Domestic", "bark 1, big.wav", "q 3 ü.wav", "", ""],  # the same item again
        ["Siren", "Vehicle", "sirène №2.wav", "", "v1.wav", "v 2.wav"],
    ]
    with open(root.mkdir(parents=True) or root / "DEV Dataset.csv", "w", newline="", encoding="utf-8") as f:
        f.write("AES AIMLA Challenge 2025 - DEV set,,,,,\n")  # line 1: a title
        csv.writer(f).writerows(rows)
    for cls, item, queries in [
        ("Animal, Domestic", "bark 1, big.wav", ["q 1.wav", "q 2.wav", "q 3 ü.wav"]),
        ("Vehicle", "sirène №2.wav", ["v1.wav", "v 2.wav"]),
    ]:
        _write_tone(root / "Items" / cls / item)
        for q in queries:
            _write_tone(root / "Queries" / cls / q, 220)
    return root


# ----------------------------------------------------------------------------------------------------
# VimSketch


def test_vimsketch_pairs_by_id(vimsketch):
    ds = open_dataset(vimsketch)
    assert ds.layout == "vimsketch" and ds.root == vimsketch
    assert [r.name for r in ds.references] == VIMSKETCH_REFS
    assert [p.query_path.name for p in ds.pairs] == VIMSKETCH_IMITATIONS
    assert [p.reference_path.name for p in ds.pairs] == [VIMSKETCH_REFS[i] for i in (0, 0, 1, 2, 2)]
    assert ds.pairs[2].label == "Café crème — spoon"
    assert all(p.query_path.is_file() and p.reference_path.is_file() for p in ds.pairs)
    assert ds.label_of(ds.references[2]) == "Siren; 'ambulance' & co"
    assert len(ds.queries) == 5 and len(ds) == 5


def test_vimsketch_without_lists_lists_the_folders(vimsketch):
    (vimsketch / "reference_file_names.csv").unlink()
    (vimsketch / "vocal_imitation_file_names.csv").unlink()
    ds = open_dataset(vimsketch)
    assert ds.layout == "vimsketch" and len(ds.pairs) == 5 and len(ds.references) == 3


def test_vimsketch_orphan_and_duplicate_ids_are_errors(vimsketch):
    with open(vimsketch / "vocal_imitation_file_names.csv", "a", encoding="utf-8") as f:
        f.write("00009_Unknown thing.wav\n")
    with pytest.raises(DatasetError, match="1 imitation.*match no reference.*00009_Unknown thing"):
        open_dataset(vimsketch)
    (vimsketch / "reference_file_names.csv").write_text("001_a b.wav\n002_a b.wav\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="share the id 'a b'"):
        open_dataset(vimsketch)


def test_sound_id_removes_only_the_numeric_prefix():
    assert sound_id("012_Dog bark, big.wav") == "Dog bark, big"
    assert sound_id("00001_123_abc.flac") == "123_abc"
    assert sound_id("no prefix.wav") == "no prefix"


# ----------------------------------------------------------------------------------------------------
# QVIM-DEV


def test_qvim_dev_rows_become_pairs(qvim_dev):
    ds = open_dataset(qvim_dev)
    assert ds.layout == "qvim-dev"
    bark = qvim_dev / "Items" / "Animal, Domestic" / "bark 1, big.wav"
    siren = qvim_dev / "Items" / "Vehicle" / "sirène №2.wav"
    assert ds.references == (bark, siren)  # the repeated item is one reference
    assert [(p.query_path.name, p.reference_path, p.label) for p in ds.pairs] == [
        ("q 1.wav", bark, "Animal, Domestic"),
        ("q 2.wav", bark, "Animal, Domestic"),
        ("q 3 ü.wav", bark, "Animal, Domestic"),
        ("v1.wav", siren, "Vehicle"),
        ("v 2.wav", siren, "Vehicle"),
    ]  # empty query cells skipped
    assert all(p.query_path.is_file() for p in ds.pairs)
    assert ds.pairs[0].query_path == qvim_dev / "Queries" / "Animal, Domestic" / "q 1.wav"
    assert ds.labels == ("Animal, Domestic", "Vehicle")


def test_qvim_dev_opens_from_its_csv_and_rejects_a_wrong_header(qvim_dev):
    assert open_dataset(qvim_dev / "DEV Dataset.csv").pairs == open_dataset(qvim_dev).pairs
    (qvim_dev / "DEV Dataset.csv").write_text("title\nName,Kind,File\nx,y,z\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no header with columns Class, Items"):
        open_dataset(qvim_dev)


# ----------------------------------------------------------------------------------------------------
# pairs.csv and plain folders


def test_pairs_csv_relative_paths_and_labels(tmp_path):
    (tmp_path / "pairs.csv").write_text(
        "imitation,reference,label\n"
        "imit/a 1.wav,refs/a.wav,dog\nimit/a 2.wav,refs/a.wav,\nimit/b.wav,refs/b.wav,cat\n",
        encoding="utf-8",
    )
    ds = open_dataset(tmp_path)
    assert ds.layout == "pairs"
    assert ds.references == (tmp_path / "refs/a.wav", tmp_path / "refs/b.wav")
    assert [p.label for p in ds.pairs] == ["dog", "a", "cat"]  # empty cell: the reference's stem
    assert ds.pairs[0].query_path == tmp_path / "imit" / "a 1.wav"


def test_pairs_csv_default_label_is_the_class_folder_when_there_are_several(tmp_path):
    csv_path = tmp_path / "my pairs.csv"
    csv_path.write_text("query,reference\nq1.wav,dogs/a.wav\nq2.wav,cats/b.wav\n", encoding="utf-8")
    ds = open_dataset(csv_path)  # any .csv file name, and "query" for "imitation"
    assert [p.label for p in ds.pairs] == ["dogs", "cats"]


def test_pairs_csv_round_trip(tmp_path):
    pairs = [
        Pair(tmp_path / "q é.wav", tmp_path / "r/x, y.wav", "k,1"),
        Pair(tmp_path / "q2.wav", tmp_path / "r/z.wav", "k2"),
    ]
    write_pairs_csv(tmp_path / "pairs.csv", pairs)
    assert read_pairs_csv(tmp_path / "pairs.csv").pairs == tuple(pairs)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "file is empty"),
        ("imitation,reference\n", "no pairs"),
        ("a,b\nx.wav,y.wav\n", "must name the columns imitation,reference"),
        ("imitation,reference\nx.wav,\n", "line 2: both 'imitation' and 'reference' need a path"),
    ],
)
def test_pairs_csv_errors_name_the_file(tmp_path, text, match):
    (tmp_path / "pairs.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=match) as err:
        open_dataset(tmp_path)
    assert str(tmp_path / "pairs.csv") in str(err.value) and "\n" not in str(err.value)


def test_folder_layout_labels_by_parent_folder(tmp_path):
    _write_tone(tmp_path / "dogs" / "b.wav")
    _write_tone(tmp_path / "cats" / "a.flac")
    ds = open_dataset(tmp_path)
    assert ds.layout == "folder" and ds.pairs == ()
    assert [r.relative_to(tmp_path).as_posix() for r in ds.references] == ["cats/a.flac", "dogs/b.wav"]
    assert ds.labels == ("cats", "dogs")


def test_open_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no dataset found"):
        open_dataset(tmp_path)
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="expected a dataset folder or a .csv file"):
        open_dataset(tmp_path / "x.wav")


# ----------------------------------------------------------------------------------------------------
# split


def _many(num_refs: int, per_ref: int = 2) -> Dataset:
    root = Path("/data")
    pairs = [
        Pair(root / f"q{i}_{j}.wav", root / f"r{i}.wav", f"c{i % 3}")
        for i in range(num_refs)
        for j in range(per_ref)
    ]
    return Dataset(root, "pairs", tuple(pairs), tuple(root / f"r{i}.wav" for i in range(num_refs)))


def test_split_by_reference_is_disjoint_complete_and_deterministic():
    ds = _many(50)
    train, val = split_by_reference(ds, val_fraction=0.2, seed=3)
    assert len(val.references) == 10 and len(train.references) == 40
    assert not set(train.references) & set(val.references)
    assert set(train.references) | set(val.references) == set(ds.references)
    assert {p.reference_path for p in val.pairs} == set(val.references)
    assert len(train.pairs) + len(val.pairs) == len(ds.pairs)
    assert list(train.pairs) == [p for p in ds.pairs if p in set(train.pairs)]  # original order kept
    again = split_by_reference(ds, val_fraction=0.2, seed=3)
    assert again == (train, val)
    assert split_by_reference(ds, val_fraction=0.2, seed=4)[1].references != val.references
    assert val.label_of(val.references[0]) == ds.label_of(val.references[0])


def test_split_keeps_at_least_one_reference_per_side_and_validates():
    train, val = split_by_reference(_many(2), val_fraction=0.01)
    assert len(train.references) == 1 and len(val.references) == 1
    with pytest.raises(DatasetError, match="between 0 and 1"):
        split_by_reference(_many(5), val_fraction=1.0)
    with pytest.raises(DatasetError, match="at least 2"):
        split_by_reference(_many(1))


def test_split_of_a_folder_dataset_keeps_labels(tmp_path):
    for i in range(6):
        _write_tone(tmp_path / ("dogs" if i % 2 else "cats") / f"{i}.wav")
    train, val = split_by_reference(open_dataset(tmp_path), val_fraction=0.5, seed=0)
    assert len(val.references) == 3
    assert all(val.label_of(r) == r.parent.name for r in val.references)


# ----------------------------------------------------------------------------------------------------
# check


def test_check_reports_counts_and_every_unusable_file(qvim_dev):
    cls = qvim_dev / "Queries" / "Animal, Domestic"
    (cls / "q 1.wav").unlink()  # missing
    (cls / "q 2.wav").write_bytes(b"")  # unreadable
    sf.write(str(cls / "q 3 ü.wav"), np.zeros(800, dtype=np.float32), SR)  # silent
    nan = tone(440, 0.1, SR)
    nan[5] = np.nan
    sf.write(str(qvim_dev / "Queries" / "Vehicle" / "v1.wav"), nan, SR, subtype="FLOAT")  # unreadable
    sf.write(str(qvim_dev / "Items" / "Vehicle" / "sirène №2.wav"), tone(440, 0.5, 32000), 32000)

    report = check_dataset(qvim_dev)
    assert not report.ok
    assert (report.num_references, report.num_queries, report.num_pairs, report.num_classes) == (2, 5, 5, 2)
    assert (report.queries_per_reference.min, report.queries_per_reference.max) == (2, 3)
    kinds = {(p.path.name, p.kind) for p in report.problems}
    assert kinds == {
        ("q 1.wav", "missing"),
        ("q 2.wav", "unreadable"),
        ("q 3 ü.wav", "silent"),
        ("v1.wav", "unreadable"),
    }
    assert report.sample_rates == {"query": {SR: 1}, "reference": {SR: 1, 32000: 1}}
    assert report.duration_s["reference"].max == pytest.approx(0.5)
    text = report.format()
    assert "PROBLEMS: 1 missing, 1 silent, 2 unreadable" in text and "q 3 ü.wav" in text
    assert report.to_dict()["ok"] is False


def test_check_of_a_clean_dataset_is_ok(vimsketch):
    report = check_dataset(vimsketch)
    assert report.ok and report.problems == ()
    assert report.num_classes == 3 and report.queries_per_reference.median == 2
    assert report.duration_s["query"].min == pytest.approx(0.1)
    assert "OK" in report.format()
