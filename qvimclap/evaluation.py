"""Retrieval metrics, as the QVIM challenge computes them, over full rankings (pure numpy).

A ranking ``ranked [Q, R]`` lists, for each query (vocal imitation), the indices of all ``R`` unique references from
most to least similar: what a FAISS search with ``k = R`` returns. Each query has exactly one true reference.
"""

from __future__ import annotations

import numpy as np


def rank_by_similarity(similarity: np.ndarray) -> np.ndarray:
    """``[Q, R]`` similarity -> ``[Q, R]`` reference indices, most similar first (stable: ties keep index order)."""
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
