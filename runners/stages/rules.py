"""Business rules after ranking: genre filter, cold-start blending and per-item reasons (diversity:
models/diversity.py, shared with training's evaluation).

All functions work on internal item indices (numpy int64) and are pure, so they are unit-tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runners.stages.served_model import ServedModel


def genre_mask(model: ServedModel, wanted: Sequence[str] | None) -> np.ndarray | None:
    """bool [n_items]: items having one of ``wanted`` (case-insensitive); None for no filter."""
    if not wanted:
        return None
    want = {g.casefold() for g in wanted}
    return np.array([any(g.casefold() in want for g in c["genres"]) for c in model.catalog], dtype=bool)


def genre_preference(model: ServedModel, history: np.ndarray, hint: Sequence[str] | None) -> np.ndarray:
    """float32 [n_genres] summing to 1 (or all 0): the history's genre shares plus the hinted genres."""
    pref = model.tables.genres[history].sum(0) if len(history) else np.zeros(model.spec.n_genres, np.float32)
    if hint:
        lookup = {g.casefold(): j for j, g in enumerate(model.spec.genres)}
        for g in hint:
            if (j := lookup.get(g.casefold())) is not None:
                pref[j] += max(1.0, float(pref.sum()))  # a hint weighs as much as the whole history
    total = float(pref.sum())
    return (pref / total if total > 0 else pref).astype(np.float32)


def cold_start_scores(popularity: np.ndarray, model: ServedModel, pref: np.ndarray) -> np.ndarray:
    """Popularity (normalized to [0, 1]) lifted by genre affinity: pop * (1 + 2 * affinity)."""
    pop = popularity / max(float(popularity.max()), 1e-9)
    g = model.tables.genres
    affinity = (g @ pref) / np.maximum(g.sum(1), 1.0)
    return (pop * (1.0 + 2.0 * affinity)).astype(np.float32)


def reasons(
    model: ServedModel, items: np.ndarray, history: np.ndarray, personalized: bool, hint: Sequence[str] | None
) -> list[str]:
    """A human-readable reason per item: the closest book in the history, or popularity."""
    if personalized and len(history):
        sims = model.weights.item_vectors[items] @ model.weights.item_vectors[history].T
        closest = history[sims.argmax(1)]
        return [f"because you read {model.catalog[int(j)]['title']}" for j in closest.tolist()]
    want = {g.casefold() for g in hint or ()}
    out = []
    for i in items.tolist():
        genres = model.catalog[i]["genres"]
        match = next((g for g in genres if g.casefold() in want), genres[0] if genres else None)
        out.append(f"popular in {match}" if match else "popular with readers")
    return out
