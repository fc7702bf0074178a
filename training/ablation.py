"""Ablation: what each part of the pipeline adds on validation and test, and what it costs.

    python -m training ablate --dataset ml-1m [--seed 2020]

One selection run (training/experiment.py) on one split seed, then rankers retrained on the very same
candidates reading the features of some sources only: the other sources' columns are held at 0, which
the ranker's fixed standardization turns into a constant input it can learn nothing from. The steps are
cumulative, ending at the default pipeline (whose figures are the selection run's own). Rows without a
ranker order the same users by one model alone (full ranking) or keep the merged candidates' order.

valid: the ranker-holdout users' validation items (never trained on; early stopping read them);
test: the test fold. Costs, in process and one thread: the median time per request (test users'
histories) to compute the scores the step adds, and the bytes per item of the matrices it adds to the
version. The extra ranker folds cost training time only. Writes ``<results>/ablation/<dataset>.json``;
``python -m training report`` renders it into docs/quality.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from models.candidates import PER_SOURCE, RETRIEVAL
from models.item_item import user_scores
from training.dataset import Dataset
from training.experiment import RunResult, TrainConfig, run
from training.metrics import evaluate_scores
from training.pipeline import CandidateBatch, evaluate_pipeline, histories, torch_rank_fn, train_ranker
from training.protocol import Fold

log = logging.getLogger(__name__)

EASE_PLAIN = ("ease", "ease_weak", "ease_strong")
EASE_RATED = ("ease_rated", "ease_fit_rated")
# (row, sources whose candidate features the ranker reads); trained without the extra ranker folds,
# which the last row (the default pipeline) adds
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ranker: retrieval features only", (RETRIEVAL,)),
    ("+ EASE at three strengths", (RETRIEVAL, *EASE_PLAIN)),
    ("+ rating-weighted EASE", (RETRIEVAL, *EASE_PLAIN, *EASE_RATED)),
    ("+ timeline neighbours (every source)", (RETRIEVAL, *EASE_PLAIN, *EASE_RATED, "timeline")),
)
DEFAULT_ROW = "+ extra ranker folds (the default pipeline)"
COST_USERS = 300


def masked(c: CandidateBatch, feature_names: tuple[str, ...], sources: tuple[str, ...]) -> CandidateBatch:
    """``c`` with the candidate features of every source outside ``sources`` set to 0."""
    keep = np.array([name.split(".")[0] in sources for name in feature_names])
    feats = c.cand_features.copy()
    feats[..., ~keep] = 0.0
    return CandidateBatch(c.users, c.items, c.features, feats)


def _source_alone(m: np.ndarray, rated: bool, f: Fold, users: np.ndarray) -> np.ndarray:
    """Full-ranking scores of one dense item-item source for ``users`` (rated: rating-weighted history)."""
    x = (f.rated if rated else f.train)[users]
    return np.stack(
        [
            user_scores(m, x.indices[a:b], x.data[a:b]).values
            for a, b in zip(x.indptr[:-1], x.indptr[1:], strict=True)
        ]
    )


def _metrics(m: dict[str, float]) -> dict[str, float]:
    return {k: float(m[k]) for k in ("ndcg@10", "recall@10")}


def source_costs(r: RunResult) -> dict[str, dict[str, float]]:
    """Per item-item source: median ms per request to score a test user's history, in process, through
    the history's rows (what serving does for every history up to the candidate count, the median
    user's; longer ones read a transposed copy, models/item_item.py); and the bytes per item of its
    matrix (a matrix two sources share is counted once, for the first)."""
    fold, ii = r.test_fold, r.item_item
    users = fold.users[:COST_USERS]
    rated = fold.rated
    out: dict[str, dict[str, float]] = {}
    counted: set[str] = set()
    for s in ii.sources:
        m = ii.matrices[s.matrix]
        times = []
        for u in users:
            hist = fold.train.indices[fold.train.indptr[u] : fold.train.indptr[u + 1]]
            w = (
                rated.data[rated.indptr[u] : rated.indptr[u + 1]]
                if s.rated
                else np.ones(hist.size, np.float32)
            )
            t = time.perf_counter()
            user_scores(m, hist, w)
            times.append(time.perf_counter() - t)
        per_item = 0.0 if s.matrix in counted else m.nbytes / ii.n_items
        counted.add(s.matrix)
        out[s.name] = {"ms": float(np.median(times) * 1000), "bytes_per_item": float(per_item)}
    return out


def ablate(dataset: Dataset, cfg: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = run(dataset, cfg)
    genres, pop = r.dataset.catalog.genres, r.popularity
    val, test = r.valid_fold, r.test_fold
    hold = r.hold_users
    rows: list[dict[str, Any]] = []

    def full_ranking(name: str, score: Callable[[Fold, np.ndarray], np.ndarray]) -> None:
        rows.append(
            {
                "row": name,
                "valid": _metrics(
                    evaluate_scores(lambda ub: score(val, ub), val.seen, val.target, hold, genres, pop)
                ),
                "test": _metrics(
                    evaluate_scores(
                        lambda ub: score(test, ub), test.seen, test.target, test.users, genres, pop
                    )
                ),
            }
        )

    w = r.weights
    full_ranking(
        "retrieval model alone", lambda f, ub: w.user_vectors(histories(f.train, ub)) @ w.item_vectors.T
    )
    for s in r.item_item.sources:
        m = r.item_item.matrices[s.matrix]
        if isinstance(m, np.ndarray):  # a sparse source scores the items its rows reach only
            full_ranking(f"{s.name} alone", partial(_source_alone, m, s.rated))
    in_hold = np.isin(r.valid_candidates.users, hold)
    holdout = r.valid_candidates.take(in_hold)
    rows.append(
        {
            "row": "merged candidates, unranked",
            "valid": _metrics(evaluate_pipeline(None, holdout, val.seen, val.target, genres, pop)),
            "test": _metrics(evaluate_pipeline(None, r.test_candidates, test.seen, test.target, genres, pop)),
        }
    )
    names = r.spec.candidate_features
    available = {n.split(".")[0] for n in names}
    costs = source_costs(r)
    previous: set[str] = set()
    for row, wanted in STEPS:
        sources = tuple(s for s in wanted if s in available)
        added = [s for s in sources if s not in previous]
        if previous and not added:
            continue  # the catalog lacks the step's sources (no EASE above EASE_MAX_ITEMS)
        previous |= set(sources)
        t = time.perf_counter()
        ranker, valid_m = train_ranker(
            r.spec, r.tables, masked(r.valid_candidates, names, sources), val.target, val.seen,
            cfg.ranker, cfg.seed, genres, pop, hold,
        )  # fmt: skip
        test_m = evaluate_pipeline(
            torch_rank_fn(ranker),
            masked(r.test_candidates, names, sources),
            test.seen,
            test.target,
            genres,
            pop,
        )
        rows.append(
            {
                "row": row,
                "valid": _metrics(valid_m),
                "test": _metrics(test_m),
                "added_sources": added,
                "ms_per_request": sum(costs[s]["ms"] for s in added if s in costs),
                "bytes_per_item": sum(costs[s]["bytes_per_item"] for s in added if s in costs),
                "train_s": time.perf_counter() - t,
            }
        )
        log.info("ablation %s: valid %.4f test %.4f", row, valid_m["ndcg@10"], test_m["ndcg@10"])
    rows.append(
        {
            "row": DEFAULT_ROW,
            "valid": _metrics(r.valid["Folio (retrieve + rank)"]),
            "test": _metrics(r.test["Folio (retrieve + rank)"]),
            "added_sources": [],
            "ms_per_request": 0.0,
            "bytes_per_item": 0.0,
            "train_s": r.seconds.get("ranker_folds", 0.0) + r.seconds.get("ranker", 0.0),
        }
    )
    return {
        "dataset": r.dataset.name,
        "seed": cfg.seed,
        "features_per_source": len(PER_SOURCE),
        "extra_folds": cfg.ranker.extra_folds,
        "holdout_users": int(hold.size),
        "rows": rows,
        "source_costs": costs,
        "seconds": time.perf_counter() - t0,
    }


def write_ablation(dataset: Dataset, cfg: TrainConfig, results: Path) -> Path:
    out = results / "ablation" / f"{dataset.name}.json"
    data = ablate(dataset, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    log.info("wrote %s", out)
    return out


def ablation_section(data: dict[str, Any]) -> list[str]:
    """The ablation table of one dataset, as docs/quality.md shows it."""
    lines = [
        "",
        f"### Ablation ({data['dataset']}, seed {data['seed']})",
        "",
        "`python -m training ablate --dataset <name>` (training/ablation.py). Cumulative: each ranker row "
        "retrains the ranker on the same candidates reading the features of the sources listed so far "
        f"(the others held at 0); valid: the {data['holdout_users']} ranker-holdout users; "
        "cost: what the step's item-item sources add per request (in process, one thread, median over "
        "test users) and to the version's size (the retrieval model and the ranker are common to every "
        "row); training: seconds to train that ranker (the last row: its extra folds included).",
        "",
        "| step | valid NDCG@10 | Δ valid | test NDCG@10 | Δ test | test Recall@10 | "
        "+ ms / request | + bytes / item | training s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    prev: dict[str, float] | None = None
    for row in data["rows"]:
        v, t = row["valid"]["ndcg@10"], row["test"]["ndcg@10"]
        ranked = "train_s" in row
        dv = f"{v - prev['valid']:+.4f}" if ranked and prev else ""
        dt = f"{t - prev['test']:+.4f}" if ranked and prev else ""
        cost = (
            f"{row['ms_per_request']:.2f} | {row['bytes_per_item']:,.0f} | {row['train_s']:.0f}"
            if ranked
            else " | | "
        )
        lines.append(
            f"| {row['row']} | {v:.4f} | {dv} | {t:.4f} | {dt} | {row['test']['recall@10']:.4f} | {cost} |"
        )
        if ranked:
            prev = {"valid": v, "test": t}
    return lines
