"""A tiny searchable library for the serve tests: 4 synthetic references, a random (seeded) mn04 encoder."""

from __future__ import annotations

from pathlib import Path

from qvimclap import api
from qvimclap.data.synth import make_corpus

ENCODER = "qvim:scratch:mn04"


def build_library(root: Path, name: str = "sounds") -> tuple[Path, Path]:
    """``(corpus folder, index path)``; the index is named ``name`` (its file stem) and records ENCODER."""
    corpus = make_corpus(root / "corpus", num_references=4, imitations_per_reference=1, seed=0)
    store = root / "embeddings" / f"{name}.h5"
    api.embed_dataset(corpus, ENCODER, store, progress=False)
    return corpus, api.build_index(store, root / "indexes" / f"{name}.faiss")
