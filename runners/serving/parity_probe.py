"""The deploy smoke test: does each ranker precision of a loaded version rank like its FP32 reference?

A fixed probe set (``PROBE_USERS`` training users with a real history, spread over the user ids, and
their retrieval candidates: the inputs the served path builds) is scored at every precision through the
ranking stage (Triton when it is up) and by the in-process FP32 ranker. A precision is refused when

* it does not score (finite scores of the right shape), or
* through Triton, FP32 differs from the in-process FP32 (a Triton serving another version's rankers), or
* its top-10 agreement with FP32 is below what the export measured on validation
  (``parity.top10_agreement``) minus ``AGREEMENT_MARGIN`` (``AGREEMENT_FLOOR`` when none was recorded), or
* its scores drift from FP32's by more than ``SCORE_TOLERANCE`` standard deviations (mean per user).

A ranker file whose weights were overwritten still loads and scores finite numbers; these checks are
what refuse it (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.version import PRECISIONS, Precision
from runners.stages.ranking import RankingStage
from runners.stages.retrieval import RetrievalStage, Retrieved
from runners.stages.served_model import ServedModel

PROBE_USERS = 32
MIN_HISTORY = 5
TOP_K = 10
AGREEMENT_MARGIN = 0.10
AGREEMENT_FLOOR = 0.70
SCORE_TOLERANCE = 0.25
TRITON_FP32_TOLERANCE = 1e-2


@dataclass(frozen=True)
class PrecisionReport:
    precision: Precision
    fallback: str  # how the probe was scored: "none" (Triton), "onnxruntime" or "popularity"
    agreement: float  # mean top-10 overlap with FP32
    score_drift: float  # mean over users of mean |s - s_fp32| / std(s_fp32)
    triton_fp32_diff: float | None  # FP32 only, through Triton: max |s - in-process s|


def probe_set(model: ServedModel) -> list[Retrieved]:
    """Candidates of up to PROBE_USERS training users (deterministic for a version)."""
    users = sorted(u for u, h in model.train_histories.items() if h.size >= MIN_HISTORY)
    if not users:
        return []
    picks = [users[i] for i in np.unique(np.linspace(0, len(users) - 1, PROBE_USERS).astype(int))]
    retrieval = RetrievalStage(model)
    probes = []
    for user in picks:
        history = model.train_histories[user]
        cands = retrieval.candidates(history, model.train_ratings[user], model.candidates, history)
        if cands.items.size > TOP_K:
            probes.append(cands)
    return probes


def _top(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:TOP_K]


async def measure(ranking: RankingStage, probes: list[Retrieved]) -> list[PrecisionReport]:
    reference = [ranking.score_in_process("fp32", p.items, p.user_row, p.features) for p in probes]
    reports = []
    for precision in PRECISIONS:
        agree, drift, fallbacks, triton_diff = [], [], set(), 0.0
        for probe, ref in zip(probes, reference, strict=True):
            result = await ranking.rank(probe.items, probe.user_row, probe.features, precision)
            fallbacks.add(result.fallback)
            scores = result.scores
            if scores is None or scores.shape != ref.shape or not np.isfinite(scores).all():
                agree.append(0.0)
                drift.append(np.inf)
                continue
            agree.append(np.intersect1d(_top(scores), _top(ref)).size / TOP_K)
            drift.append(float(np.abs(scores - ref).mean() / max(float(ref.std()), 1e-6)))
            if precision == "fp32" and result.fallback == "none":
                triton_diff = max(triton_diff, float(np.abs(scores - ref).max()))
        worst = next((f for f in ("popularity", "onnxruntime") if f in fallbacks), "none")
        reports.append(
            PrecisionReport(
                precision,
                worst,
                float(np.mean(agree)),
                float(np.mean(drift)),
                triton_diff if precision == "fp32" and "none" in fallbacks else None,
            )
        )
    return reports


def problems(reports: list[PrecisionReport], parity: Any, triton_url: object) -> list[str]:
    """Why the version must not serve (empty: every precision ranks like FP32)."""
    recorded = parity.get("top10_agreement", {}) if isinstance(parity, dict) else {}
    found = []
    for r in reports:
        if r.fallback == "popularity" or not np.isfinite(r.score_drift):
            found.append(f"the {r.precision} ranker does not score ({r.fallback})")
            continue
        if r.triton_fp32_diff is not None and r.triton_fp32_diff > TRITON_FP32_TOLERANCE:
            found.append(
                f"Triton at {triton_url} serves other rankers (max score difference "
                f"{r.triton_fp32_diff:.3g}); render its repository from this version"
            )
        stored = recorded.get(r.precision)
        floor = float(stored) - AGREEMENT_MARGIN if isinstance(stored, int | float) else AGREEMENT_FLOOR
        if r.agreement < floor:
            found.append(
                f"the {r.precision} ranker disagrees with fp32: top-{TOP_K} agreement {r.agreement:.2f} "
                f"on the probe set, below {floor:.2f} (export measured {stored})"
            )
        if r.score_drift > SCORE_TOLERANCE:
            found.append(
                f"the {r.precision} ranker's scores drift from fp32 by {r.score_drift:.2f} standard "
                f"deviations on the probe set (tolerance {SCORE_TOLERANCE})"
            )
    return found
