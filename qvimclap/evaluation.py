"""Retrieval metrics, as the QVIM challenge computes them, over full rankings (pure numpy).

A ranking ``ranked [Q, R]`` lists, for each query (vocal imitation), the indices of all ``R`` unique
references from most to least similar: what a FAISS search with ``k = R`` returns. Each query has exactly one
true reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def rank_by_similarity(similarity: np.ndarray) -> np.ndarray:
    """``[Q, R]`` similarity -> ``[Q, R]`` reference indices, most similar first (stable: ties keep index
    order)."""
    return np.argsort(-np.asarray(similarity, dtype=np.float64), axis=1, kind="stable")


def true_ranks(ranked: np.ndarray, true_ref: np.ndarray) -> np.ndarray:
    """1-based position of each query's true reference in its ranking; ``[Q]`` int64."""
    ranked = np.asarray(ranked)
    true_ref = np.asarray(true_ref).reshape(-1, 1)
    hits = ranked == true_ref  # [Q, R]
    if not hits.any(axis=1).all():
        missing = int((~hits.any(axis=1)).sum())
        raise ValueError(f"{missing} queries do not have their true reference in the ranking")
    return hits.argmax(axis=1).astype(np.int64) + 1


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank of 1-based ranks."""
    return float(np.mean(1.0 / np.asarray(ranks, dtype=np.float64)))


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose true reference is within the top ``k``."""
    return float(np.mean(np.asarray(ranks) <= k))


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def class_ndcg(ranked: np.ndarray, query_labels: np.ndarray, reference_labels: np.ndarray) -> float:
    """Mean NDCG over the full ranking, binary relevance = reference has the query's class (QVIM baseline).

    Queries whose class has no reference are skipped, as in the baseline (their IDCG is 0).
    """
    ranked = np.asarray(ranked)
    reference_labels = np.asarray(reference_labels)
    relevance = reference_labels[ranked] == np.asarray(query_labels).reshape(-1, 1)  # [Q, R]
    discounts = _discounts(ranked.shape[1])
    dcg = relevance @ discounts
    num_relevant = np.array([(reference_labels == q).sum() for q in query_labels])
    idcg = np.cumsum(discounts)[np.maximum(num_relevant, 1) - 1]
    valid = num_relevant > 0
    return float(np.mean(dcg[valid] / idcg[valid])) if valid.any() else 0.0


def class_at_1(ranked: np.ndarray, query_labels: np.ndarray, reference_labels: np.ndarray) -> float:
    """Fraction of queries whose top hit is of the query's class: how often the kind is recognised."""
    return float(np.mean(np.asarray(reference_labels)[np.asarray(ranked)[:, 0]] == np.asarray(query_labels)))


def within_class_mrr(
    ranked: np.ndarray, true_ref: np.ndarray, query_labels: np.ndarray, reference_labels: np.ndarray
) -> float:
    """MRR of the true reference among the references of its own class only: how well the one sound is told
    from the others of its kind, whether or not the kind was recognised."""
    reference_labels = np.asarray(reference_labels)
    same = reference_labels[np.asarray(ranked)] == np.asarray(query_labels).reshape(-1, 1)  # [Q, R]
    hit = np.asarray(ranked) == np.asarray(true_ref).reshape(-1, 1)
    before = np.cumsum(same, axis=1) * hit  # same-class references up to and including the true one
    return mrr(before.max(axis=1))


def chance_class_at_1(query_labels: np.ndarray, reference_labels: np.ndarray) -> float:
    reference_labels = np.asarray(reference_labels)
    return float(np.mean([(reference_labels == q).mean() for q in query_labels]))


def chance_within_class_mrr(query_labels: np.ndarray, reference_labels: np.ndarray) -> float:
    reference_labels = np.asarray(reference_labels)
    return float(np.mean([chance_mrr(int((reference_labels == q).sum())) for q in query_labels]))


def chance_mrr(num_references: int) -> float:
    """Expected MRR of a uniformly random ranking: ``H_R / R``."""
    return float(np.mean(1.0 / np.arange(1, num_references + 1)))


def chance_recall_at_k(num_references: int, k: int) -> float:
    """Expected recall@k of a uniformly random ranking."""
    return min(k, num_references) / num_references


def chance_class_ndcg(query_labels: np.ndarray, reference_labels: np.ndarray) -> float:
    """Expected class NDCG of a uniformly random ranking (exact: each position is relevant with prob m/R)."""
    reference_labels = np.asarray(reference_labels)
    discounts = _discounts(len(reference_labels))
    total, cumulative = discounts.sum(), np.cumsum(discounts)
    scores = []
    for label in query_labels:
        m = int((reference_labels == label).sum())
        if m:
            scores.append((m / len(reference_labels)) * total / cumulative[m - 1])
    return float(np.mean(scores)) if scores else 0.0


