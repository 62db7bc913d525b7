"""Retrieval metrics against hand-worked examples."""

import numpy as np
import pytest

from qvimclap import evaluation as ev


def test_rank_by_similarity_orders_descending_and_is_stable():
    sim = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]])
    np.testing.assert_array_equal(ev.rank_by_similarity(sim), [[1, 2, 0], [0, 1, 2]])


def test_true_ranks_mrr_recall_hand_worked():
    ranked = np.array([[2, 0, 1], [0, 1, 2], [1, 2, 0]])
    ranks = ev.true_ranks(ranked, np.array([0, 0, 0]))
    np.testing.assert_array_equal(ranks, [2, 1, 3])
    assert ev.mrr(ranks) == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert ev.recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert ev.recall_at_k(ranks, 2) == pytest.approx(2 / 3)


def test_true_ranks_refuses_missing_reference():
    with pytest.raises(ValueError, match="1 queries"):
        ev.true_ranks(np.array([[0, 1]]), np.array([5]))


def test_class_ndcg_hand_worked():
    # references: classes a, b, a. Query of class a ranks [1(b), 0(a), 2(a)] -> rel [0, 1, 1].
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    idcg = 1 / np.log2(2) + 1 / np.log2(3)
    got = ev.class_ndcg(np.array([[1, 0, 2]]), np.array(["a"]), np.array(["a", "b", "a"]))
    assert got == pytest.approx(dcg / idcg)
    perfect = ev.class_ndcg(np.array([[0, 2, 1]]), np.array(["a"]), np.array(["a", "b", "a"]))
    assert perfect == pytest.approx(1.0)


def test_class_at_1_and_within_class_mrr_hand_worked():
    # references: classes a, b, a, b. Query 0 (class a, true 2) ranks [1(b), 0(a), 2(a), 3(b)]: wrong kind on
    # top, and the true sound second among its kind. Query 1 (class b, true 1) ranks [1, 3, 0, 2]: both first.
    ranked = np.array([[1, 0, 2, 3], [1, 3, 0, 2]])
    labels = np.array(["a", "b", "a", "b"])
    queries = np.array(["a", "b"])
    assert ev.class_at_1(ranked, queries, labels) == pytest.approx(0.5)
    assert ev.within_class_mrr(ranked, np.array([2, 1]), queries, labels) == pytest.approx((1 / 2 + 1) / 2)
    # the order within each kind alone decides within_class_mrr: moving the other kind around changes nothing
    shuffled = np.array([[1, 3, 0, 2], [0, 1, 2, 3]])
    assert ev.within_class_mrr(shuffled, np.array([2, 1]), queries, labels) == pytest.approx((1 / 2 + 1) / 2)
    assert ev.class_at_1(shuffled, queries, labels) == 0.0


def test_chance_levels_match_random_rankings():
    rng = np.random.default_rng(0)
    num_refs, num_queries = 12, 4000
    ref_labels = np.array(list("aaabbbbccddd"))
    true_ref = rng.integers(0, num_refs, num_queries)
    query_labels = ref_labels[true_ref]
    ranked = np.stack([rng.permutation(num_refs) for _ in range(num_queries)])
    ranks = ev.true_ranks(ranked, true_ref)
    assert ev.mrr(ranks) == pytest.approx(ev.chance_mrr(num_refs), abs=0.01)
    assert ev.recall_at_k(ranks, 5) == pytest.approx(ev.chance_recall_at_k(num_refs, 5), abs=0.02)
    got = ev.class_ndcg(ranked, query_labels, ref_labels)
    assert got == pytest.approx(ev.chance_class_ndcg(query_labels, ref_labels), abs=0.01)
    assert ev.chance_mrr(1) == 1.0 and ev.chance_mrr(2) == pytest.approx(0.75)
    got = ev.class_at_1(ranked, query_labels, ref_labels)
    assert got == pytest.approx(ev.chance_class_at_1(query_labels, ref_labels), abs=0.02)
    got = ev.within_class_mrr(ranked, true_ref, query_labels, ref_labels)
    assert got == pytest.approx(ev.chance_within_class_mrr(query_labels, ref_labels), abs=0.02)
