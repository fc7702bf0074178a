"""The version to save: the selection run's choices, refitted on every interaction of the dataset.

Selection (training/experiment.py) fits on the 80% train split and chooses on validation: the retrieval
epochs, EASE's lambda, ItemKNN's k, the ranker (and its epochs) and the diversity penalty. Its test
figures are the ones the report and the version's metadata quote. The saved version then refits, with
those choices, the retrieval model and the item-item sources on train + valid + test, and swaps the
refitted popularity table into the selection run's ranker. That is sound because the ranker never reads
the retrieval embedding space (models/ranker.py): it sees each source's scores and ranks, which the
refitted models produce on the same scale.

The export's parity checks then run on candidates from the refitted models over the selection folds:
those models were trained on the held-out items, so those NDCG figures compare variants with each
other and say nothing about quality.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace

import numpy as np
import torch

from models.features import genre_matrix, item_tables
from training.experiment import RunResult, TrainConfig
from training.item_item import fit_item_item
from training.pipeline import retrieve
from training.protocol import timeline_matrix, user_item_matrix, weight_matrix
from training.train_retrieval import fit_retrieval

log = logging.getLogger(__name__)


def refit_on_all(run: RunResult, cfg: TrainConfig) -> RunResult:
    t = time.perf_counter()
    ds = run.dataset
    n_items = len(ds.catalog)
    every = np.arange(len(ds.interactions))
    x = user_item_matrix(ds.interactions, every, n_items)
    rated = weight_matrix(ds.interactions, every, n_items)
    places = timeline_matrix(ds.interactions, every, n_items)
    epochs = int(run.valid["Folio retrieval"]["epoch"])
    weights = fit_retrieval(x, cfg.retrieval, run.seed, epochs)
    item_item = fit_item_item(x, rated, places, run.choices["ease_reg"])
    pop = np.asarray(x.sum(0)).ravel()
    vocab = run.spec.genres
    tables = item_tables(pop, ds.catalog.years, genre_matrix(ds.catalog.genres, vocab))
    ranker = copy.deepcopy(run.ranker)
    with torch.no_grad():
        ranker.item_scalars.copy_(torch.from_numpy(tables.scalars))
    n = run.test_candidates.items.shape[1]
    val, test = run.valid_fold, run.test_fold
    valid_c = retrieve(weights, tables, item_item, val.rated, val.seen, val.users, n)
    test_c = retrieve(weights, tables, item_item, test.rated, test.seen, test.users, n)
    seconds = dict(run.seconds, refit=time.perf_counter() - t)
    log.info(
        "refit on all %d interactions (retrieval refitted, %d epochs) in %.0fs",
        x.nnz,
        epochs,
        seconds["refit"],
    )
    return replace(
        run,
        weights=weights,
        item_item=item_item,
        tables=tables,
        ranker=ranker,
        popularity=pop,
        valid_candidates=valid_c,
        test_candidates=test_c,
        ranker_train=valid_c,
        ranker_folds=[],  # the selection run's training lists: nothing the saved version needs
        seconds=seconds,
        refit={
            "interactions": int(x.nnz),
            "retrieval": f"refitted, {epochs} epochs",
            "item_item": "refitted",
            "ranker": "selection run (popularity table refitted)",
        },
    )
