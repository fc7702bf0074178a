"""``python -m training retrain``: the scheduled job. Pull the feedback and catalog changes, train a
candidate, compare it with the production version on the same fresh held-out interactions, and promote
it only if it is not worse. Every run leaves a record of what it measured and why it decided.

Fresh held-out interactions: the newest ``holdout_share`` of the (user, book) pairs that feedback made
positive (training/feedback.py), dated by their first event, on books the catalog serves (not
withdrawn) and not already in the base data, for users with at least one other positive interaction
(a user with none gets the cold-start list from either version). The candidate is trained without them
(every event of a held-out pair is removed); the next run trains on them.

Both versions are measured on the served pipeline in process (runners/stages/pipeline.py: retrieval, ranking
with ONNX Runtime at the service's precision, the same rules, ``exclude_seen``, ``k`` = 10), each user's
history being the version's training history plus that user's remaining feedback, so the two answer
from the same evidence. Metrics: NDCG@10 and Recall@10 over the held-out users; the record also keeps
the paired difference's standard error.

Decision: promote when there is no production version, or when the candidate's NDCG@10 and Recall@10
are each at least production's minus ``max_ndcg_drop`` / ``max_recall_drop``. With fewer than
``min_holdout_pairs`` fresh pairs there is no evidence: production is kept, and no candidate is trained,
unless ``promote_without_evidence``. A candidate stays in the store either way, labelled ``gate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd

from models import registry
from models.events import POSITIVE_RATING, TRENDING_WEIGHTS
from runners.http.schemas import RecommendRequest
from runners.platform.settings import Settings
from runners.stages import served_model
from runners.stages.pipeline import Recommender
from runners.stages.ranking import RankingStage
from runners.state.catalog import CatalogState
from runners.state.local import LocalState
from runners.state.protocol import Event
from training.dataset import Dataset
from training.feedback import apply_feedback
from training.metrics import user_ndcg

log = logging.getLogger(__name__)
K = 10


@dataclass(frozen=True)
class GateConfig:
    holdout_share: float = 0.1
    min_holdout_pairs: int = 20
    max_ndcg_drop: float = 0.005  # absolute NDCG@10
    max_recall_drop: float = 0.005  # absolute Recall@10
    promote_without_evidence: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(f"holdout share must be in (0, 1), got {self.holdout_share}")
        if self.min_holdout_pairs < 1:
            raise ValueError(f"min holdout pairs must be >= 1, got {self.min_holdout_pairs}")
        for name in ("max_ndcg_drop", "max_recall_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Holdout:
    pairs: dict[str, set[str]]  # user id -> held-out book ids
    train_rows: pd.DataFrame  # the feedback rows without any event of a held-out pair

    @property
    def n_pairs(self) -> int:
        return sum(len(b) for b in self.pairs.values())


def fresh_holdout(base: Dataset, rows: pd.DataFrame, withdrawn: frozenset[str], share: float) -> Holdout:
    """The newest positive feedback pairs, held out (module doc)."""
    known = set(base.catalog.item_ids) - withdrawn
    positive = rows[(rows["rating"] >= POSITIVE_RATING) & rows["book_id"].isin(known)]
    if positive.empty:
        return Holdout({}, rows)
    first = positive.groupby(["user_id", "book_id"], sort=False)["timestamp"].min().reset_index()
    inter = base.interactions
    in_base = set(
        zip(
            [inter.user_ids[u] for u in inter.users.tolist()],
            [base.catalog.item_ids[i] for i in inter.items.tolist()],
            strict=True,
        )
    )
    fresh = first[[(u, b) not in in_base for u, b in zip(first["user_id"], first["book_id"], strict=True)]]
    newest = fresh.sort_values("timestamp", kind="stable").tail(math.ceil(share * len(fresh)))
    held = set(zip(newest["user_id"], newest["book_id"], strict=True))
    is_held = pd.Series(
        [(u, b) in held for u, b in zip(rows["user_id"], rows["book_id"], strict=True)], index=rows.index
    )
    train_rows = rows[~is_held]
    remaining = train_rows[train_rows["rating"] >= POSITIVE_RATING]["user_id"].value_counts()
    base_users = {inter.user_ids[u] for u in np.unique(inter.users).tolist()}
    pairs: dict[str, set[str]] = {}
    for u, b in sorted(held):
        if u in base_users or remaining.get(u, 0) > 0:
            pairs.setdefault(u, set()).add(b)
    return Holdout(pairs, train_rows)


@dataclass(frozen=True)
class Quality:
    users: int
    ndcg: float
    recall: float
    per_user_ndcg: list[float]
    per_user_recall: list[float]

    def summary(self) -> dict[str, float | int]:
        return {"users": self.users, "ndcg@10": round(self.ndcg, 6), "recall@10": round(self.recall, 6)}


def served_quality(
    model: bentoml.Model, settings: Settings, holdout: Holdout, catalog: CatalogState
) -> Quality:
    """``model``'s served answers for the held-out users, scored against their held-out books."""
    return asyncio.run(_served_quality(model, settings, holdout, catalog))