# ------------------------------------------------------------------------------------------------------------
# Orchestration (qvimclap eval-retrieval): embed imitations and references, search with FAISS, score
# ------------------------------------------------------------------------------------------------------------

#: ``target``: imitations by the aligned model vs references by its frozen target embedder (``clap`` is the
#: same space under its first name); ``qvim``: imitation tower vs reference tower.
SPACES = ("target", "clap", "qvim")


@dataclass
class RetrievalReport:
    """Retrieval of each query's one true reference among all unique references of a dataset.

    ``metrics`` and ``chance`` have keys ``recall@1``, ``recall@<k>``, ``recall@10``, ``mrr``, ``class_ndcg``;
    ``per_class`` rows have ``label``, ``num_queries``, ``mrr``, ``recall@1``, ``recall@<k>``; ``ranks`` are
    the 1-based ranks ``[Q]`` of the true references, in the order of ``query_paths``. ``split`` is the part
    of the dataset evaluated (all, train or val); ``warnings`` say why the numbers may not be a held-out
    measure (references the model was trained on).
    """

    space: str
    k: int
    num_queries: int
    num_references: int
    metrics: dict[str, float]
    chance: dict[str, float]
    per_class: list[dict[str, Any]]
    ranks: np.ndarray
    query_paths: list[str]
    model: str = ""
    split: str = "all"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (ranks included, as a list)."""
        data = dataclasses.asdict(self)
        data["ranks"] = self.ranks.tolist()
        return data

    def format(self) -> str:
        """Human-readable summary and per-class table (markdown)."""
        lines = [
            f"{self.space} space: {self.num_queries} queries, {self.num_references} references "
            f"({self.model}, split {self.split})",
            "",
            "| metric | value | chance |",
            "|---|---|---|",
        ]
        lines += [f"| {key} | {value:.4f} | {self.chance[key]:.4f} |" for key, value in self.metrics.items()]
        keys = ["num_queries", "mrr", "recall@1", f"recall@{self.k}"]
        lines += ["", "| class | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in self.per_class:
            values = [str(row[key]) if key == "num_queries" else f"{row[key]:.4f}" for key in keys]
            lines.append(f"| {row['label']} | " + " | ".join(values) + " |")
        return "\n".join(lines)


def evaluate_retrieval(
    data: Any,
    model: Any,
    *,
    k: int = 5,
    space: str = "clap",
    clap: Any = None,
    cache_dir: Any = None,
    batch_size: int = 16,
    split: str = "all",
    val_fraction: float | None = None,
    seed: int | None = None,
) -> RetrievalReport:
    """Embed the queries and unique references of ``data``, search a FAISS index of the references, score.

    ``data`` is a dataset folder or a :class:`~qvimclap.data.Dataset`. ``model`` is an aligned model folder
    (or ``aligned:<dir>``, or an :class:`~qvimclap.models.aligned.AlignedModel`), with ``space="qvim"`` a
    plain QVIM checkpoint (``qvim:<source>`` or a path), or a ``(query, reference)`` pair of embedders.
    Queries always go through the imitation tower. In ``"target"`` space (``"clap"`` is its alias) the
    references are embedded by the model's frozen target embedder (``clap``: an embedder, or a CLAP source for
    a CLAP target; default the model's recorded target), reusing the cached training targets when
    ``cache_dir`` holds them; in ``"qvim"`` space by the model's reference tower.

    ``split`` (all, train or val) evaluates a part of the dataset, split by reference as training split it
    (:mod:`qvimclap.data.split`): ``val_fraction`` and ``seed`` default to the split recorded in the model
    folder. Evaluated references the model was trained on are reported in the report's ``warnings``.
    """
    from qvimclap.errors import QvimclapError

    if space not in SPACES:
        raise QvimclapError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if k < 1:
        raise QvimclapError(f"k must be at least 1, got {k}")
    # 1. the dataset's (query, true reference) pairs, in the split asked for
    dataset, warnings = _split_of(_as_dataset(data), model, split, val_fraction, seed)
    queries, true_ref, references = _query_table(dataset)
    # 2. the embedders of each side
    query_embedder, reference_side, label = _resolve_embedders(model, space, clap)
    # 3. embed, index, search the full ranking
    query_vectors = _embed_paths(queries, query_embedder, batch_size)
    reference_vectors = _embed_references(references, reference_side, dataset.root, cache_dir, batch_size)
    ranked = _full_ranking(query_vectors, reference_vectors, references, reference_side.fingerprint())
    # 4. score
    ranks = true_ranks(ranked, true_ref)
    query_labels = np.array([dataset.label_of(q) for q in queries])
    reference_labels = np.array([dataset.label_of(r) for r in references])
    num_refs = len(references)
    cutoffs = sorted({1, k, 10})
    metrics = {f"recall@{c}": recall_at_k(ranks, c) for c in cutoffs}
    metrics |= {
        "mrr": mrr(ranks),
        "class_ndcg": class_ndcg(ranked, query_labels, reference_labels),
        "class@1": class_at_1(ranked, query_labels, reference_labels),
        "within_class_mrr": within_class_mrr(ranked, true_ref, query_labels, reference_labels),
    }
    chance = {f"recall@{c}": chance_recall_at_k(num_refs, c) for c in cutoffs}
    chance |= {
        "mrr": chance_mrr(num_refs),
        "class_ndcg": chance_class_ndcg(query_labels, reference_labels),
        "class@1": chance_class_at_1(query_labels, reference_labels),
        "within_class_mrr": chance_within_class_mrr(query_labels, reference_labels),
    }
    return RetrievalReport(
        space=space,
        k=k,
        num_queries=len(queries),
        num_references=num_refs,
        metrics=metrics,
        chance=chance,
        per_class=_per_class(ranks, query_labels, k),
        ranks=ranks,
        query_paths=[str(q) for q in queries],
        model=label,
        split=split,
        warnings=warnings,
    )


def plot_rank_histogram(report: RetrievalReport, path: Any) -> Any:
    """PNG histogram of the true references' ranks, with the uniform (chance) level; written atomically."""
    from qvimclap.plots import new_figure, save_figure

    bins = np.unique(
        np.geomspace(1, report.num_references + 1, num=min(30, report.num_references + 1)).astype(int)
    )
    fig = new_figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.hist(report.ranks, bins=bins, color="tab:blue", label="true reference")
    expected = report.num_queries * np.diff(bins) / report.num_references
    ax.step(bins[:-1], expected, where="post", color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set(
        xlabel=f"rank of the true reference (of {report.num_references})",
        ylabel="queries",
        title=f"{report.space} space: MRR {report.metrics['mrr']:.3f} (chance {report.chance['mrr']:.3f})",
    )
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _as_dataset(data: Any) -> Any:
    from qvimclap.data import Dataset, open_dataset
    from qvimclap.errors import DatasetError

    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    if not dataset.pairs:
        raise DatasetError(f"{dataset.root}: has no (imitation, reference) pairs to evaluate retrieval on")
    return dataset


def _split_of(
    dataset: Any, model: Any, split: str, val_fraction: float | None, seed: int | None
) -> tuple[Any, list[str]]:
    """The part of ``dataset`` to evaluate and its warnings, by the split recorded in ``model``'s folder."""
    from qvimclap.data.split import read_split, select_split
    from qvimclap.errors import DatasetError

    record = None
    if isinstance(model, (str, Path)) and not str(model).startswith("qvim:"):
        folder = Path(str(model).removeprefix("aligned:")).expanduser()
        record = read_split(folder) if folder.is_dir() else None
    subset, warnings = select_split(dataset, split, record=record, val_fraction=val_fraction, seed=seed)
    if not subset.pairs:
        raise DatasetError(f"{dataset.root}: the {split} split has no (imitation, reference) pairs")
    return subset, warnings


def _query_table(dataset: Any) -> tuple[list[Path], np.ndarray, list[Path]]:
    """Unique (query, reference) pairs -> query paths, their true reference index ``[Q]``, unique
    references."""
    references = list(dataset.references)
    index = {r: i for i, r in enumerate(references)}
    seen: dict[tuple[Path, Path], None] = {}
    for pair in dataset.pairs:
        seen.setdefault((pair.query_path, pair.reference_path), None)
    queries = [q for q, _ in seen]
    true_ref = np.array([index[r] for _, r in seen], dtype=np.int64)
    return queries, true_ref, references


def _resolve_embedders(model: Any, space: str, clap: Any) -> tuple[Any, Any, str]:
    """(query embedder, reference embedder, description) for a model argument in a space."""
    from qvimclap.errors import CheckpointError, FingerprintMismatchError
    from qvimclap.models.aligned import AlignedModel, is_aligned_model_dir

    if isinstance(model, tuple) and len(model) == 2:  # (query embedder, reference embedder), used as given
        return model[0], model[1], "embedders"
    aligned = None
    if isinstance(model, AlignedModel):
        aligned, label = model, "aligned model"
    else:
        text = str(model)
        source = text.removeprefix("aligned:")
        if not text.startswith("qvim:") and is_aligned_model_dir(Path(source).expanduser()):
            aligned, label = AlignedModel.from_pretrained(Path(source).expanduser()).to(_device()), source
    if aligned is not None:
        queries = aligned.embedder("imitation")
        if space == "qvim":
            return queries, aligned.embedder("reference"), label
        target_embedder = _target_embedder(clap, aligned)
        got, want = target_embedder.fingerprint().get("space"), aligned.config.space
        if got != want:
            raise FingerprintMismatchError(
                f"{label}: the model was trained into the target space {want!r} but the embedder given "
                f"embeds into {got!r}; pass the target the model was aligned with (--clap)"
            )
        return queries, target_embedder, label
    if space != "qvim":
        # (in QVIM space the QVIM loader says what is missing, and which checkpoints it reads)
        if not str(model).startswith(("qvim:", "scratch")) and not Path(source).expanduser().exists():
            raise CheckpointError(f"{source}: no such model folder or checkpoint file")
        raise CheckpointError(
            f"{model}: not an aligned model folder; a plain QVIM encoder has no target space, use --space "
            "qvim or train one with `qvimclap align`"
        )
    from qvimclap.models.qvim import QvimEncoder

    source = str(model)[len("qvim:") :] if str(model).startswith("qvim:") else str(model)
    imitation = QvimEncoder.from_pretrained(source, tower="imitation").to(_device())
    try:
        reference = QvimEncoder.from_pretrained(source, tower="reference").to(_device())
    except CheckpointError:
        reference = imitation  # a one-tower file: both sides share it
    return imitation, reference, source


def _target_embedder(given: Any, aligned: Any) -> Any:
    """The frozen target embedder: ``given`` (an embedder, or a CLAP source for a CLAP target) or the model's
    recorded target."""
    from qvimclap.models.target import is_clap_target, load_target

    if given is not None and not isinstance(given, (str, Path)):
        return given
    spec = aligned.config.target_spec
    if given is not None:
        spec = str(given) if not is_clap_target(spec) else f"clap:{given}"
    return load_target(spec, clap_preprocessing=aligned.config.clap_preprocessing).to(_device())


def _device() -> Any:
    """Models this module loads itself run on the default device (a CUDA GPU when present)."""
    from qvimclap.device import resolve_device

    return resolve_device("auto")


def _embed_paths(paths: list[Path], embedder: Any, batch_size: int) -> np.ndarray:
    from qvimclap.audio import load_audio
    from qvimclap.errors import AudioError, about_file

    out = []
    for start in range(0, len(paths), 64):
        chunk = paths[start : start + 64]
        waves = [load_audio(p, embedder.sample_rate) for p in chunk]
        try:
            out.append(np.asarray(embedder.embed(waves, batch_size=batch_size), dtype=np.float32))
        except AudioError:  # the model only says "waveform i": find the file, one by one, and name it
            for path, wave in zip(chunk, waves, strict=True):
                try:
                    embedder.embed([wave])
                except AudioError as err:
                    raise about_file(err, path) from None
            raise
    return np.concatenate(out)


def _embed_references(
    references: list[Path], embedder: Any, root: Path, cache_dir: Any, batch_size: int
) -> np.ndarray:
    """Reference vectors; a target embedder's (CLAP, aisfx) go through (and fill) the targets cache when
    ``cache_dir`` is given."""
    from qvimclap.models.target import TARGET_KINDS

    if cache_dir is not None and embedder.fingerprint().get("encoder") in TARGET_KINDS:
        from qvimclap.targets import clap_targets

        return clap_targets(references, embedder, root=root, cache_dir=Path(cache_dir), batch_size=batch_size)
    return _embed_paths(references, embedder, batch_size)


def _full_ranking(
    queries: np.ndarray, references: np.ndarray, paths: list[Path], fingerprint: dict
) -> np.ndarray:
    """``[Q, R]`` reference indices, best first, from an exact (flat inner-product) FAISS index."""
    from qvimclap.index import VectorIndex

    ids = [str(i) for i in range(len(paths))]
    index = VectorIndex.build(references, ids, fingerprint=fingerprint, kind="flat", device="cpu")
    _, rows = index.search_rows(queries, k=len(paths))
    return rows


def _per_class(ranks: np.ndarray, query_labels: np.ndarray, k: int) -> list[dict[str, Any]]:
    rows = []
    for label in sorted(set(query_labels.tolist())):
        mask = query_labels == label
        rows.append(
            {
                "label": label,
                "num_queries": int(mask.sum()),
                "mrr": mrr(ranks[mask]),
                "recall@1": recall_at_k(ranks[mask], 1),
                f"recall@{k}": recall_at_k(ranks[mask], k),
            }
        )
    return rows
