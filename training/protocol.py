"""RecBole's general-recommendation evaluation protocol, replicated.

1. implicit positives (rating >= threshold) and an iterated k-core filter on users and items;
2. per-user random split, RecBole's ``split_by_ratio`` with ratios 0.8/0.1/0.1;
3. full ranking over every item, masking the user's train (and, for test, validation) items,
   over users that have at least one held-out item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from models.candidates import rating_weight, rating_weights
from training.dataset import Dataset, Interactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtocolConfig:
    min_rating: float | None = None  # keep rating >= min_rating; None keeps everything
    user_core: int = 0
    item_core: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)


# Per-dataset protocols as RecBole's benchmark configures them.
PROTOCOLS: dict[str, ProtocolConfig] = {
    "ml-1m": ProtocolConfig(min_rating=3.0, user_core=10, item_core=10),
    "ml-100k": ProtocolConfig(),
}


def protocol_for(name: str) -> ProtocolConfig:
    return PROTOCOLS.get(name, ProtocolConfig())


def _k_core(users: np.ndarray, items: np.ndarray, user_core: int, item_core: int) -> np.ndarray:
    """Mask of interactions kept by RecBole's iterated filter (users and items banned together)."""
    keep = np.ones(users.shape[0], dtype=bool)
    while True:
        u_cnt = np.bincount(users[keep], minlength=int(users.max()) + 1)
        i_cnt = np.bincount(items[keep], minlength=int(items.max()) + 1)
        banned = keep & ((u_cnt[users] < user_core) | (i_cnt[items] < item_core))
        if not banned.any():
            return keep
        keep &= ~banned


def prepare(dataset: Dataset, cfg: ProtocolConfig) -> Dataset:
    """Filter to implicit positives and the k-core; re-index items densely (catalog order kept).

    Only items with at least one kept interaction remain, as in RecBole; users are re-indexed
    in order of first appearance among kept rows.
    """
    inter = dataset.interactions
    keep = np.ones(len(inter), dtype=bool)
    if cfg.min_rating is not None:
        keep &= inter.ratings >= cfg.min_rating
    if cfg.user_core or cfg.item_core:
        sub = np.flatnonzero(keep)
        keep[sub] = _k_core(inter.users[sub], inter.items[sub], cfg.user_core, cfg.item_core)
    dropped = len(inter) - int(keep.sum())
    if dropped:
        log.info(
            "%s: protocol kept %d of %d interactions (%d dropped)",
            dataset.name,
            keep.sum(),
            len(inter),
            dropped,
        )
    kept = inter.take(keep)
    item_keep = np.flatnonzero(np.bincount(kept.items, minlength=len(dataset.catalog)) > 0)
    item_map = np.full(len(dataset.catalog), -1, dtype=np.int64)
    item_map[item_keep] = np.arange(item_keep.size)
    _, first = np.unique(kept.users, return_index=True)
    user_order = kept.users[np.sort(first)]
    user_map = np.full(inter.n_users, -1, dtype=np.int64)
    user_map[user_order] = np.arange(user_order.size)
    return Dataset(
        name=dataset.name,
        catalog=dataset.catalog.subset(item_keep),
        interactions=Interactions(
            users=user_map[kept.users],
            items=item_map[kept.items],
            ratings=kept.ratings,
            timestamps=kept.timestamps,
            user_ids=[inter.user_ids[u] for u in user_order],
        ),
        source=dataset.source,
    )


def split_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """RecBole's ``_calcu_split_ids``: int(ratio * n) per later part, the rest to the first part,
    and a part whose share is in (0, 1) gets one interaction while the first part keeps > 1."""
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


@dataclass(frozen=True)
class Split:
    """Row indices into the prepared interactions for each part."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def split(inter: Interactions, ratios: tuple[float, float, float], seed: int) -> Split:
    """Per user: random order, then train/valid/test by ``split_counts``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(inter))
    order = order[np.argsort(inter.users[order], kind="stable")]  # grouped by user, shuffled within
    bounds = np.flatnonzero(np.diff(inter.users[order])) + 1
    parts: list[list[np.ndarray]] = [[], [], []]
    for rows in np.split(order, bounds):
        n_train, n_valid, _ = split_counts(rows.size, ratios)
        parts[0].append(rows[:n_train])
        parts[1].append(rows[n_train : n_train + n_valid])
        parts[2].append(rows[n_train + n_valid :])
    train, valid, test = (np.sort(np.concatenate(p)) for p in parts)
    return Split(train, valid, test)


