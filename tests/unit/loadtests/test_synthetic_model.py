"""The synthetic version the growth benchmark serves: complete, parity-checked, loadable by serving."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtests.synthetic_model import (
    build_synthetic_version,
    find_synthetic_version,
    item_item_sources,
    synthetic_item_item,
    synthetic_rows,
)
from models import registry
from models.candidates import feature_names
from models.item_item import DENSE_MAX_ITEMS, SPARSE_K, ItemItem, SparseRows
from models.ranker import INPUT_NAMES
from runners.stages import served_model
from training.item_item import EASE_MAX_ITEMS

N_ITEMS, N_USERS = 500, 200


def test_tiny_synthetic_version_is_servable_and_loads_consistently():
    tag = build_synthetic_version(N_ITEMS, n_users=N_USERS, dim=16, hidden=32, n_genres=6)
    model = registry.get(tag)
    assert registry.servable_problems(model) == []
    assert model.info.labels["dataset"] == f"synthetic-{N_ITEMS}"
    assert find_synthetic_version(N_ITEMS) == tag
    assert model.info.metadata["index"]["kind"] == "flat"  # N_ITEMS is under the exact-search threshold

    served = served_model.load(model)
    assert served.n_items == N_ITEMS == served.index.ntotal == served.popularity.shape[0]
    assert served.weights.item_in.shape == (N_ITEMS, 32)
    assert served.weights.item_vectors.shape == (N_ITEMS, 16)
    np.testing.assert_allclose(np.linalg.norm(served.weights.item_vectors, axis=1), 1.0, atol=1e-5)
    assert served.spec.user_dim == 16 + 6 + 2
    assert served.tables.genres.shape == (N_ITEMS, 6) and (served.tables.genres.sum(1) >= 1).all()
    assert len(served.train_histories) == N_USERS
    assert all(len(h) >= 5 and h.max() < N_ITEMS for h in served.train_histories.values())
    assert {c["item_id"] for c in served.catalog} == {str(i + 1) for i in range(N_ITEMS)}

    # What a trained version holds besides: item-item sources, rating weights, the 4-input ranker.
    assert [src.name for src in served.item_item.sources] == ["ease", "ease_rated", "timeline"]
    assert served.item_item.n_items == N_ITEMS
    assert all(isinstance(m, np.ndarray) for m in served.item_item.matrices.values())  # dense: small catalog
    assert served.spec.candidate_features == feature_names(served.item_item)
    f = len(served.spec.candidate_features)
    assert f == 3 * (1 + 3)
    ranker = json.loads((Path(model.path) / "ranker.json").read_text())
    assert ranker["candidate_feature_dim"] == f and ranker["inputs"] == INPUT_NAMES
    assert ranker["feature_spec"]["candidate_features"] == list(served.spec.candidate_features)
    ratings = np.concatenate(list(served.train_ratings.values()))
    assert ratings.dtype == np.float32 and set(np.unique(ratings).tolist()) == {1.0, 2.0, 3.0}
    assert all(len(served.train_ratings[u]) == len(h) for u, h in served.train_histories.items())
    for v in ("fp32", "fp16", "int8"):
        sess = ort.InferenceSession(
            str(Path(model.path) / f"ranker_{v}.onnx"), providers=["CPUExecutionProvider"]
        )
        assert [i.name for i in sess.get_inputs()] == INPUT_NAMES
        ids = np.array([0, 5, 9], np.int64)
        feeds = {
            "item_ids": ids,
            "user_features": np.zeros((1, served.spec.user_dim), np.float32),
            "candidate_ends": np.array([3], np.int32),
            "candidate_features": np.ones(3 * f, np.float32),
        }
        (scores,) = sess.run(["scores"], feeds)
        assert scores.shape == (3,) and np.isfinite(scores).all()

    # Zipf popularity: the head of the catalog holds far more than a uniform share.
    pop = np.sort(served.popularity)[::-1]
    assert pop[: N_ITEMS // 10].sum() > 0.4 * pop.sum()
    # Clustered preferences: a user's history concentrates on few primary genres.
    top_share = [
        np.unique([served.primary_genre[i] for i in h], return_counts=True)[1].max() / len(h)
        for h in served.train_histories.values()
    ]
    assert np.mean(top_share) > 0.5


def _catalog(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    primary = rng.choice(20, size=n, p=rng.dirichlet(np.full(20, 2.0)))
    return primary, 1.0 / (rng.permutation(n) + 1.0) ** 1.1


def test_synthetic_item_item_rows_are_valid_csr_with_k_neighbours():
    n = DENSE_MAX_ITEMS + 808  # above the dense limit: SparseRows, as training stores it
    primary, zipf = _catalog(n)
    rows = synthetic_rows(np.random.default_rng(1), primary, zipf, signed=True)
    assert rows.n == n and rows.indptr.dtype == np.int64 and rows.indptr[0] == 0
    assert rows.indices.dtype == np.int32 and rows.data.dtype == np.float32
    lengths = np.diff(rows.indptr)
    assert lengths.max() == SPARSE_K and np.mean(lengths == SPARSE_K) > 0.9
    assert rows.indptr[-1] == rows.indices.size == rows.data.size
    owner = np.repeat(np.arange(n), lengths)
    assert rows.indices.min() >= 0 and rows.indices.max() < n
    assert not (rows.indices == owner).any()  # never the item itself
    same_row = owner[1:] == owner[:-1]
    assert (rows.indices[1:][same_row] > rows.indices[:-1][same_row]).all()  # sorted, distinct
    assert np.isfinite(rows.data).all() and (rows.data < 0).any() and (rows.data > 0).mean() > 0.5
    assert 0.7 < np.mean(primary[rows.indices] == primary[owner]) < 0.95  # mostly the item's genre
    assert rows.nbytes == 8 * (n + 1) + 8 * rows.indices.size  # ~SPARSE_K x 8 bytes per item

    positive = synthetic_rows(np.random.default_rng(1), primary, zipf, signed=False)
    assert (positive.data > 0).all() and positive.data.max() <= 0.5


def test_synthetic_item_item_round_trips_and_follows_the_training_layout(tmp_path):
    primary, zipf = _catalog(DENSE_MAX_ITEMS + 8)
    item_item = synthetic_item_item(np.random.default_rng(2), primary, zipf)
    assert [s.name for s in item_item.sources] == ["ease", "ease_rated", "timeline"]
    assert set(item_item.matrices) == {"ease", "timeline"}  # ease_rated reads ease with rating weights
    assert all(isinstance(m, SparseRows) for m in item_item.matrices.values())
    item_item.save(tmp_path / "item_item.npz")
    back = ItemItem.load(tmp_path / "item_item.npz")
    assert back.sources == item_item.sources and back.n_items == item_item.n_items
    for name, m in item_item.matrices.items():
        b = back.matrices[name]
        assert isinstance(b, SparseRows)
        np.testing.assert_array_equal(b.indices, m.indices)
        np.testing.assert_array_equal(b.data, m.data)
    # Scores for a history come out at the neighbours only (sparse), and rated differs from plain.
    history = np.array([3, 40, 500], np.int64)
    plain, rated, timeline = back.scores(history, np.array([1.0, 2.0, 3.0], np.float32))
    assert plain.items is not None and 0 < plain.items.size <= 3 * SPARSE_K
    assert not np.allclose(plain.values, rated.values) and timeline.values.min() > 0

    assert [s.name for s in item_item_sources(EASE_MAX_ITEMS + 1)] == ["timeline"]  # training: no EASE there
