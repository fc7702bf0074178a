"""Fit the item-item sources (models/item_item.py) a version serves: EASE at three strengths and ItemKNN.

EASE at the validation-tuned lambda generates candidates and scores them with and without rating
weights; lambda / 5 and lambda x 6 let the ranker pick a per-user regularization (a user with a long
history is served best by a weaker one); EASE fitted on the rating-weighted matrix (lambda x 4: the
weights average about 2, so its Gram matrix is about 4 times larger) reads rated histories. ItemKNN's
cosine neighbours add a co-occurrence view.
EASE inverts an n_items x n_items matrix: above EASE_MAX_ITEMS items only ItemKNN is fitted.
"""

from __future__ import annotations

import logging

import scipy.sparse as sp

from models.item_item import ItemItem, Matrix, Source, served_form
from training.baselines import EASE, ItemKNN

log = logging.getLogger(__name__)

EASE_MAX_ITEMS = 12_000
WEAK, STRONG, RATED = 0.2, 6.0, 4.0  # the extra EASE strengths, relative to the tuned lambda


def fit_item_item(train: sp.csr_matrix, rated: sp.csr_matrix, ease_reg: float, knn_k: int) -> ItemItem:
    """Sources fitted on the binary users x items matrix ``train`` and its rating-weighted twin ``rated``."""
    matrices: dict[str, Matrix] = {}
    sources: list[Source] = []
    if train.shape[1] <= EASE_MAX_ITEMS:
        fits = (
            ("ease", train, ease_reg, False),
            ("ease_weak", train, ease_reg * WEAK, False),
            ("ease_strong", train, ease_reg * STRONG, False),
            ("ease_fit_rated", rated, ease_reg * RATED, True),
        )
        for name, x, reg, reads_rated in fits:
            matrices[name] = served_form(EASE(reg).fit(x).b)
            sources.append(Source(name, name, rated=reads_rated))
        sources.insert(1, Source("ease_rated", "ease", rated=True))
    else:
        log.info("%d items > %d: no EASE sources, ItemKNN only", train.shape[1], EASE_MAX_ITEMS)
    matrices["knn"] = served_form(ItemKNN(knn_k).fit(train).sim)
    sources.append(Source("knn", "knn", rated=False))
    return ItemItem(matrices, tuple(sources))
