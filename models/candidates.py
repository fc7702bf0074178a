"""Candidate generation and per-candidate ranker features: one function for training and serving.

For one user (history item indices, their rating weights, the retrieval user vector):

1. each generator lists its best items outside ``excluded``: the retrieval model (FAISS in serving,
   exact inner product in training: the same top list) and the first item-item source;
2. the lists are merged round-robin (best of each, then second of each, ...) into ``n`` unique items;
3. every candidate gets, for each source in ``feature_names`` order, three features:
   the score, the score over the largest |score| among the candidates, and log1p(its rank among them).

Candidate features: float32 [N, F], F = 3 x (1 + number of item-item sources): 200 candidates and 6
sources cost 200 x 18 x 4 = 14.4 kB per ranking call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.item_item import ItemItem

RETRIEVAL = "retrieval"
PER_SOURCE = ("score", "relative", "log_rank")
DEFAULT_RATING_WEIGHT = 2.0  # an interaction without a rating (a click, a purchase) weighs as a 4-star rating


def rating_weights(ratings: np.ndarray) -> np.ndarray:
    """float32 history weights of interactions: 1 for ratings <= 3, 2 for 4, 3 for 5 (1..5 scale),
    DEFAULT_RATING_WEIGHT where the rating is unknown (NaN)."""
    r = np.asarray(ratings, dtype=np.float64)
    return np.where(np.isfinite(r), np.clip(r - 2.0, 1.0, 3.0), DEFAULT_RATING_WEIGHT).astype(np.float32)


def rating_weight(rating: float | None) -> float:
    """``rating_weights`` of one interaction (None: unknown), without numpy (serving calls it per event)."""
    if rating is None or not math.isfinite(rating):
        return DEFAULT_RATING_WEIGHT
    return min(max(rating - 2.0, 1.0), 3.0)


def feature_names(item_item: ItemItem | None) -> tuple[str, ...]:
    sources = (RETRIEVAL, *(s.name for s in item_item.sources)) if item_item else (RETRIEVAL,)
    return tuple(f"{s}.{f}" for s in sources for f in PER_SOURCE)


def merge(tops: list[np.ndarray], n: int) -> np.ndarray:
    """Round-robin union of best-first lists, first occurrence kept, at most ``n`` items."""
    width = max((t.size for t in tops), default=0)
    if width == 0:
        return np.zeros(0, np.int64)
    grid = np.full((width, len(tops)), -1, np.int64)
    for j, t in enumerate(tops):
        grid[: t.size, j] = t
    flat = grid.reshape(-1)
    flat = flat[flat >= 0]
    _, first = np.unique(flat, return_index=True)
    return flat[np.sort(first)][:n]


def _source_features(scores: np.ndarray) -> np.ndarray:
    """[N, 3]: score, score / max|score|, log1p(rank) (0 = best; ties share the best rank)."""
    peak = max(float(np.abs(scores).max()) if scores.size else 0.0, 1e-6)
    order = np.sort(-scores)
    rank = np.searchsorted(order, -scores, side="left")
    return np.stack([scores, scores / peak, np.log1p(rank)], axis=1)


@dataclass(frozen=True)
class UserCandidates:
    items: np.ndarray  # int64 [N], merged order (not yet ranked)
    features: np.ndarray  # float32 [N, F], feature_names order


def user_candidates(
    user_vector: np.ndarray,
    item_vectors: np.ndarray,
    retrieval_top: np.ndarray,
    item_item: ItemItem | None,
    history: np.ndarray,
    ratings: np.ndarray,
    excluded: np.ndarray,
    n: int,
) -> UserCandidates:
    """Candidates and their features for one user.

    ``retrieval_top``: the retrieval model's best items outside ``excluded`` (int64, best first);
    ``ratings``: rating weights of ``history`` (``rating_weight``); ``excluded``: bool [n_items].
    """
    tops = [retrieval_top[:n]]
    generator = item_item.generator_scores(history, ratings) if item_item else None
    if generator is not None:
        tops.append(generator.top(n, excluded))
    items = merge(tops, n)
    cols = [item_vectors[items] @ user_vector.astype(np.float32)]
    if item_item:
        cols += list(item_item.scores_at(history, ratings, items, generator))
    feats = np.concatenate([_source_features(c.astype(np.float32)) for c in cols], axis=1)
    return UserCandidates(items, feats.astype(np.float32))
