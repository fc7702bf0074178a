"""The synthetic version the growth benchmark serves: complete, parity-checked, loadable by serving."""

import numpy as np

from loadtests.synthetic_model import build_synthetic_version, find_synthetic_version
from runners import artifacts
from training import store

N_ITEMS, N_USERS = 500, 200


def test_tiny_synthetic_version_is_servable_and_loads_consistently():
    tag = build_synthetic_version(N_ITEMS, n_users=N_USERS, dim=16, hidden=32, n_genres=6)
    model = store.get(tag)
    assert store.servable_problems(model) == []
    assert model.info.labels["dataset"] == f"synthetic-{N_ITEMS}"
    assert find_synthetic_version(N_ITEMS) == tag
    assert model.info.metadata["index"]["kind"] == "flat"  # N_ITEMS is under the exact-search threshold

    served = artifacts.load(model)
    assert served.n_items == N_ITEMS == served.index.ntotal == served.popularity.shape[0]
    assert served.weights.item_in.shape == (N_ITEMS, 32)
    assert served.weights.item_vectors.shape == (N_ITEMS, 16)
    np.testing.assert_allclose(np.linalg.norm(served.weights.item_vectors, axis=1), 1.0, atol=1e-5)
    assert served.spec.user_dim == 16 + 6 + 2
    assert served.tables.genres.shape == (N_ITEMS, 6) and (served.tables.genres.sum(1) >= 1).all()
    assert len(served.train_histories) == N_USERS
    assert all(len(h) >= 5 and h.max() < N_ITEMS for h in served.train_histories.values())
    assert {c["item_id"] for c in served.catalog} == {str(i + 1) for i in range(N_ITEMS)}

    # Zipf popularity: the head of the catalog holds far more than a uniform share.
    pop = np.sort(served.popularity)[::-1]
    assert pop[: N_ITEMS // 10].sum() > 0.4 * pop.sum()
    # Clustered preferences: a user's history concentrates on few primary genres.
    top_share = [
        np.unique([served.primary_genre[i] for i in h], return_counts=True)[1].max() / len(h)
        for h in served.train_histories.values()
    ]
    assert np.mean(top_share) > 0.5
