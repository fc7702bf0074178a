"""The in-memory dataset every loader produces and every training step consumes.

Ids: the loaders map external ids (strings, as they appear in the files) to dense internal
indices 0..n-1; ``Catalog.item_ids[i]`` / ``Interactions.user_ids[u]`` map them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Malformed input: names the file, the line (1-based, header = line 1) and the problem."""

    def __init__(self, file: str, problem: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {problem}")
        self.file, self.line, self.problem = file, line, problem


@dataclass(frozen=True)
class Catalog:
    """Items in internal-index order. ``years`` is float32 with NaN where unknown."""

    item_ids: list[str]
    titles: list[str]
    authors: list[str]  # "" where the source has none (MovieLens)
    genres: list[tuple[str, ...]]
    years: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def subset(self, keep: np.ndarray) -> Catalog:
        """The catalog restricted to the internal indices in ``keep`` (in that order)."""
        idx = [int(i) for i in keep]
        return Catalog(
            item_ids=[self.item_ids[i] for i in idx],
            titles=[self.titles[i] for i in idx],
            authors=[self.authors[i] for i in idx],
            genres=[self.genres[i] for i in idx],
            years=self.years[np.asarray(idx, dtype=np.int64)],
        )

    @property
    def genre_vocab(self) -> list[str]:
        return sorted({g for gs in self.genres for g in gs})


@dataclass(frozen=True)
class Interactions:
    """One row per (user, item) event. ``timestamps`` is float64 seconds, NaN where absent."""

    users: np.ndarray  # int64 internal user index
    items: np.ndarray  # int64 internal item index
    ratings: np.ndarray  # float32
    timestamps: np.ndarray  # float64
    user_ids: list[str]

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.users[mask], self.items[mask], self.ratings[mask], self.timestamps[mask], self.user_ids
        )


@dataclass(frozen=True)
class Dataset:
    name: str
    catalog: Catalog
    interactions: Interactions
    source: dict[str, str] = field(default_factory=dict)  # e.g. {"file": ..., "sha256": ...}
