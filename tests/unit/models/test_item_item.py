"""models/item_item.py and models/candidates.py: dense and sparse sources agree, merging, features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from models.candidates import feature_names, merge, rating_weight, user_candidates
from models.item_item import ItemItem, Source, SparseRows, sparsify, user_scores
from training.baselines import EASE
from training.item_item import fit_item_item
from training.protocol import Fold


@pytest.fixture()
def dense() -> np.ndarray:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((30, 30)).astype(np.float32)
    np.fill_diagonal(m, 0.0)
    return m


def test_sparse_rows_keep_the_largest_magnitudes(dense: np.ndarray) -> None:
    s = sparsify(dense, k=5)
    assert s.n == 30 and np.all(np.diff(s.indptr) == 5)
    for j in range(30):
        cols = s.indices[s.indptr[j] : s.indptr[j + 1]]
        assert set(cols) == set(np.argsort(-np.abs(dense[j]))[:5])
        np.testing.assert_array_equal(s.data[s.indptr[j] : s.indptr[j + 1]], dense[j, cols])


def test_sparse_scores_equal_dense_scores_when_nothing_is_dropped(dense: np.ndarray) -> None:
    history, weights = np.array([3, 7, 11]), np.array([1.0, 2.0, 3.0], np.float32)
    full = user_scores(dense, history, weights)
    sparse = user_scores(sparsify(dense, k=30), history, weights)
    ids = np.arange(30)
    np.testing.assert_allclose(sparse.at(ids), full.at(ids), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.values, weights @ dense[history], rtol=1e-6)
    excluded = np.zeros(30, bool)
    excluded[history] = True
    assert np.array_equal(sparse.top(5, excluded), full.top(5, excluded))
    assert not set(full.top(30, excluded)) & set(history.tolist())


def test_sparse_scores_are_zero_off_the_neighbours() -> None:
    rows = SparseRows(np.array([0, 1, 2, 2]), np.array([2, 0], np.int32), np.array([0.5, 0.25], np.float32))
    got = user_scores(rows, np.array([0, 1]), np.ones(2, np.float32))
    np.testing.assert_allclose(got.at(np.array([0, 1, 2])), [0.25, 0.0, 0.5])
    empty = user_scores(rows, np.array([2]), np.ones(1, np.float32))
    assert empty.at(np.array([0, 1])).tolist() == [0.0, 0.0] and empty.top(3, np.zeros(3, bool)).size == 0


def test_item_item_survives_a_round_trip(dense: np.ndarray, tmp_path: Path) -> None:
    model = ItemItem(
        {"a": dense, "b": sparsify(dense, 4)},
        (Source("a", "a", False), Source("a_rated", "a", True), Source("b", "b", False)),
    )
    model.save(tmp_path / "ii.npz")
    back = ItemItem.load(tmp_path / "ii.npz")
    assert back.sources == model.sources and back.n_items == 30
    h, r = np.array([1, 2]), np.array([1.0, 3.0], np.float32)
    for x, y in zip(model.scores(h, r), back.scores(h, r), strict=True):
        np.testing.assert_array_equal(x.at(np.arange(30)), y.at(np.arange(30)))
    # the rated source reads the ratings, the plain one does not
    plain, rated, _ = model.scores(h, r)
    np.testing.assert_allclose(rated.values, r @ dense[h], rtol=1e-6)
    np.testing.assert_allclose(plain.values, dense[h].sum(0), rtol=1e-6)


def test_rating_weight_scale() -> None:
    assert [rating_weight(r) for r in (1, 3, 4, 5, 10)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert rating_weight(None) == rating_weight(float("nan")) == 2.0


def test_merge_is_round_robin_and_unique() -> None:
    got = merge([np.array([1, 2, 3, 4]), np.array([2, 5, 1, 6])], 5)
    assert got.tolist() == [1, 2, 5, 3, 4]
    assert merge([np.array([], np.int64)], 3).size == 0


def test_candidates_follow_the_block_structure() -> None:
    """Two item blocks that co-occur only inside: a user of block A gets block A from EASE."""
    x = np.zeros((40, 20), np.float32)
    x[:20, :10] = np.random.default_rng(1).random((20, 10)) < 0.6
    x[20:, 10:] = np.random.default_rng(2).random((20, 10)) < 0.6
    train = sp.csr_matrix(x)
    ii = fit_item_item(train, train, Fold(train, train, train).places, ease_reg=5.0)
    assert [s.name for s in ii.sources] == [
        "ease",
        "ease_rated",
        "ease_weak",
        "ease_strong",
        "ease_fit_rated",
        "timeline",
    ]
    history = np.array([0, 1, 2])
    excluded = np.zeros(20, bool)
    excluded[history] = True
    vecs = np.eye(20, 4, dtype=np.float32)  # a retrieval model that knows nothing useful
    c = user_candidates(vecs[0], vecs, np.array([19, 18]), ii, history, np.ones(3, np.float32), excluded, 6)
    assert c.features.shape == (6, len(feature_names(ii))) and np.isfinite(c.features).all()
    assert not set(c.items.tolist()) & set(history.tolist())
    from_ease = [i for i in c.items.tolist() if i not in (19, 18)]
    assert from_ease and all(i < 10 for i in from_ease)
    # EASE's own score column equals the baseline's score
    b = EASE(5.0).fit(train).b
    col = feature_names(ii).index("ease.score")
    np.testing.assert_allclose(c.features[:, col], b[history].sum(0)[c.items], rtol=1e-4, atol=1e-6)
    assert c.features[:, feature_names(ii).index("ease.log_rank")].min() == 0.0


def test_dense_scores_are_the_weighted_row_sums_on_both_paths(dense: np.ndarray) -> None:
    import models.item_item as ii

    rng = np.random.default_rng(3)
    for size in (3, 20):  # 3 of 30 items: their rows gathered; 20: one pass over the whole matrix
        assert (size * ii.FULL_PASS_ROWS > 30) == (size == 20)
        h, w = rng.choice(30, size, replace=False), rng.random(size).astype(np.float32)
        got = user_scores(dense, h, w).values
        np.testing.assert_allclose(got, w @ dense[h], rtol=1e-5, atol=1e-5)
        assert got.dtype == np.float32


def test_scores_at_the_candidates_equal_the_full_scores(dense: np.ndarray, monkeypatch) -> None:
    import pickle

    import models.item_item as ii

    model = ItemItem(
        {"a": dense, "b": sparsify(dense, 4)},
        (Source("a", "a", False), Source("a_rated", "a", True), Source("b", "b", False)),
    )
    items = np.array([7, 0, 29, 3])
    rng = np.random.default_rng(0)
    long = np.sort(rng.choice(30, 20, replace=False))
    cases = [
        (np.array([1, 2, 5]), np.array([1.0, 3.0, 2.0], np.float32)),
        (long, rng.random(20).astype(np.float32)),
    ]
    cases.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
    for short in (ii.SHORT_HISTORY, 2):  # both paths: through the history's rows, through the transpose
        monkeypatch.setattr(ii, "SHORT_HISTORY", short)
        for h, r in cases:
            want = np.stack([s.at(items) for s in model.scores(h, r)])
            gen = model.generator_scores(h, r)
            for got in (model.scores_at(h, r, items), model.scores_at(h, r, items, gen)):
                assert got.shape == (3, 4) and got.dtype == np.float32
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert set(model._transposed) == {"a"}  # the dense matrix's transpose was built once and kept
    assert not pickle.loads(pickle.dumps(model))._transposed  # and is never pickled
