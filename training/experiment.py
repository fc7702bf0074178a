"""One training run on one split seed: baselines, retrieval, ranker, all evaluated on test.

Every model is tuned on validation only; test figures are computed once, at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from models.features import FeatureSpec, ItemTables, genre_matrix, item_tables
from models.ranker import Ranker
from models.retrieval import RetrievalConfig, RetrievalWeights
from training.baselines import EASE, ItemKNN, MostPop
from training.dataset import Dataset
from training.metrics import evaluate_scores
from training.pipeline import (
    Candidates,
    RankerConfig,
    evaluate_pipeline,
    retrieve,
    torch_rank_fn,
    train_ranker,
)
from training.protocol import Fold, folds, prepare, protocol_for, split
from training.train_retrieval import train_retrieval

log = logging.getLogger(__name__)

Metrics = dict[str, float]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 2020
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    ease_regs: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)
    knn_ks: tuple[int, ...] = (50, 100, 200)
    baselines: bool = True


@dataclass
class RunResult:
    """What one run produces: test metrics per model, validation metrics, and the serving artifacts."""

    dataset: Dataset  # the prepared (filtered, re-indexed) dataset the models know
    seed: int
    test: dict[str, Metrics]
    valid: dict[str, Metrics]
    tuned: dict[str, float]
    weights: RetrievalWeights
    spec: FeatureSpec
    tables: ItemTables
    ranker: Ranker
    popularity: np.ndarray  # train interactions per item
    valid_candidates: Candidates  # every validation user, for export parity checks
    valid_fold: Fold
    test_candidates: Candidates
    test_fold: Fold
    ranker_train: Candidates  # calibration data for static INT8 quantization
    seconds: dict[str, float] = field(default_factory=dict)


Baseline = MostPop | ItemKNN | EASE


def _baselines(
    val: Fold, test: Fold, cfg: TrainConfig, genres: list[tuple[str, ...]], pop: np.ndarray
) -> tuple[dict[str, Metrics], dict[str, Metrics], dict[str, float]]:
    """Tune each baseline on validation, evaluate the chosen setting on test."""
    grids: dict[str, list[tuple[float | None, Callable[[], Baseline]]]] = {
        "MostPop": [(None, MostPop)],
        "ItemKNN": [(k, partial(ItemKNN, int(k))) for k in cfg.knn_ks],
        "EASE": [(r, partial(EASE, r)) for r in cfg.ease_regs],
    }
    test_m: dict[str, Metrics] = {}
    valid_m: dict[str, Metrics] = {}
    tuned: dict[str, float] = {}
    for name, grid in grids.items():
        best: tuple[Metrics, float | None, Baseline] | None = None
        for param, make in grid:
            model = make().fit(val.train)
            m = evaluate_scores(
                lambda u, m=model: m.score(val.train, u), val.seen, val.target, val.users, genres, pop
            )
            if best is None or m["ndcg@10"] > best[0]["ndcg@10"]:
                best = (m, param, model)
        assert best is not None
        m, param, model = best
        valid_m[name] = m
        if param is not None:
            tuned[name] = float(param)
        test_m[name] = evaluate_scores(
            lambda u, m=model: m.score(test.train, u), test.seen, test.target, test.users, genres, pop
        )
        log.info(
            "%s (%s) valid ndcg@10 %.4f test ndcg@10 %.4f", name, param, m["ndcg@10"], test_m[name]["ndcg@10"]
        )
    return test_m, valid_m, tuned


def run(raw: Dataset, cfg: TrainConfig) -> RunResult:
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ds = prepare(raw, protocol_for(raw.name))
    s = split(ds.interactions, (0.8, 0.1, 0.1), cfg.seed)
    val, test = folds(ds, s)
    genres = ds.catalog.genres
    pop = np.asarray(val.train.sum(0)).ravel()
    log.info(
        "%s: %d users, %d items, %d interactions; seed %d",
        ds.name,
        ds.interactions.n_users,
        len(ds.catalog),
        len(ds.interactions),
        cfg.seed,
    )
    test_m: dict[str, Metrics] = {}
    valid_m: dict[str, Metrics] = {}
    tuned: dict[str, float] = {}
    if cfg.baselines:
        test_m, valid_m, tuned = _baselines(val, test, cfg, genres, pop)
        seconds["baselines"] = time.perf_counter() - t

    t = time.perf_counter()
    weights, valid_m["Folio retrieval"] = train_retrieval(val, cfg.retrieval, cfg.seed, genres)
    seconds["retrieval"] = time.perf_counter() - t

    t = time.perf_counter()
    vocab = tuple(ds.catalog.genre_vocab)
    spec = FeatureSpec(retrieval_dim=weights.dim, genres=vocab)
    tables = item_tables(weights.item_vectors, pop, ds.catalog.years, genre_matrix(genres, vocab))
    n = cfg.ranker.candidates
    val_c = retrieve(weights, tables, val.train, val.seen, val.users, n)
    ranker, valid_m["Folio (retrieve + rank)"], hold_users = train_ranker(
        spec, tables, val_c, val.target, val.seen, cfg.ranker, cfg.seed, genres, pop
    )
    hold = np.isin(val_c.users, hold_users)
    holdout = Candidates(val_c.users[hold], val_c.items[hold], val_c.features[hold])
    fit = Candidates(val_c.users[~hold], val_c.items[~hold], val_c.features[~hold])
    valid_m["Folio retrieval (holdout)"] = evaluate_pipeline(None, holdout, val.seen, val.target, genres, pop)
    seconds["ranker"] = time.perf_counter() - t

    test_c = retrieve(weights, tables, test.train, test.seen, test.users, n)
    test_m["Folio retrieval"] = evaluate_pipeline(None, test_c, test.seen, test.target, genres, pop)
    test_m["Folio (retrieve + rank)"] = evaluate_pipeline(
        torch_rank_fn(ranker), test_c, test.seen, test.target, genres, pop
    )
    for name in ("Folio retrieval", "Folio (retrieve + rank)"):
        log.info(
            "%s test ndcg@10 %.4f recall@10 %.4f", name, test_m[name]["ndcg@10"], test_m[name]["recall@10"]
        )
    return RunResult(
        dataset=ds,
        seed=cfg.seed,
        test=test_m,
        valid=valid_m,
        tuned=tuned,
        weights=weights,
        spec=spec,
        tables=tables,
        ranker=ranker,
        popularity=pop,
        valid_candidates=val_c,
        valid_fold=val,
        test_candidates=test_c,
        test_fold=test,
        ranker_train=fit,
        seconds=seconds,
    )
