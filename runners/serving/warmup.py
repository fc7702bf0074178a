"""Cache warming: after a version is deployed (start-up, promotion, rollback) and before it takes traffic,
precompute the most active users' default /recommend answers into its result cache, under its keys.

Who: the senders of the newest ``RECENT_EVENTS`` feedback events (the state store's ``active_users``,
most events first: active now), then the version's training users by history size (heaviest readers
first); each routed as their request would be (their A/B variant's precision), keeping those whose
variant this deployment serves, skipping forgotten users. At most FOLIO_WARM_USERS a deployment, and at
most FOLIO_L1_SIZE (more would evict the most active from the in-process cache).

What: the default ``RecommendRequest`` (k=10, exclude_seen, no genre filter: what clients and the load
mix send), through the pipeline's own miss path (``Recommender.fill`` under ``cache_params``), exactly
what ``Recommender.recommend`` does on a miss, minus the lookup. So the keys are
those a request reads, and ``folio_cache_lookups_total`` counts requests only (the warmed lists do
count in the stage latencies, ranking fallbacks "none" and catalog coverage: they are served).

How much: one user at a time on the worker's event loop, at most ``LOOP_SHARE`` of its time (after each
user it sleeps as long as that user took: requests run in between, and the loop never falls behind on
every wake, which admission would shed for: runners/http/admission.py), pausing while admission has no
spare capacity (``Fleet.background_allowed``: under half the in-flight bound), until FOLIO_WARM_BUDGET_S
has passed since it began. Cancellable. It never fails a deploy: a ranking fallback
(not cacheable: Triton is not serving), an unreachable state store (no generation, nothing cacheable) or
any error ends it early, logged and counted (``folio_cache_warm_runs_total{result}``), and the new
version serves cold. With Redis every worker warms its own deployment (the L2 entries are written once
per worker: the same value).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from runners.http.schemas import RecommendRequest
from runners.platform.metrics import CACHE_WARM_RUNS, CACHE_WARM_SECONDS, CACHE_WARM_USERS
from runners.platform.settings import Settings
from runners.serving.deployment import Deployment
from runners.serving.variants import Variant
from runners.stages.pipeline import Recommender, cache_params
from runners.stages.served_model import ServedModel
from runners.state.protocol import StateStore, StateUnavailable

log = logging.getLogger(__name__)
RECENT_EVENTS = 10_000  # feedback events read to find who is active now
PAUSE_S = 0.05  # while the worker is busy
LOOP_SHARE = 0.5  # of the event loop's time, at most
REQUEST_ID = "cache-warming"

Route = Callable[[str], tuple[str, str] | None]  # user -> (precision, variant name); None: not served here


class Stop(Exception):
    """Nothing more can be cached now (the message says why)."""


@dataclass
class WarmReport:
    tag: str
    warmed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    result: str = "complete"  # complete | budget | stopped | failed
    detail: str = ""


def candidates(model: ServedModel, recent: Mapping[str, int]) -> Iterator[str]:
    """Users by activity: recent feedback senders (most events first), then training users by history
    size (ties: the version's order), each once."""
    seen: set[str] = set()
    hist = model.train_histories
    by_recent = sorted(recent, key=lambda u: -recent[u])
    for user in [*by_recent, *sorted(hist, key=lambda u: -len(hist[u]))]:
        if user not in seen:
            seen.add(user)
            yield user


def most_active(
    model: ServedModel, recent: Mapping[str, int], route: Route, n: int
) -> list[tuple[str, str, str]]:
    """The first ``n`` users of `candidates` that ``route`` sends here: (user, precision, variant)."""
    out: list[tuple[str, str, str]] = []
    for user in candidates(model, recent):
        if len(out) >= n:
            break
        if (where := route(user)) is not None:
            out.append((user, *where))
    return out


async def warm_user(pipeline: Recommender, user: str, precision: str, variant: str) -> bool:
    """Compute and cache ``user``'s default answer as ``recommend`` would on a miss. False: skipped (a
    forgotten user, or an id no request can carry); raises Stop when nothing is cacheable now."""
    try:
        req = RecommendRequest(user_id=user)
    except ValidationError:
        return False
    snapshot = await pipeline.read_user(user)
    if snapshot is None:
        raise Stop("the state store is unreachable (no cache generation)")
    if snapshot.forgotten:
        return False
    params = cache_params(req, precision, pipeline.catalog.revision)
    response = await pipeline.fill(req, precision, variant, REQUEST_ID, snapshot, params)
    if response.fallback != "none":  # not cached, as on a request
        raise Stop(f"ranking fell back to {response.fallback}")
    return True


async def warm_pipeline(
    pipeline: Recommender,
    targets: list[tuple[str, str, str]],
    deadline: float,
    allowed: Callable[[], bool],
) -> WarmReport:
    """Warm ``targets`` (user, precision, variant) in order until ``deadline`` (time.monotonic)."""
    report = WarmReport(pipeline.model.tag)
    start = time.monotonic()
    try:
        for user, precision, variant in targets:
            while not allowed() and time.monotonic() < deadline:
                await asyncio.sleep(PAUSE_S)
            if time.monotonic() >= deadline:
                report.result = "budget"
                break
            took = time.monotonic()
            if await warm_user(pipeline, user, precision, variant):
                report.warmed += 1
            else:
                report.skipped += 1
            took = time.monotonic() - took
            await asyncio.sleep(took * (1 - LOOP_SHARE) / LOOP_SHARE)  # requests go first
    except Stop as exc:
        report.result, report.detail = "stopped", str(exc)
    except Exception as exc:  # never fails the deploy
        report.result, report.detail = "failed", repr(exc)
        log.exception("cache warming of %s failed", report.tag)
    report.seconds = time.monotonic() - start
    return report


async def warm_deployments(
    deployments: Mapping[str, Deployment],
    assign: Callable[[str], Variant],
    state: StateStore,
    settings: Settings,
    allowed: Callable[[], bool],
) -> list[WarmReport]:
    """Warm each deployment (model spec -> deployment) for the users its variants serve, within one
    FOLIO_WARM_BUDGET_S from now. Never raises (but is cancellable)."""
    n = settings.warm_users if settings.l1_size <= 0 else min(settings.warm_users, settings.l1_size)
    if n <= 0 or settings.cache_ttl_s <= 0:
        return []
    start = time.monotonic()
    deadline = start + settings.warm_budget_s
    try:
        recent = await state.active_users(RECENT_EVENTS)
    except StateUnavailable as exc:  # training histories only
        log.warning("cache warming: recent feedback unknown (%s): warming training users only", exc)
        recent = {}
    reports = []
    for spec, dep in deployments.items():

        def route(user: str, spec: str = spec) -> tuple[str, str] | None:
            v = assign(user)
            return (v.precision, v.name) if v.model == spec else None

        try:
            targets = await asyncio.to_thread(most_active, dep.model, recent, route, n)
            report = await warm_pipeline(dep.pipeline, targets, deadline, allowed)
        except Exception as exc:  # choosing the users failed: serve cold
            log.exception("cache warming of %s failed", dep.tag)
            report = WarmReport(dep.tag, result="failed", detail=repr(exc))
        CACHE_WARM_USERS.labels(outcome="warmed").inc(report.warmed)
        CACHE_WARM_USERS.labels(outcome="skipped").inc(report.skipped)
        CACHE_WARM_RUNS.labels(result=report.result).inc()
        log.log(
            logging.INFO if report.result in ("complete", "budget") else logging.WARNING,
            "cache warming of %s: %d users warmed, %d skipped in %.1f s (%s%s)",
            report.tag,
            report.warmed,
            report.skipped,
            report.seconds,
            report.result,
            f": {report.detail}" if report.detail else "",
        )
        reports.append(report)
    CACHE_WARM_SECONDS.set(time.monotonic() - start)
    return reports
