"""One training run on one split seed: baselines, retrieval, ranker, all evaluated on test.

Every model is tuned on validation only; test figures are computed once, at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp

from models.candidates import feature_names
from models.diversity import DIVERSITY_NDCG_BUDGET, PENALTIES
from models.features import FeatureSpec, ItemTables, genre_matrix, item_tables
from models.item_item import ItemItem
from models.ranker import Ranker
from models.retrieval import RetrievalConfig, RetrievalWeights
from training.baselines import EASE, ItemKNN, MostPop
from training.dataset import Dataset
from training.item_item import fit_item_item
from training.metrics import evaluate_scores
from training.pipeline import (
    CandidateBatch,
    RankerConfig,
    evaluate_pipeline,
    histories,
    holdout_users,
    retrieve,
    torch_rank_fn,
    train_ranker,
)
from training.protocol import Fold, folds, prepare, protocol_for, split
from training.ranker_folds import ranker_folds
from training.train_retrieval import train_retrieval

log = logging.getLogger(__name__)

Metrics = dict[str, float]
CURVE_METRICS = ("ndcg@10", "recall@10", "diversity@10", "coverage@10", "novelty@10")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 2020
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    ease_regs: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)
    knn_ks: tuple[int, ...] = (50, 100, 200)
    baselines: bool = True
    default_ease_reg: float = 500.0  # EASE's lambda for the item-item sources when baselines are skipped


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
    item_item: ItemItem
    ranker: Ranker
    popularity: np.ndarray  # train interactions per item
    valid_candidates: CandidateBatch  # every validation user, for export parity checks
    valid_fold: Fold
    test_candidates: CandidateBatch
    test_fold: Fold
    ranker_train: CandidateBatch  # calibration data for static INT8 quantization
    diversity: dict[str, Any]  # chosen penalty and the accuracy/diversity curve (valid holdout and test)
    choices: dict[str, float]  # item-item hyper-parameters chosen on validation (ease_reg)
    hold_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ranker holdout
    # training/ranker_folds.py: the extra (candidates, target) lists the ranker trained on
    ranker_folds: list[tuple[CandidateBatch, sp.csr_matrix]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    refit: dict[str, Any] | None = None  # training/refit.py: what was refitted on every interaction


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
        chosen, param, model = best
        valid_m[name] = chosen
        if param is not None:
            tuned[name] = float(param)
        test_m[name] = evaluate_scores(
            lambda u, m=model: m.score(test.train, u), test.seen, test.target, test.users, genres, pop
        )
        log.info(
            "%s (%s) valid ndcg@10 %.4f test ndcg@10 %.4f",
            name,
            param,
            chosen["ndcg@10"],
            test_m[name]["ndcg@10"],
        )
    return test_m, valid_m, tuned


def choose_penalty(user_ndcg: dict[float, np.ndarray], budget: float = DIVERSITY_NDCG_BUDGET) -> float:
    """The largest diversity penalty whose NDCG@10 cost against penalty 0, paired per user, stays within
    ``budget`` at its upper bound (mean + 2 standard errors). The mean alone is noise on a small holdout:
    on ML-100K's ~190 holdout users it chose penalties from 0.5 to 5 across seeds."""
    off = user_ndcg[0.0]

    def cost_bound(p: float) -> float:
        d = off - user_ndcg[p]
        return float(d.mean() + 2.0 * d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("inf")

    return max(p for p in user_ndcg if p == 0.0 or cost_bound(p) <= budget)


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
    ease_reg = tuned.get("EASE", cfg.default_ease_reg)
    item_item = fit_item_item(val.train, val.rated, val.places, ease_reg)
    seconds["item_item"] = time.perf_counter() - t

    t = time.perf_counter()
    vocab = tuple(ds.catalog.genre_vocab)
    spec = FeatureSpec(retrieval_dim=weights.dim, genres=vocab, candidate_features=feature_names(item_item))
    tables = item_tables(pop, ds.catalog.years, genre_matrix(genres, vocab))
    n = cfg.ranker.candidates
    val_c = retrieve(weights, tables, item_item, val.rated, val.seen, val.users, n)
    hold_users = holdout_users(val_c.users, cfg.ranker.holdout_share, cfg.seed)
    epochs = int(valid_m["Folio retrieval"]["epoch"])
    seconds["candidates"] = time.perf_counter() - t
    t = time.perf_counter()
    extra = ranker_folds(
        ds, s, cfg.ranker.extra_folds, cfg.seed, cfg.retrieval, epochs, ease_reg, tables, hold_users, n
    )
    seconds["ranker_folds"] = time.perf_counter() - t

    t = time.perf_counter()
    ranker, valid_m["Folio (retrieve + rank)"] = train_ranker(
        spec, tables, val_c, val.target, val.seen, cfg.ranker, cfg.seed, genres, pop, hold_users, extra
    )
    hold = np.isin(val_c.users, hold_users)
    holdout, fit = val_c.take(hold), val_c.take(~hold)
    valid_m["Folio candidates (merged, unranked, holdout)"] = evaluate_pipeline(
        None, holdout, val.seen, val.target, genres, pop
    )
    seconds["ranker"] = time.perf_counter() - t

    test_c = retrieve(weights, tables, item_item, test.rated, test.seen, test.users, n)
    test_m["Folio retrieval"] = evaluate_scores(
        lambda ub: weights.user_vectors(histories(test.train, ub)) @ weights.item_vectors.T,
        test.seen,
        test.target,
        test.users,
        genres,
        pop,
    )
    test_m["Folio candidates (merged, unranked)"] = evaluate_pipeline(
        None, test_c, test.seen, test.target, genres, pop
    )
    rank = torch_rank_fn(ranker)
    curve = {
        p: (
            evaluate_pipeline(rank, holdout, val.seen, val.target, genres, pop, diversity=p),
            evaluate_pipeline(rank, test_c, test.seen, test.target, genres, pop, diversity=p),
        )
        for p in PENALTIES
    }
    penalty = choose_penalty({p: v.ndcg_users for p, (v, _) in curve.items()})
    off = curve[0.0][0]["ndcg@10"]
    diversity = {
        "penalty": penalty,
        "budget": DIVERSITY_NDCG_BUDGET,
        "curve": [
            {
                "penalty": p,
                "valid": {k: v[k] for k in CURVE_METRICS},
                "test": {k: t[k] for k in CURVE_METRICS},
            }
            for p, (v, t) in curve.items()
        ],
    }
    test_m["Folio (retrieve + rank)"] = curve[0.0][1]  # penalty 0: the ranking as is, rules off
    test_m["Folio (served defaults: diversity on)"] = curve[penalty][1]
    log.info(
        "diversity penalty %.1f (validation NDCG@10 %.4f vs %.4f off)",
        penalty,
        curve[penalty][0]["ndcg@10"],
        off,
    )
    for name in ("Folio retrieval", "Folio candidates (merged, unranked)", "Folio (retrieve + rank)"):
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
        item_item=item_item,
        ranker=ranker,
        popularity=pop,
        valid_candidates=val_c,
        valid_fold=val,
        test_candidates=test_c,
        test_fold=test,
        ranker_train=fit,
        diversity=diversity,
        choices={"ease_reg": ease_reg},
        hold_users=hold_users,
        ranker_folds=extra,
        seconds=seconds,
    )
