import numpy as np
import pytest

from training.dataset import Catalog, Dataset, Interactions
from training.protocol import ProtocolConfig, folds, prepare, split, split_counts


def _dataset(users, items, ratings, n_items) -> Dataset:
    n_users = int(max(users)) + 1
    cat = Catalog(
        [f"i{i}" for i in range(n_items)],
        [f"t{i}" for i in range(n_items)],
        [""] * n_items,
        [("g",)] * n_items,
        np.full(n_items, np.nan, dtype=np.float32),
    )
    inter = Interactions(
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(ratings, dtype=np.float32),
        np.full(len(users), np.nan),
        [f"u{u}" for u in range(n_users)],
    )
    return Dataset("t", cat, inter)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(10, [8, 1, 1]), (25, [21, 2, 2]), (5, [3, 1, 1]), (2, [1, 0, 1]), (1, [1, 0, 0]), (100, [80, 10, 10])],
)
def test_split_counts_follow_recbole(n, expected):
    assert split_counts(n, (0.8, 0.1, 0.1)) == expected


def test_split_is_disjoint_complete_and_sized():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), rng.integers(10, 40, size=50))
    ds = _dataset(users, rng.integers(0, 100, size=users.size), np.ones(users.size), 100)
    s = split(ds.interactions, (0.8, 0.1, 0.1), seed=3)
    allrows = np.concatenate([s.train, s.valid, s.test])
    assert np.array_equal(np.sort(allrows), np.arange(users.size))
    for u in range(50):
        n = int((users == u).sum())
        assert (users[s.valid] == u).sum() == int(0.1 * n)
        assert (users[s.test] == u).sum() == int(0.1 * n)
    assert not np.array_equal(split(ds.interactions, (0.8, 0.1, 0.1), seed=4).test, s.test)
    assert np.array_equal(split(ds.interactions, (0.8, 0.1, 0.1), seed=3).test, s.test)


def test_prepare_threshold_and_iterated_core():
    users = [0, 0, 0, 1, 1, 1, 2, 2, 0]
    items = [0, 1, 2, 0, 1, 3, 3, 4, 4]
    ratings = [5, 5, 5, 5, 5, 5, 5, 5, 1]
    ds = prepare(_dataset(users, items, ratings, 6), ProtocolConfig(min_rating=3, user_core=3, item_core=2))
    # rating filter drops (0,4); round 1 bans user 2 and items 2, 4; round 2 bans user 0 and item 3;
    # round 3 bans user 1: nothing is stable, so nothing is left.
    assert len(ds.interactions) == 0 and len(ds.catalog) == 0
    once = prepare(_dataset(users, items, ratings, 6), ProtocolConfig(min_rating=3))
    assert len(once.interactions) == 8


def test_prepare_keeps_stable_core_and_reindexes():
    users = [0, 0, 1, 1, 2, 2, 2]
    items = [1, 2, 1, 2, 1, 2, 5]
    ds = prepare(_dataset(users, items, [4] * 7, 6), ProtocolConfig(user_core=2, item_core=2))
    assert len(ds.catalog) == 2 and ds.catalog.item_ids == ["i1", "i2"]
    assert len(ds.interactions) == 6 and ds.interactions.items.max() == 1


def test_test_fold_masks_train_and_valid_but_feeds_train_only():
    users = np.repeat(np.arange(5), 20)
    items = np.tile(np.arange(20), 5)
    ds = _dataset(users, items, np.ones(users.size), 20)
    val, test = folds(ds, split(ds.interactions, (0.8, 0.1, 0.1), seed=0))
    assert (val.train != test.train).nnz == 0
    assert test.seen.nnz == val.train.nnz + val.target.nnz
    assert val.train.multiply(test.target).nnz == 0 and val.target.multiply(test.target).nnz == 0
    assert list(test.users) == [0, 1, 2, 3, 4]
