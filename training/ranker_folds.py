"""Extra ranker training data: the validation fold's situation, re-drawn on other splits.

The ranker learns from lists whose candidates come from models that never saw the list's positives.
The validation fold gives one such list per user. Each extra fold re-splits the train + valid
interactions (never test; never the ranker-holdout users' validation items, which decide early stopping
and every validation figure) 8:1 per user with another seed, refits the retrieval model (the epochs
chosen on validation) and the item-item sources on the 8 parts, and lists candidates against the 1 part
for every user outside the holdout. Each fold costs one retrieval fit and one item-item fit; what the
folds add on validation is in docs/quality.md's ablation table (ML-100K, where 943 users give the ranker
about 750 lists: holdout NDCG@10 +0.0027, seed 2020).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp

from models.features import ItemTables
from models.retrieval import RetrievalConfig
from training.dataset import Dataset
from training.item_item import fit_item_item
from training.pipeline import CandidateBatch, retrieve
from training.protocol import Split, split, timeline_matrix, user_item_matrix, weight_matrix
from training.train_retrieval import fit_retrieval

log = logging.getLogger(__name__)

SEED_STRIDE = 7919  # fold k splits with seed + k * SEED_STRIDE (a prime: no clash with nearby run seeds)


def ranker_folds(
    ds: Dataset,
    s: Split,
    count: int,
    seed: int,
    retrieval: RetrievalConfig,
    epochs: int,
    ease_reg: float,
    tables: ItemTables,
    excluded_users: np.ndarray,
    n: int,
) -> list[tuple[CandidateBatch, sp.csr_matrix]]:
    """``count`` extra (candidates, target) pairs from ``s.train`` + ``s.valid``."""
    inter = ds.interactions
    # the holdout users' validation items stay out of every fold model: they judge the ranker
    valid = s.valid[~np.isin(inter.users[s.valid], excluded_users)]
    pool = inter.take(np.concatenate([s.train, valid]))
    n_items = len(ds.catalog)
    out = []
    for k in range(1, count + 1):
        t = time.perf_counter()
        part = split(pool, (0.8 / 0.9, 0.1 / 0.9, 0.0), seed + k * SEED_STRIDE)
        train = user_item_matrix(pool, part.train, n_items)
        target = user_item_matrix(pool, part.valid, n_items)
        rated = weight_matrix(pool, part.train, n_items)
        places = timeline_matrix(pool, part.train, n_items)
        weights = fit_retrieval(train, retrieval, seed + k, epochs)
        item_item = fit_item_item(train, rated, places, ease_reg)
        users = np.flatnonzero(np.diff(target.indptr) > 0)
        users = users[~np.isin(users, excluded_users)]
        out.append((retrieve(weights, tables, item_item, rated, train, users, n), target))
        log.info("ranker fold %d: %d users in %.0fs", k, users.size, time.perf_counter() - t)
    return out
