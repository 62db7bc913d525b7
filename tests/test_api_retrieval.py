"""The retrieval API: embedder specs, embedding datasets (resume, failures), search, refusals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from qvimclap import api
from qvimclap.errors import CheckpointError, FingerprintMismatchError, StoreError
from qvimclap.models.base import l2_normalize
from qvimclap.store import EmbeddingStore

SR = 16000


class BandEmbedder:
    """A fast, deterministic test embedder: log energy in 16 FFT bands, L2-normalised."""

    sample_rate = SR
    embedding_dim = 16

    def __init__(self, space: str = "test:bands") -> None:
        self.space = space
        self.calls: list[int] = []

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": "bands",
            "weights_sha256": "0" * 64,
            "preprocessing": {},
            "dim": 16,
            "space": self.space,
        }

    def embed(self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        self.calls.append(len(waveforms))
        rows = []
        for w in waveforms:
            spec = np.abs(np.fft.rfft(w[:SR], n=SR)) ** 2
            bands = np.array_split(spec[: SR // 2], self.embedding_dim)
            rows.append(np.log1p([b.sum() for b in bands]))
        return l2_normalize(np.asarray(rows, dtype=np.float32))


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A plain folder of tones in two class folders, plus a broken and a silent file."""
    root = tmp_path / "lib"
    for i, freq in enumerate([220, 440, 880, 1760, 3520]):
        folder = root / ("low" if freq < 1000 else "high")
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"tone{i}.wav", tone(freq, 0.5 + 0.1 * i, SR), SR)
    (root / "low" / "broken.wav").write_bytes(b"RIFF....not audio")
    sf.write(root / "high" / "silent.wav", np.zeros(SR, np.float32), SR)
    return root


@pytest.fixture
def bands(monkeypatch: pytest.MonkeyPatch) -> BandEmbedder:
    embedder = BandEmbedder()
    monkeypatch.setattr(api, "load_embedder", lambda spec: embedder)
    return embedder


def test_spec_parsing(tmp_path: Path) -> None:
    assert api.parse_embedder_spec("qvim:scratch:mn04") == ("qvim", "scratch:mn04", "imitation")
    assert api.parse_embedder_spec("qvim:/m/qbv.ckpt#reference") == ("qvim", "/m/qbv.ckpt", "reference")
    assert api.parse_embedder_spec(str(tmp_path)) == ("aligned", str(tmp_path), "imitation")
    assert api.query_spec(f"aligned:{tmp_path}#reference") == f"aligned:{tmp_path}"
    with pytest.raises(CheckpointError, match="not understood"):
        api.parse_embedder_spec("qvim")
    with pytest.raises(CheckpointError, match="no such file"):
        api.load_embedder("clap:/nowhere/model.ckpt")


def test_load_embedder_dispatches_to_qvim() -> None:
    from qvimclap.models.qvim import QvimEncoder

    encoder = api.load_embedder("qvim:scratch:mn04")
    assert isinstance(encoder, QvimEncoder) and encoder.fingerprint()["model"] == "mn04"


def test_embed_dataset_resume_and_failures(library: Path, tmp_path: Path, bands: BandEmbedder) -> None:
    out = tmp_path / "emb" / "lib.h5"
    report = api.embed_dataset(library, "qvim:test", out, batch_size=2, progress=False)
    assert (report.num_items, report.num_added, report.num_skipped) == (7, 5, 0)
    assert sorted(f.path.name for f in report.failures) == ["broken.wav", "silent.wav"]
    assert any("silent" in f.reason for f in report.failures)
    with api.open_store(out) as store:
        assert store.ids == [
            "high/tone3.wav",
            "high/tone4.wav",
            "low/tone0.wav",
            "low/tone1.wav",
            "low/tone2.wav",
        ]
        meta = store.metadata("low/tone1.wav")
        assert (
            meta["label"] == "low" and meta["sample_rate"] == SR and meta["duration_s"] == pytest.approx(0.6)
        )
        assert meta["source_path"] == str(library / "low" / "tone1.wav")
        embeddings = store.embeddings
    files = [library / i for i in store.ids]
    direct, failures = api.embed_files(files, bands, batch_size=5)
    assert failures == []
    np.testing.assert_allclose(embeddings, direct, atol=1e-6)  # batching does not change results

    # A re-run embeds nothing new; a new file is picked up.
    again = api.embed_dataset(library, "qvim:test", out, progress=False)
    assert (again.num_added, again.num_skipped) == (0, 5)
    sf.write(library / "low" / "tone9.wav", tone(330, 0.5, SR), SR)
    bands.calls.clear()
    third = api.embed_dataset(library, "qvim:test", out, progress=False)
    assert (third.num_added, third.num_skipped) == (1, 5) and bands.calls == [1]

    with pytest.raises(StoreError, match="already exists"):
        api.embed_dataset(library, "qvim:test", out, resume=False, progress=False)
    forced = api.embed_dataset(library, "qvim:test", out, force=True, progress=False)
    assert (forced.num_added, forced.num_skipped) == (6, 0)


def test_resume_with_another_encoder_is_refused(library: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "lib.h5"
    monkeypatch.setattr(api, "load_embedder", lambda spec: BandEmbedder())
    api.embed_dataset(library, "qvim:test", out, progress=False)
    other = BandEmbedder(space="test:other")
    monkeypatch.setattr(api, "load_embedder", lambda spec: other)
    with pytest.raises(FingerprintMismatchError, match="space: expected"):
        api.embed_dataset(library, "qvim:test", out, progress=False)
    with EmbeddingStore.open(out, "a"):  # the refused run released the store
        pass


def test_search_by_file_array_and_vector(library: Path, tmp_path: Path, bands: BandEmbedder) -> None:
    api.embed_dataset(library, "qvim:test", tmp_path / "lib.h5", progress=False)
    index_path = api.build_index(tmp_path / "lib.h5", tmp_path / "lib.faiss")

    hits = api.search(library / "high" / "tone3.wav", index_path, k=3)  # encoder re-created from the index
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].id == "high/tone3.wav" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].path == str(library / "high" / "tone3.wav")
    assert hits[0].score >= hits[1].score >= hits[2].score

    wave = tone(880, 0.8, 48000)  # another rate: resampled to the encoder's
    by_array = api.search(wave, index_path, k=1, encoder=bands, sample_rate=48000)
    assert by_array[0].id == "low/tone2.wav"

    vector = api.embed_file(library / "low" / "tone0.wav", bands)
    by_vector = api.search(vector, index_path, k=2)
    assert by_vector[0].id == "low/tone0.wav"
    assert [h.id for h in api.search_vectors(np.stack([vector, vector]), index_path, 2)[1]] == [
        h.id for h in by_vector
    ]


def test_search_refuses_another_space(library: Path, tmp_path: Path, bands: BandEmbedder) -> None:
    api.embed_dataset(library, "qvim:test", tmp_path / "lib.h5", progress=False)
    index_path = api.build_index(tmp_path / "lib.h5", tmp_path / "lib.faiss")
    with pytest.raises(FingerprintMismatchError, match="space: index has 'test:bands'"):
        api.search(library / "low" / "tone0.wav", index_path, encoder=BandEmbedder(space="clap:123"))
    with pytest.raises(FingerprintMismatchError, match="dim"):
        api.search(np.ones(8, np.float32), index_path)