async def _served_quality(
    stored: bentoml.Model, settings: Settings, holdout: Holdout, catalog: CatalogState
) -> Quality:
    served = await asyncio.to_thread(served_model.load, stored)
    users = sorted(holdout.pairs)
    ranks: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = LocalState(Path(tmp) / "journal.jsonl")
        events = _events(holdout.train_rows[holdout.train_rows["user_id"].isin(holdout.pairs)])
        await state.append_events(events, [TRENDING_WEIGHTS[e.event] for e in events])
        ranking = RankingStage(
            served.ranker, triton_url=None, default_precision=settings.precision, manage_triton=False
        )
        await ranking.start()
        try:
            pipeline = Recommender(settings, served, state, ranking)
            pipeline.set_catalog(catalog)
            for user in users:
                req = RecommendRequest(user_id=user, k=K, exclude_seen=True)
                response = await pipeline.compute(req, settings.precision, "retrain-gate", "retrain-gate")
                ranks.append([item.item_id for item in response.items])
        finally:
            await ranking.close()
            await state.close()
    hits = np.zeros((len(users), K), dtype=bool)
    for r, (user, ranked) in enumerate(zip(users, ranks, strict=True)):
        hits[r, : len(ranked)] = [b in holdout.pairs[user] for b in ranked[:K]]
    n_pos = np.array([len(holdout.pairs[u]) for u in users])
    ndcg = user_ndcg(hits, n_pos, K) if users else np.zeros(0)
    recall = hits.sum(1) / np.maximum(n_pos, 1)
    return Quality(
        len(users),
        float(ndcg.mean()) if users else 0.0,
        float(recall.mean()) if users else 0.0,
        ndcg.tolist(),
        recall.tolist(),
    )


def _events(rows: pd.DataFrame) -> list[Event]:
    return [
        Event(str(u), str(b), e, float(r) if e == "rate" else None, float(ts))  # Event checks e
        for u, b, r, ts, e in zip(
            rows["user_id"], rows["book_id"], rows["rating"], rows["timestamp"], rows["event"], strict=True
        )
    ]


def _paired(cand: Quality, prod: Quality) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, c, p in (
        ("ndcg@10", cand.per_user_ndcg, prod.per_user_ndcg),
        ("recall@10", cand.per_user_recall, prod.per_user_recall),
    ):
        d = np.asarray(c) - np.asarray(p)
        out[name] = {
            "mean": float(d.mean()),
            "se": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan,
        }
    return out


def decide(
    cand: Quality | None, prod: Quality | None, n_pairs: int, has_production: bool, gate: GateConfig
) -> tuple[bool, list[str]]:
    """(promote?, the reasons)."""
    if not has_production:
        return True, ["no production version: the candidate is the first"]
    if cand is None or prod is None or n_pairs < gate.min_holdout_pairs:
        why = f"no evidence: {n_pairs} fresh held-out pairs (at least {gate.min_holdout_pairs} needed)"
        if gate.promote_without_evidence:
            return True, [why, "promoted anyway (--promote-without-evidence)"]
        return False, [why, "production kept"]
    reasons, ok = [], True
    for name, c, p, drop in (
        ("NDCG@10", cand.ndcg, prod.ndcg, gate.max_ndcg_drop),
        ("Recall@10", cand.recall, prod.recall, gate.max_recall_drop),
    ):
        if c < p - drop:
            ok = False
            reasons.append(f"{name} {c:.4f} is worse than production's {p:.4f} by more than {drop}")
        else:
            reasons.append(f"{name} {c:.4f} vs production {p:.4f} (allowed drop {drop})")
    return ok, reasons


def retrain(
    base: Dataset,
    rows: pd.DataFrame,
    catalog: CatalogState,
    settings: Settings,
    gate: GateConfig,
    train_and_version: Callable[[Dataset], str],
    records: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One scheduled run (module doc). ``train_and_version`` trains on a dataset and returns the stored
    candidate's tag. Writes and returns the record."""
    started = time.time()
    production = registry.production()
    holdout = fresh_holdout(base, rows, catalog.withdrawn, gate.holdout_share)
    log.info("fresh holdout: %d pairs of %d users", holdout.n_pairs, len(holdout.pairs))
    evidence = holdout.n_pairs >= gate.min_holdout_pairs
    cand_q = prod_q = None
    tag: str | None = None
    if production is None or evidence or gate.promote_without_evidence:
        tag = train_and_version(apply_feedback(base, holdout.train_rows))
        candidate = registry.get(tag)
        if production is not None and evidence:
            cand_q = served_quality(candidate, settings, holdout, catalog)
            prod_q = served_quality(production, settings, holdout, catalog)
    promote, reasons = decide(cand_q, prod_q, holdout.n_pairs, production is not None, gate)
    if tag is None:
        reasons.append("no candidate trained: it could not be promoted")
    else:
        registry.set_labels(candidate, gate="promoted" if promote else "rejected")
        if promote:  # after the label: promote rewrites the labels it reads afresh
            registry.promote(tag)
    record = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "candidate": tag,
        "production_before": None if production is None else str(production.tag),
        "production_after": tag if promote else (None if production is None else str(production.tag)),
        "decision": "promoted" if promote else "kept production",
        "reasons": reasons,
        "gate": asdict(gate),
        "holdout": {"pairs": holdout.n_pairs, "users": len(holdout.pairs), "feedback_rows": len(rows)},
        "candidate_quality": None if cand_q is None else cand_q.summary(),
        "production_quality": None if prod_q is None else prod_q.summary(),
        "paired_difference": None if cand_q is None or prod_q is None else _paired(cand_q, prod_q),
        **(extra or {}),
    }
    records.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    path = records / f"retrain-{stamp}-{(tag or 'none').split(':')[-1]}.json"
    path.write_text(json.dumps(record, indent=1))
    log.info("retrain: %s (%s); record %s", record["decision"], "; ".join(reasons), path)
    return record | {"record": str(path)}
