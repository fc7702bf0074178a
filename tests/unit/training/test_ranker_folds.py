"""Extra ranker folds (training/ranker_folds.py) and the paired diversity-penalty choice."""

import numpy as np

from models.features import genre_matrix, item_tables
from tests.conftest import TINY
from training.experiment import RunResult, choose_penalty
from training.pipeline import CandidateBatch, holdout_users
from training.protocol import split, user_item_matrix
from training.ranker_folds import ranker_folds


def test_extra_folds_skip_the_holdout_and_never_see_test(trained: RunResult):
    ds = trained.dataset
    s = split(ds.interactions, (0.8, 0.1, 0.1), TINY.seed)  # the run's split
    n_items = len(ds.catalog)
    vocab = trained.spec.genres
    tables = item_tables(trained.popularity, ds.catalog.years, genre_matrix(ds.catalog.genres, vocab))
    hold = holdout_users(trained.valid_candidates.users, 0.2, TINY.seed)
    folds = ranker_folds(ds, s, 2, TINY.seed, TINY.retrieval, 5, 10.0, tables, hold, 30)
    assert len(folds) == 2
    pool = user_item_matrix(ds.interactions, np.concatenate([s.train, s.valid]), n_items)
    test = user_item_matrix(ds.interactions, s.test, n_items)
    held_valid = user_item_matrix(ds.interactions, s.valid, n_items)[hold]
    targets = []
    for cands, target in folds:
        assert cands.users.size > 0 and not np.isin(cands.users, hold).any()
        assert target.multiply(test).nnz == 0  # test interactions are never a fold's positives
        assert (target - target.multiply(pool)).nnz == 0  # positives come from train + valid
        assert target[hold].multiply(held_valid).nnz == 0  # the holdout's validation items stay out
        labels = cands.labels(target)
        assert labels.sum() > 0  # the fold's models find some of its held-back items
        targets.append(target)
    assert (targets[0] != targets[1]).nnz > 0  # each fold draws its own split


def test_labels_and_concat():
    c = CandidateBatch(
        users=np.array([0, 1]),
        items=np.array([[3, 1, 2], [0, 2, 1]]),
        features=np.zeros((2, 4), np.float32),
        cand_features=np.zeros((2, 3, 5), np.float32),
    )
    target = user_item_matrix_from({0: [1], 1: [0, 1]}, n_items=4)
    np.testing.assert_array_equal(c.labels(target), [[0, 1, 0], [1, 0, 1]])
    both = CandidateBatch.concat([c, c.take(np.array([1]))])
    assert both.users.tolist() == [0, 1, 1] and both.cand_features.shape == (3, 3, 5)


def user_item_matrix_from(rows: dict[int, list[int]], n_items: int):
    import scipy.sparse as sp

    u = [k for k, v in rows.items() for _ in v]
    i = [x for v in rows.values() for x in v]
    return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(max(rows) + 1, n_items))


def test_penalty_choice_needs_a_cost_bound_within_budget():
    rng = np.random.default_rng(0)
    off = rng.random(200)
    free = off.copy()  # reorders nothing that matters: any budget admits it
    noisy = off - rng.normal(0.003, 0.05, 200)  # a cost the mean alone would accept, the bound refuses
    assert choose_penalty({0.0: off, 1.0: free, 2.0: free}, budget=0.003) == 2.0
    assert choose_penalty({0.0: off, 1.0: free, 5.0: noisy}, budget=0.003) == 1.0
    assert choose_penalty({0.0: off, 5.0: noisy}, budget=0.003) == 0.0
