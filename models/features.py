"""The ranking feature schema, defined once for training and serving.

A ranking request carries candidate item ids plus ONE user feature row; every item-side feature
is a table inside the exported ranker graph, gathered by id.

User feature row (float32, ``FeatureSpec.user_dim`` wide), in this order:
    user vector [retrieval dim]   (the L2-normalized retrieval user vector; the ranker does not read it)
    genre profile [n_genres]      (share of the history in each genre; rows sum to 1 or 0)
    log1p(history length)
    mean normalized year of the history (0 when unknown)

Item tables (inside the graph):
    item scalars [n_items, 3]               (standardized log popularity, normalized year, year missing)
    item genres  [n_items, n_genres]        (multi-hot)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

YEAR_CENTER, YEAR_SCALE = 1990.0, 20.0


@dataclass(frozen=True)
class FeatureSpec:
    retrieval_dim: int
    genres: tuple[str, ...]
    candidate_features: tuple[str, ...] = ()  # models.candidates.feature_names: F per-candidate inputs

    @property
    def n_genres(self) -> int:
        return len(self.genres)

    @property
    def user_dim(self) -> int:
        return self.retrieval_dim + self.n_genres + 2

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"user_dim": self.user_dim}


@dataclass(frozen=True)
class ItemTables:
    scalars: np.ndarray  # float32 [n_items, 3]
    genres: np.ndarray  # float32 [n_items, n_genres]
    years: np.ndarray  # float32 [n_items], normalized, 0 where unknown


def genre_matrix(item_genres: list[tuple[str, ...]], vocab: tuple[str, ...]) -> np.ndarray:
    index = {g: j for j, g in enumerate(vocab)}
    out = np.zeros((len(item_genres), len(vocab)), dtype=np.float32)
    for i, gs in enumerate(item_genres):
        for g in gs:
            if g in index:
                out[i, index[g]] = 1.0
    return out


def item_tables(popularity: np.ndarray, years: np.ndarray, genres: np.ndarray) -> ItemTables:
    logpop = np.log1p(popularity.astype(np.float64))
    logpop = (logpop - logpop.mean()) / (logpop.std() + 1e-6)
    missing = np.isnan(years)
    year = np.where(missing, 0.0, (np.nan_to_num(years) - YEAR_CENTER) / YEAR_SCALE)
    scalars = np.stack([logpop, year, missing.astype(np.float64)], axis=1).astype(np.float32)
    return ItemTables(scalars, genres, year.astype(np.float32))


def user_features(user_vectors: np.ndarray, histories: list[np.ndarray], tables: ItemTables) -> np.ndarray:
    """float32 [len(histories), user_dim] from the users' vectors and history item ids."""
    n_genres = tables.genres.shape[1]
    rows = np.zeros((len(histories), user_vectors.shape[1] + n_genres + 2), dtype=np.float32)
    rows[:, : user_vectors.shape[1]] = user_vectors
    for r, hist in enumerate(histories):
        if len(hist) == 0:
            continue
        counts = tables.genres[hist].sum(0)
        total = counts.sum()
        g0 = user_vectors.shape[1]
        if total > 0:
            rows[r, g0 : g0 + n_genres] = counts / total
        rows[r, -2] = np.log1p(len(hist))
        rows[r, -1] = tables.years[hist].mean()
    return rows
