"""The main job on the embedded default: synthesise a corpus, align, evaluate, index and search.

Nothing is downloaded: the corpus is :mod:`qvimclap.data.synth`; the encoders are seeded random
``scratch`` models.
The same steps, with real weights and data, are the README's quickstart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qvimclap.errors import StoreError

logger = logging.getLogger(__name__)

#: The demo corpus: 60 held-out references at the default split, and about 10 minutes on 2 cores in all.
DEMO_REFERENCES = 300
DEMO_IMITATIONS = 3


@dataclass
class DemoResult:
    """Where the demo put everything, and what it measured."""

    out_dir: Path
    corpus_dir: Path
    model_dir: Path
    store_path: Path
    index_path: Path
    reports: dict[str, Any]
    query_path: Path
    true_reference: Path
    hits: list[Any]
    true_rank: int
    num_indexed: int
    generated_path: Path | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def run_demo(
    out_dir: str | Path = "demo",
    *,
    num_references: int = DEMO_REFERENCES,
    imitations_per_reference: int = DEMO_IMITATIONS,
    seed: int = 0,
    align_overrides: dict[str, Any] | None = None,
    audioldm: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Run the whole pipeline under ``out_dir`` (``corpus/``, ``model/``, ``embeddings/``, ``indexes/``).

    ``align_overrides`` replaces :class:`~qvimclap.train.align.AlignConfig` defaults (tests use a tiny run).
    With ``audioldm`` (a diffusers AudioLDM folder) the held-out imitation is also turned into sound
    (``generated.wav``). Refuses an existing ``out_dir`` unless ``force``.
    """
    from qvimclap import api
    from qvimclap.data import open_dataset, split_by_reference
    from qvimclap.data.synth import make_corpus
    from qvimclap.evaluation import evaluate_retrieval
    from qvimclap.generation import load_audioldm
    from qvimclap.targets import default_cache_dir
    from qvimclap.train.align import AlignConfig, train_alignment

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise StoreError(f"{out}: already exists; pass --force to run the demo again into it")
    generator = load_audioldm(audioldm) if audioldm is not None else None  # fail before hours of work
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    # 1. the built-in imitation corpus
    corpus = make_corpus(
        out / "corpus",
        num_references=num_references,
        imitations_per_reference=imitations_per_reference,
        seed=seed,
        force=force,
    )
    lap("synth")
    # 2. align an imitation encoder into (scratch) CLAP space
    config = AlignConfig(data=str(corpus), out=str(out / "model"), seed=seed, **(align_overrides or {}))
    result = train_alignment(config, force=force, progress=progress)
    lap("align")
    # 3. retrieval on the held-out references, in both spaces
    _, val = split_by_reference(open_dataset(corpus), val_fraction=config.val_fraction, seed=config.seed)
    cache_dir = config.cache_dir or default_cache_dir(Path(corpus), None)  # reuse the CLAP targets
    reports = {
        space: evaluate_retrieval(val, result.run_dir, k=5, space=space, cache_dir=cache_dir)
        for space in ("clap", "qvim")
    }
    lap("evaluate")
    # 4. a sound library indexed once with CLAP, searched by a held-out imitation through the aligned model
    store_path = out / "embeddings" / "references.h5"
    index_path = out / "indexes" / "references.faiss"
    _library_from_targets(corpus, config, Path(cache_dir), store_path)
    api.build_index(store_path, index_path, force=True)
    query = val.pairs[0]
    index = api.load_index(index_path)
    ranking = api.search(query.query_path, index, k=len(index.ids), encoder=str(result.run_dir))
    true_rank = next(h.rank for h in ranking if Path(h.path).resolve() == query.reference_path.resolve())
    lap("index+search")
    # 5. with AudioLDM weights on the machine: sound from the same imitation
    generated = None
    if generator is not None:
        generated = _generate(generator, query.query_path, str(result.run_dir), out / "generated.wav")
        lap("generate")
    return DemoResult(
        out_dir=out,
        corpus_dir=Path(corpus),
        model_dir=Path(result.run_dir),
        store_path=store_path,
        index_path=index_path,
        reports=reports,
        query_path=query.query_path,
        true_reference=query.reference_path,
        hits=ranking[:5],
        true_rank=true_rank,
        num_indexed=len(ranking),
        generated_path=generated,
        timings_s=timings,
    )


def _library_from_targets(corpus: Path, config: Any, cache_dir: Path, store_path: Path) -> None:
    """The references' store, filled from the CLAP targets that training cached (CLAP ran once per sound);
    the same store `qvimclap embed corpus --encoder clap:...` writes."""
    from qvimclap import api
    from qvimclap.data import item_id, open_dataset
    from qvimclap.store import EmbeddingStore
    from qvimclap.targets import clap_targets
    from qvimclap.train.align import load_clap

    dataset = open_dataset(corpus)
    clap = load_clap(config.clap, config.clap_preprocessing)
    references = list(dataset.references)
    vectors = clap_targets(references, clap, root=dataset.root, cache_dir=cache_dir)
    # A clap: spec means AudioLDM-style preprocessing; a store of other vectors records no spec.
    spec = api.canonical_spec(f"clap:{config.clap}") if clap.preprocessing == "audioldm" else None
    with EmbeddingStore.create(
        store_path,
        clap.fingerprint(),
        clap.embedding_dim,
        force=True,
        embedder_spec=spec,
        capacity=len(references),
    ) as store:
        ids = [item_id(p, dataset.root) for p in references]
        store.append(ids, vectors, [api._metadata_row(p, dataset) for p in references])


def _generate(generator: Any, imitation: Path, model_spec: str, out_path: Path) -> Path:
    from qvimclap import api
    from qvimclap.audio import load_audio, write_audio
    from qvimclap.generation import GenerationConfig, generate_from_imitation

    model = api.load_embedder(model_spec)
    waveform = load_audio(imitation, model.sample_rate)
    result = generate_from_imitation(waveform, model.sample_rate, model, generator, GenerationConfig())
    return write_audio(out_path, result.waveforms[0], result.sample_rate)