def user_item_matrix(inter: Interactions, rows: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Binary users x items CSR matrix of the given interaction rows."""
    data = np.ones(rows.size, dtype=np.float32)
    m = sp.csr_matrix((data, (inter.users[rows], inter.items[rows])), shape=(inter.n_users, n_items))
    m.data[:] = 1.0  # duplicates collapse to 1
    return m


def weight_matrix(inter: Interactions, rows: np.ndarray, n_items: int) -> sp.csr_matrix:
    """users x items CSR of the rows' rating weights (models.candidates.rating_weight; at most 3)."""
    weights = rating_weights(inter.ratings[rows])
    m = sp.csr_matrix((weights, (inter.users[rows], inter.items[rows])), shape=(inter.n_users, n_items))
    np.minimum(m.data, 3.0, out=m.data)  # duplicates sum: cap them
    return m


def timeline_matrix(inter: Interactions, rows: np.ndarray, n_items: int) -> sp.csr_matrix:
    """users x items CSR whose value is the interaction's place in its user's timeline (1 = first):
    ordered by timestamp, then by row (file order: interactions without a timestamp keep it, after the
    dated ones). A repeated (user, item) keeps its first place."""
    rows = np.asarray(rows)
    order = rows[np.lexsort((rows, inter.timestamps[rows], inter.users[rows]))]
    users, items = inter.users[order], inter.items[order]
    _, first = np.unique(users * np.int64(n_items) + items, return_index=True)
    keep = np.sort(first)
    users, items = users[keep], items[keep]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(users)) + 1])
    place = np.arange(users.size) - np.repeat(starts, np.diff(np.append(starts, users.size))) + 1
    return sp.csr_matrix((place.astype(np.float32), (users, items)), shape=(inter.n_users, n_items))


@dataclass(frozen=True)
class Fold:
    """Matrices of one split: ``train`` feeds models, ``seen`` is masked, ``target`` is held out;
    ``weights`` is ``train`` with rating weights as values (None: every interaction weighs the same);
    ``timeline`` is ``train`` with each interaction's place in its user's timeline (``timeline_matrix``;
    None: the matrix's column order)."""

    train: sp.csr_matrix
    seen: sp.csr_matrix
    target: sp.csr_matrix
    weights: sp.csr_matrix | None = None
    timeline: sp.csr_matrix | None = None

    @property
    def rated(self) -> sp.csr_matrix:
        """``weights``, or ``train`` with the default weight when no ratings are known."""
        if self.weights is not None:
            return self.weights
        out = self.train.astype(np.float32, copy=True)
        out.data[:] = rating_weight(None)
        return out

    @property
    def places(self) -> sp.csr_matrix:
        """``timeline``, or ``train`` with each row's items in column order when no timeline is known."""
        if self.timeline is not None:
            return self.timeline
        out = self.train.astype(np.float32, copy=True)
        out.sort_indices()
        out.data[:] = np.arange(out.nnz) - np.repeat(out.indptr[:-1], np.diff(out.indptr)) + 1
        return out

    @property
    def users(self) -> np.ndarray:
        """Users with at least one held-out item."""
        return np.flatnonzero(np.diff(self.target.indptr) > 0)


def folds(dataset: Dataset, s: Split) -> tuple[Fold, Fold]:
    """(validation fold, test fold). At test time the model still sees only train, as in RecBole,
    and both train and validation items are masked."""
    n = len(dataset.catalog)
    inter = dataset.interactions
    train = user_item_matrix(inter, s.train, n)
    valid = user_item_matrix(inter, s.valid, n)
    test = user_item_matrix(inter, s.test, n)
    weights = weight_matrix(inter, s.train, n)
    timeline = timeline_matrix(inter, s.train, n)
    return (
        Fold(train, train, valid, weights, timeline),
        Fold(train, (train + valid).tocsr(), test, weights, timeline),
    )
