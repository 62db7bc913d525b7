"""After each epoch: precise BatchNorm statistics, validation MRR in both spaces, and the collapse check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qvimclap.models.aligned import AlignedModel
from qvimclap.train.data import PairDataset, collate_pairs, epoch_batches

#: The model counts as collapsed when its validation query embeddings are spread less than this fraction of
#: the CLAP targets' spread (spread = 1 - mean pairwise cosine). Relative, because CLAP embeddings may sit in
#: a narrow cone themselves (a random CLAP's have mean cosine 0.996), where any absolute threshold misfires.
COLLAPSE_SPREAD_RATIO = 0.05


def mean_pairwise_cosine(embeddings: np.ndarray | torch.Tensor) -> float:
    """Mean cosine similarity over distinct rows of L2-normalised ``[N, D]``: 1.0 means every row is the
    same."""
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    n = x.shape[0]
    if n < 2:
        return 0.0
    total = x.sum(0)
    return float((total @ total - (x * x).sum()) / (n * (n - 1)))


@torch.no_grad()
def recalibrate_batch_norm(
    model: AlignedModel, dataset: PairDataset, *, num_batches: int, batch_size: int
) -> None:
    """Recompute every BatchNorm's running statistics as the plain average over ``num_batches`` training
    batches at the current weights ("precise BN").

    The running averages kept during training trail the weights; after a few hundred steps at a high learning
    rate they can be so far off that evaluation mode maps every clip to the same vector (seen on the built-in
    corpus: validation at chance while training-mode embeddings were fine). The batches are the first of a
    fixed permutation and the front end runs without augmentation, so no RNG is consumed (resume stays exact).
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all batches seen
    model.train()
    for tower in {id(t): t for t in (model.imitation_tower, model.reference_tower)}.values():
        tower.mel.eval()  # no augmentation (and no RNG use) while measuring
    for indices in epoch_batches(len(dataset), batch_size, seed=dataset.seed, epoch=0)[:num_batches]:
        batch = collate_pairs([dataset[i] for i in indices])
        model(batch["imitation"], batch["reference"])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def embed_clips(
    model: AlignedModel,
    clips: Sequence[np.ndarray],
    tower: str,
    batch_size: int = 64,
    *,
    target: Any = None,
    view_inputs: np.ndarray | None = None,
) -> np.ndarray:
    """Embed decoded clips with one tower in eval mode (the model's input policy); ``[N, 512]`` float32.
    ``target``: the frozen target embedder, for a model with a target view; ``view_inputs``: what it makes
    of the clips, when already computed (:meth:`~qvimclap.models.aligned.AlignedEmbedder.embed`)."""
    embedder = model.embedder(tower, target=target)
    return embedder.embed(list(clips), batch_size=batch_size, view_inputs=view_inputs)


def retrieval_mrr(queries: np.ndarray, references: np.ndarray, true_ref: np.ndarray) -> tuple[float, float]:
    """MRR and recall@1 of queries ``[Q, D]`` against references ``[R, D]`` by cosine after centring on the
    references' mean: the geometry of a default qvimclap index, so the best epoch is the best deployed."""
    from qvimclap.evaluation import mrr, rank_by_similarity, recall_at_k, true_ranks
    from qvimclap.index import centered

    center = references.mean(0)
    queries, references = centered(queries, center), centered(references, center)
    ranks = true_ranks(rank_by_similarity(queries @ references.T), true_ref)
    return mrr(ranks), recall_at_k(ranks, 1)


def validate(model: AlignedModel, val: dict[str, Any], *, target: Any = None) -> dict[str, float]:
    """Validation metrics in both spaces, and the spread statistics of the query embeddings (for collapse).
    ``target``: the frozen target embedder, for a model with a target view (``val["query_features"]``, when
    present, are its features of the imitations)."""
    queries = embed_clips(
        model, val["queries"], "imitation", target=target, view_inputs=val.get("query_features")
    )
    references = embed_clips(model, val["references"], "reference", target=target)
    clap_mrr, clap_r1 = retrieval_mrr(queries, val["targets"], val["true_ref"])
    qvim_mrr, qvim_r1 = retrieval_mrr(queries, references, val["true_ref"])
    return {
        "val_mrr": 0.5 * (clap_mrr + qvim_mrr),
        "val_mrr_clap": clap_mrr,
        "val_r1_clap": clap_r1,
        "val_mrr_qvim": qvim_mrr,
        "val_r1_qvim": qvim_r1,
        "val_mean_cosine": mean_pairwise_cosine(queries),
        "targets_mean_cosine": mean_pairwise_cosine(val["targets"]),
    }


def is_collapsed(metrics: dict[str, float]) -> bool:
    """Whether the query embeddings are nearly identical, relative to how spread the CLAP targets are."""
    spread = 1.0 - metrics["val_mean_cosine"]
    return spread < COLLAPSE_SPREAD_RATIO * max(1.0 - metrics["targets_mean_cosine"], 1e-6)
