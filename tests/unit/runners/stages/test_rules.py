"""Business rules, the result cache's LRU and retrieval on the model trained on the synthetic catalog."""

from __future__ import annotations

import numpy as np
import pytest

from models.diversity import diversify
from runners.stages import rules, served_model
from runners.stages.cache import TTLCache
from runners.stages.retrieval import RetrievalStage
from tests.synthetic_catalog import GENRES, genre_of_book


@pytest.fixture(scope="module")
def model(model_tag: str) -> served_model.ServedModel:
    return served_model.load(served_model.resolve(model_tag))


def test_diversify_caps_each_genre_and_fills_when_it_must() -> None:
    primary = ["a", "a", "a", "a", "b", "b", "c", ""]
    items = np.arange(8)
    assert diversify(items, primary, 5, 0.0, 2).tolist() == [0, 1, 4, 5, 6]
    assert diversify(items, primary, 6, 0.0, 2).tolist() == [0, 1, 4, 5, 6, 7]  # no genre: no cap
    # only genre "a" available: the cap can't hold, the best skipped items fill the list
    assert diversify(np.arange(4), primary, 3, 0.0, 1).tolist() == [0, 1, 2]


def test_diversity_penalty_reads_in_ranks() -> None:
    primary = ["a", "a", "a", "b", "b", ""]
    items = np.arange(6)
    assert diversify(items, primary, 6, 0.0, 10).tolist() == [0, 1, 2, 3, 4, 5]  # off: unchanged
    # penalty 2: the second "a" (rank 1 + 2) ties the first "b" (rank 3): a tie keeps the ranking's order
    assert diversify(items, primary, 3, 2.0, 10).tolist() == [0, 1, 3]
    # penalty 5: every second item of a genre costs 5 ranks; the genre-less item is never penalized
    assert diversify(items, primary, 4, 5.0, 10).tolist() == [0, 3, 5, 1]


def test_genre_mask_is_case_insensitive(model: served_model.ServedModel) -> None:
    mask = rules.genre_mask(model, ["ROMANCE"])
    assert mask is not None and mask.sum() == 20
    assert all(genre_of_book(int(model.catalog[i]["item_id"][1:])) == "romance" for i in np.flatnonzero(mask))
    assert rules.genre_mask(model, None) is None


def test_cold_start_blends_popularity_with_the_hint(model: served_model.ServedModel) -> None:
    pref = rules.genre_preference(model, np.empty(0, np.int64), ["history"])
    assert pref.sum() == pytest.approx(1.0) and pref[list(model.spec.genres).index("history")] == 1.0
    top = np.argsort(-rules.cold_start_scores(model.popularity, model, pref))[:5]
    assert all(model.primary_genre[i] == "history" for i in top)
    nothing = rules.genre_preference(model, np.empty(0, np.int64), None)
    plain = rules.cold_start_scores(model.popularity, model, nothing)
    assert np.argmax(plain) == np.argmax(model.popularity)


def test_reasons_name_the_closest_book_read(model: served_model.ServedModel) -> None:
    history = np.array([model.position["b41"], model.position["b2"]])
    why = rules.reasons(model, np.array([model.position["b45"]]), history, True, None)
    assert why == [f"because you read {model.catalog[model.position['b41']]['title']}"]
    assert rules.reasons(model, np.array([0]), history, False, ["fantasy"]) == ["popular in fantasy"]


def test_retrieval_follows_fresh_history_and_excludes(model: served_model.ServedModel) -> None:
    stage = RetrievalStage(model)
    for g, genre in enumerate(GENRES):
        history = np.array([model.position[f"b{b}"] for b in range(g * 20, g * 20 + 5)])
        cands = stage.candidates(history, np.full(history.size, 2.0, np.float32), 10, exclude=history)
        assert not set(cands.items.tolist()) & set(history.tolist())
        assert sum(model.primary_genre[i] == genre for i in cands.items) >= 8
        assert cands.features.shape == (10, len(model.spec.candidate_features))
        assert cands.user_row.shape == (model.spec.user_dim,)


def test_ttl_cache_expires_and_evicts() -> None:
    now = [0.0]
    cache = TTLCache(max_size=2, ttl_s=10, clock=lambda: now[0])
    cache.put(("m", "u1", 0, "p"), "a")
    cache.put(("m", "u2", 0, "p"), "b")
    assert cache.get(("m", "u1", 0, "p")) == "a"  # u1 is now the most recent
    cache.put(("m", "u3", 0, "p"), "c")
    assert cache.get(("m", "u2", 0, "p")) is None and len(cache) == 2
    now[0] = 11
    assert cache.get(("m", "u1", 0, "p")) is None
    cache.put(("m", "u1", 1, "p"), "d")
    cache.drop_user("u1")
    assert cache.get(("m", "u1", 1, "p")) is None
