"""training.protocol.timeline_matrix and training.item_item.timeline_cosine: known answers."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.item_item import SparseRows
from training.dataset import Interactions
from training.item_item import timeline_cosine
from training.protocol import Fold, timeline_matrix


def interactions(users: list[int], items: list[int], ts: list[float]) -> Interactions:
    n = len(users)
    return Interactions(
        np.array(users, np.int64),
        np.array(items, np.int64),
        np.full(n, 4.0, np.float32),
        np.array(ts, np.float64),
        [f"u{u}" for u in range(max(users) + 1)],
    )


def test_places_follow_timestamps_then_file_order() -> None:
    nan = float("nan")
    # user 0: item 3 at t=5, item 1 at t=1, item 2 undated (last), item 1 again at t=9 (keeps place 1)
    # user 1: undated, in file order: items 2, 0
    inter = interactions([0, 0, 1, 0, 1, 0], [3, 1, 2, 2, 0, 1], [5.0, 1.0, nan, nan, nan, 9.0])
    m = timeline_matrix(inter, np.arange(6), 4).toarray()
    np.testing.assert_array_equal(m, [[0, 1, 3, 2], [2, 0, 1, 0]])
    sub = timeline_matrix(inter, np.array([0, 3]), 4).toarray()  # only the rows asked for
    np.testing.assert_array_equal(sub, [[0, 0, 2, 1], [0, 0, 0, 0]])


def test_fold_places_default_to_column_order() -> None:
    train = sp.csr_matrix(np.array([[0, 1, 1, 1], [1, 0, 0, 1]], np.float32))
    np.testing.assert_array_equal(Fold(train, train, train).places.toarray(), [[0, 1, 2, 3], [1, 0, 0, 2]])


def test_timeline_cosine_weighs_closeness_in_time() -> None:
    # one user read 0, 1, 2 in that order (window 1: only 0-1 and 1-2 count), another read 2 then 0
    places = sp.csr_matrix(np.array([[1, 2, 3], [2, 0, 1]], np.float32))
    sim = timeline_cosine(places, window=1)
    assert isinstance(sim, np.ndarray)
    counts = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], np.float64)  # 0-2 counted by the second user
    norm = 1.0 / np.sqrt(counts.sum(1))
    np.testing.assert_allclose(sim, counts * norm[:, None] * norm[None, :], rtol=1e-6)
    wide = timeline_cosine(places, window=2)  # 0-2 now also counted by the first user, at weight 1/2
    assert wide[0, 2] > sim[0, 2] and np.all(np.diag(wide) == 0)


def test_timeline_cosine_is_sparse_top_k_above_the_dense_bound(monkeypatch) -> None:
    import training.item_item as ii

    rng = np.random.default_rng(0)
    x = (rng.random((50, 30)) < 0.4).astype(np.float32)
    places = sp.csr_matrix(x * np.arange(1, 31, dtype=np.float32))
    dense = timeline_cosine(places)
    monkeypatch.setattr(ii, "DENSE_MAX_ITEMS", 10)
    monkeypatch.setattr(ii, "SPARSE_K", 4)
    rows = timeline_cosine(places)
    assert isinstance(rows, SparseRows) and rows.n == 30
    for j in range(30):
        cols = rows.indices[rows.indptr[j] : rows.indptr[j + 1]]
        assert cols.size == 4 and np.all(np.diff(cols) > 0)
        np.testing.assert_allclose(
            np.sort(rows.data[rows.indptr[j] : rows.indptr[j + 1]]), np.sort(dense[j])[-4:], rtol=1e-6
        )
