"""The split by reference, its record in a model folder, and the warning for references a model trained on."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from qvimclap.data import open_dataset
from qvimclap.data.split import (
    SPLIT_NAME,
    SplitRecord,
    dataset_fingerprint,
    read_split,
    select_split,
    split_by_reference,
)
from qvimclap.errors import DatasetError, StoreError


def write_corpus(root, *, num_references: int = 10, seed: int = 0):
    """A pairs.csv corpus of tiny noise files: two imitations per reference, files differ per ``seed``."""
    rng = np.random.default_rng(seed)
    (root / "refs").mkdir(parents=True)
    (root / "ims").mkdir()
    lines = ["imitation,reference,label"]
    for i in range(num_references):
        sf.write(root / "refs" / f"r{i}.wav", 0.1 * rng.standard_normal(400), 8000)
        for j in range(2):
            sf.write(root / "ims" / f"q{i}_{j}.wav", 0.1 * rng.standard_normal(300), 8000)
            lines.append(f"ims/q{i}_{j}.wav,refs/r{i}.wav,k{i % 3}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus")


def ids(dataset):
    return sorted(p.relative_to(dataset.root).as_posix() for p in dataset.references)


def test_record_round_trips_and_matches_the_split(corpus, tmp_path):
    dataset = open_dataset(corpus)
    record = SplitRecord.of(dataset, val_fraction=0.3, seed=4)
    train, val = split_by_reference(dataset, val_fraction=0.3, seed=4)
    assert sorted(record.val_references) == ids(val) and sorted(record.train_references) == ids(train)
    assert len(record.val_references) == 3 and record.dataset_fingerprint == dataset_fingerprint(dataset)
    assert all(len(h) == 16 for h in record.val_references.values())
    record.save(tmp_path / "model")
    assert (tmp_path / "model" / SPLIT_NAME).is_file()
    assert read_split(tmp_path / "model") == record
    assert read_split(tmp_path) is None  # a folder from before the record
    (tmp_path / "model" / SPLIT_NAME).write_text("{")
    with pytest.raises(StoreError, match="not a valid split record"):
        read_split(tmp_path / "model")


def test_the_fingerprint_follows_references_content_and_pairs(corpus, tmp_path):
    before = dataset_fingerprint(open_dataset(corpus))
    shutil.copytree(corpus, tmp_path / "copy")
    assert dataset_fingerprint(open_dataset(tmp_path / "copy")) == before  # moved or copied: the same
    sf.write(corpus / "refs" / "r0.wav", np.zeros(400), 8000)
    assert dataset_fingerprint(open_dataset(corpus)) != before  # a reference's content changed
    csv = (tmp_path / "copy" / "pairs.csv").read_text().splitlines()
    (tmp_path / "copy" / "pairs.csv").write_text("\n".join(csv[:-1]) + "\n")  # one pair fewer
    assert dataset_fingerprint(open_dataset(tmp_path / "copy")) != before


def test_val_defaults_to_the_recorded_split_without_a_warning(corpus):
    dataset = open_dataset(corpus)
    record = SplitRecord.of(dataset, val_fraction=0.3, seed=4)
    val, warnings = select_split(dataset, "val", record=record)
    assert ids(val) == sorted(record.val_references) and warnings == []
    assert len(val.pairs) == 6
    # without a record: the defaults (0.2, seed 0), and nothing to warn about
    default_val, warnings = select_split(dataset, "val")
    assert ids(default_val) == ids(split_by_reference(dataset, val_fraction=0.2, seed=0)[1]) and not warnings
    everything, _ = select_split(dataset, "all")
    assert everything == dataset
    with pytest.raises(DatasetError, match="split must be one of"):
        select_split(dataset, "test")


@pytest.mark.parametrize(
    ("split", "overrides", "count", "why"),
    [
        ("train", {}, 7, "--split train"),
        ("all", {}, 7, "--split all includes"),
        ("val", {"val_fraction": 0.5}, None, "the split differs from training's"),
        ("val", {"seed": 5}, None, "the split differs from training's"),
    ],
)
def test_evaluating_training_references_warns(corpus, split, overrides, count, why):
    dataset = open_dataset(corpus)
    record = SplitRecord.of(dataset, val_fraction=0.3, seed=4)
    subset, warnings = select_split(dataset, split, record=record, **overrides)
    seen = len(set(ids(subset)) & set(record.train_references))
    assert seen > 0 and (count is None or seen == count)
    assert len(warnings) == 1 and why in warnings[0]
    assert warnings[0].startswith(
        f"{seen} of the {len(subset.references)} references evaluated were training"
    )


def test_another_dataset_warns_only_for_the_same_sound_files(corpus, tmp_path):
    record = SplitRecord.of(open_dataset(corpus), val_fraction=0.3, seed=4)
    # the same names, other sounds: nothing the model trained on
    other = open_dataset(write_corpus(tmp_path / "other", seed=1))
    assert select_split(other, "all", record=record)[1] == []
    # a new dataset that holds two of the training references (and only one of the validation ones)
    mixed = write_corpus(tmp_path / "mixed", num_references=4, seed=2)
    trained = sorted(record.train_references)[:2]
    held_out = sorted(record.val_references)[0]
    for i, name in enumerate([*trained, held_out]):
        shutil.copy(corpus / name, mixed / "refs" / f"r{i}.wav")
    _, warnings = select_split(open_dataset(mixed), "all", record=record)
    assert len(warnings) == 1 and warnings[0].startswith("2 of the 4 references evaluated")
    assert "not the one the model was split on" in warnings[0]
