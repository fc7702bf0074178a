import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.metrics import accuracy, beyond_accuracy, evaluate_scores, top_k


def test_accuracy_against_hand_computed_values():
    # user 0: hits at ranks 1 and 3, 2 held-out items; user 1: no hit, 1 held-out item
    hits = np.zeros((2, 10), dtype=bool)
    hits[0, [0, 2]] = True
    m = accuracy(hits, np.array([2, 1]), 10)
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg0 / idcg0 + 0) / 2)
    assert m["recall@10"] == pytest.approx((2 / 2 + 0) / 2)
    assert m["mrr@10"] == pytest.approx((1.0 + 0) / 2)
    assert m["hit@10"] == pytest.approx(0.5)
    assert m["precision@10"] == pytest.approx((2 / 10 + 0) / 2)


def test_ndcg_ideal_uses_min_of_heldout_and_k():
    hits = np.zeros((1, 10), dtype=bool)
    hits[0, :10] = True
    assert accuracy(hits, np.array([25]), 10)["ndcg@10"] == pytest.approx(1.0)
    assert accuracy(hits, np.array([25]), 10)["recall@10"] == pytest.approx(10 / 25)


def test_top_k_orders_and_respects_mask():
    s = np.array([[0.1, 0.9, -np.inf, 0.5]])
    assert top_k(s, 3).tolist() == [[1, 3, 0]]


def test_evaluate_scores_masks_seen_items():
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    target = sp.csr_matrix(np.array([[0, 0, 1, 0]], dtype=np.float32))
    scores = np.array([[9.0, 1.0, 5.0, 0.0]])  # item 0 scores best but is seen
    m = evaluate_scores(lambda u: scores[u], seen, target, np.array([0]), [("a",)] * 4, np.ones(4))
    assert m["ndcg@10"] == pytest.approx(1.0) and m["mrr@10"] == pytest.approx(1.0)


def test_beyond_accuracy():
    ranked = np.array([[0, 1], [0, 2]])
    genres = [("a",), ("a", "b"), ("c",), ("d",)]
    pop = np.array([4.0, 2.0, 1.0, 1.0])
    m = beyond_accuracy(ranked, genres, pop, n_users=4)
    assert m["coverage@10"] == pytest.approx(3 / 4)
    # pair (0,1): jaccard 1/2 -> 0.5; pair (0,2): 1.0
    assert m["diversity@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["novelty@10"] == pytest.approx(np.mean([0, 1, 0, 2]))
