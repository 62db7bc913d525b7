"""The main job on the embedded default: synthesise a corpus, align, evaluate, index and search.

Nothing is downloaded: the corpus is :mod:`qvimclap.data.synth`; the imitation encoder starts from a seeded
random ``scratch`` model. It is aligned into the pretrained ``aisfx`` sound-effects embedding when the
``aisfx`` package (its weights) is installed, a space in which sounds of one kind lie together, else into the
seeded random ``clap:scratch`` (``target="clap:scratch"`` chooses it; only a CLAP space can generate).
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

#: The demo corpus: 60 held-out references at the default split, and about 6 minutes on 2 cores in all.
DEMO_REFERENCES = 300
DEMO_IMITATIONS = 3
#: The demo's training budget (minutes of wall time; training stops earlier when validation stops improving).
DEMO_ALIGN_MINUTES = 4.0


def default_demo_target() -> str:
    """``aisfx`` when its weights are installed (``pip install --no-deps aisfx``), else ``clap:scratch``."""
    import importlib.util

    return "aisfx" if importlib.util.find_spec("aisfx") is not None else "clap:scratch"


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
    target: str = "clap:scratch"
    true_kind: str | None = None
    hit_kinds: list[str | None] = field(default_factory=list)
    generated_path: Path | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    epochs_trained: int = 0
    best_epoch: int = 0
    stopped: str | None = None


def run_demo(
    out_dir: str | Path = "demo",
    *,
    num_references: int = DEMO_REFERENCES,
    imitations_per_reference: int = DEMO_IMITATIONS,
    seed: int = 0,
    align_overrides: dict[str, Any] | None = None,
    target: str | None = None,
    audioldm: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Run the whole pipeline under ``out_dir`` (``corpus/``, ``model/``, ``embeddings/``, ``indexes/``).

    ``target`` is the frozen embedder to align into (default :func:`default_demo_target`, or ``clap:scratch``
    with ``audioldm``).
    ``align_overrides`` replaces :class:`~qvimclap.train.align.AlignConfig` defaults (tests use a tiny run).
    With ``audioldm`` (a diffusers AudioLDM folder) the held-out imitation is also turned into sound
    (``generated.wav``; needs a CLAP target). Refuses an existing ``out_dir`` unless ``force``.
    """
    from qvimclap import api
    from qvimclap.data import open_dataset, split_by_reference
    from qvimclap.data.synth import make_corpus
    from qvimclap.evaluation import evaluate_retrieval
    from qvimclap.generation import GenerationError, load_audioldm
    from qvimclap.models.target import is_clap_target
    from qvimclap.prepared import cache_dir_for
    from qvimclap.train.align import AlignConfig, train_alignment

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise StoreError(f"{out}: already exists; pass --force to run the demo again into it")
    # Generating needs a CLAP space: asked to generate, the demo takes the CLAP path unless told otherwise.
    target = target or ("clap:scratch" if audioldm is not None else default_demo_target())
    if audioldm is not None and not is_clap_target(target):
        raise GenerationError(
            f"--audioldm needs a CLAP target, and the demo aligns into {target}: AudioLDM is conditioned on "
            "CLAP audio embeddings; pass --target clap:<AudioLDM's CLAP> (or clap:scratch) to generate"
        )
    # the towers alone: the target view's feature pass would take most of the demo's few minutes
    settings = {
        "max_minutes": DEMO_ALIGN_MINUTES,
        "target_view": False,
        **(align_overrides or {}),
        "target": target,
    }
    # Checked before the corpus is made: a wrong target or setting fails now and leaves nothing behind.
    config = AlignConfig(data=str(out / "corpus"), out=str(out / "model"), seed=seed, **settings)
    logger.info("demo: aligning into %s", target)
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
    # 2. align an imitation encoder into the target space (aisfx, or the scratch CLAP)
    result = train_alignment(config, force=force, progress=progress)
    lap("align")
    # 3. retrieval on the held-out references, in both spaces
    dataset = open_dataset(corpus)
    _, val = split_by_reference(dataset, val_fraction=config.val_fraction, seed=config.seed)
    cache_dir = cache_dir_for(corpus, config.cache_dir)  # the one rule: reuse what align prepared
    reports = {
        space: evaluate_retrieval(dataset, result.run_dir, k=5, space=space, cache_dir=cache_dir, split="val")
        for space in ("target", "qvim")
    }
    lap("evaluate")
    # 4. a sound library indexed once by the target embedder, searched by a held-out imitation through the
    # aligned model
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
        target=target,
        true_kind=query.label,
        hit_kinds=[_kind_of(hit.path, dataset) for hit in ranking[:5]],
        generated_path=generated,
        timings_s=timings,
        epochs_trained=max((row["epoch"] for row in result.history), default=0),
        best_epoch=result.best_epoch,
        stopped=result.stopped,
    )


def _kind_of(path: str, dataset: Any) -> str | None:
    """The label (kind) of a reference found by search, from the corpus (None for a file not in it)."""
    kinds = {r.resolve(): dataset.label_of(r) for r in dataset.references}
    return kinds.get(Path(path).resolve())


def _library_from_targets(corpus: Path, config: Any, cache_dir: Path, store_path: Path) -> None:
    """The references' store, filled from the targets that training cached (the target embedder ran once per
    sound); the same store `qvimclap embed corpus --encoder <target>` writes."""
    from qvimclap import api
    from qvimclap.data import item_id, open_dataset
    from qvimclap.store import EmbeddingStore
    from qvimclap.targets import clap_targets
    from qvimclap.train.model import load_target_embedder

    dataset = open_dataset(corpus)
    clap = load_target_embedder(config)
    references = list(dataset.references)
    vectors = clap_targets(references, clap, root=dataset.root, cache_dir=cache_dir)
    # A clap: spec means AudioLDM-style preprocessing; a store of other CLAP vectors records no spec.
    plain_clap = getattr(clap, "preprocessing", "audioldm") != "audioldm"
    spec = None if plain_clap else api.canonical_spec(config.target_spec)
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
