"""Retrieval stage: a user's vector from their history, FAISS top-N, merged with the item-item sources.

The user encoder (models/retrieval.py) and the item-item sources (models/item_item.py) are functions
of the history alone, so fresh feedback changes the candidates at once. Vectors are L2-normalized; the
index is inner product (exact or ANN, chosen at training time by catalog size). Merging and the
per-candidate ranker features are models/candidates.py, the code training evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.candidates import user_candidates
from models.features import user_features
from runners.platform.metrics import timed
from runners.stages.served_model import ServedModel


@dataclass(frozen=True)
class Retrieved:
    items: np.ndarray  # int64 [n] internal item indices, merged order
    features: np.ndarray  # float32 [n, F] per-candidate ranker features (models.candidates)
    user_row: np.ndarray  # float32 [user_dim] the ranker's user feature row
    vector: np.ndarray  # float32 [dim] the user's retrieval vector


class RetrievalStage:
    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        """float32 [dim] for a history of internal item indices."""
        return self.model.weights.user_vectors([history])[0]

    def candidates(
        self, history: np.ndarray, ratings: np.ndarray, n: int, exclude: np.ndarray | None = None
    ) -> Retrieved:
        """``n`` candidates for the user, skipping ``exclude`` (internal indices); ``ratings``: the
        history's rating weights (models.candidates.rating_weight)."""
        vec = self.user_vector(history)
        row = user_features(vec[None, :], [history], self.model.tables)[0]
        drop = np.zeros(self.model.n_items, dtype=bool)
        if exclude is not None and len(exclude):
            drop[exclude] = True
        want = min(self.model.n_items, n + int(drop.sum()))
        with timed("ann_search"):
            _, ids = self.model.index.search(vec[None, :], want)
        keep = (ids[0] >= 0) & ~drop[np.maximum(ids[0], 0)]
        top = ids[0][keep][:n].astype(np.int64)
        m = self.model
        c = user_candidates(vec, m.weights.item_vectors, top, m.item_item, history, ratings, drop, n)
        return Retrieved(c.items, c.features, row, vec)

    def nearest(self, vector: np.ndarray, k: int, skip: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` trained items nearest ``vector`` (float32 [dim]), ``skip`` excluded."""
        with timed("ann_search"):
            scores, ids = self.model.index.search(vector[None, :], min(self.model.n_items, k + 1))
        keep = (ids[0] >= 0) & (ids[0] != skip)
        return ids[0][keep][:k].astype(np.int64), scores[0][keep][:k].astype(np.float32)
