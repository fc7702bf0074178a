"""Folio's Prometheus metrics (``folio_*``), registered through ``bentoml.metrics`` so they are
exported on BentoML's own ``/metrics`` next to its request metrics, in every worker."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

import bentoml

from runners.platform import tracing

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# BentoML's request histogram (bentoml_service_request_duration_seconds): 0.2 is the P95 SLO's bound
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STAGE_SECONDS = bentoml.metrics.Histogram(
    name="folio_stage_seconds",
    documentation="Latency of one serving stage (cache, history, retrieval, ranking, rules, feedback)",
    labelnames=["stage"],
    buckets=_LATENCY_BUCKETS,
)
CACHE = bentoml.metrics.Counter(
    name="folio_cache_lookups",
    documentation="Result cache lookups by level and outcome",
    labelnames=["level", "outcome"],
)
FALLBACKS = bentoml.metrics.Counter(
    name="folio_ranking_fallbacks",
    documentation="Recommendations served by a fallback",
    labelnames=["fallback"],
)
COLD_STARTS = bentoml.metrics.Counter(name="folio_cold_starts", documentation="Cold-start recommendations")
TRITON_ERRORS = bentoml.metrics.Counter(
    name="folio_triton_errors", documentation="Failed or refused Triton calls"
)
TRITON_RESTARTS = bentoml.metrics.Counter(
    name="folio_triton_restarts", documentation="Restarts of the embedded tritonserver"
)
RANKING_EVENTS = bentoml.metrics.Counter(
    name="folio_ranking_events",
    documentation="Ranking stage events: triton_error, breaker_open, restart, start_failure, fallback_*",
    labelnames=["event"],
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="folio_ranking_candidates",
    documentation="Candidates per ranking call",
    buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
)
MODEL_AGE = bentoml.metrics.Gauge(
    name="folio_model_age_seconds",
    documentation="Seconds since the served version was trained (budget: FOLIO_MODEL_MAX_AGE_S)",
)
CATALOG_REVISION = bentoml.metrics.Gauge(
    name="folio_catalog_revision",
    documentation="Catalog revision this worker serves (runners/state/catalog.py)",
)
CATALOG_WITHDRAWN = bentoml.metrics.Gauge(
    name="folio_catalog_withdrawn_items", documentation="Books withdrawn from the catalog"
)
STATE_ERRORS = bentoml.metrics.Counter(
    name="folio_state_unavailable",
    documentation="Calls that found the state store (Redis) unreachable",
    labelnames=["op"],
)
FEEDBACK_EVENTS = bentoml.metrics.Counter(
    name="folio_feedback_events",
    documentation="Feedback events durably accepted, by the A/B variant serving the user",
    labelnames=["event", "variant"],
)
VARIANT_REQUESTS = bentoml.metrics.Counter(
    name="folio_variant_requests",
    documentation="Recommendations served per A/B variant",
    labelnames=["variant"],
)
VARIANT_IMPRESSIONS = bentoml.metrics.Counter(
    name="folio_variant_impressions",
    documentation="Items recommended per A/B variant (click-through = feedback clicks / impressions)",
    labelnames=["variant"],
)
VARIANT_SECONDS = bentoml.metrics.Histogram(
    name="folio_variant_seconds",
    documentation="/recommend latency per A/B variant",
    labelnames=["variant"],
    buckets=_LATENCY_BUCKETS,
)
SHADOW_AGREEMENT = bentoml.metrics.Histogram(
    name="folio_shadow_agreement",
    documentation="Share of the served top-k that a shadow variant also ranks in its top-k",
    labelnames=["variant"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
MODEL_RELOADS = bentoml.metrics.Counter(
    name="folio_model_reloads", documentation="Hot model reloads by outcome", labelnames=["outcome"]
)
RATE_LIMITED = bentoml.metrics.Counter(name="folio_rate_limited", documentation="Requests refused with 429")
AUTH_FAILURES = bentoml.metrics.Counter(name="folio_auth_failures", documentation="Requests refused with 401")
BODY_REFUSALS = bentoml.metrics.Counter(
    name="folio_body_refusals",
    documentation="Requests refused for their body: 413 (too large), 415 (not JSON)",
    labelnames=["status"],
)
HEAD_TIMEOUTS = bentoml.metrics.Counter(
    name="folio_request_head_timeouts",
    documentation="Connections closed for not sending a complete request head in time",
)
STATE_BUSY = bentoml.metrics.Counter(
    name="folio_state_busy",
    documentation="State-store calls that found every pooled Redis connection busy past the wait deadline "
    "(StateBusy: Redis reachable, this worker saturated; not counted by the breaker), by RedisState method",
    labelnames=["op"],
)
STATE_BREAKER = bentoml.metrics.Counter(
    name="folio_state_breaker_events",
    documentation="State-store circuit breaker: opened, closed (a probe succeeded), refused (a call failed "
    "at once while open)",
    labelnames=["event"],
)

SHED = bentoml.metrics.Counter(
    name="folio_requests_shed",
    documentation="Requests refused with 503 + Retry-After at once: the worker was at its in-flight bound "
    "(reason in_flight) or its event loop ran late (loop_lag)",
    labelnames=["route", "reason"],
)
IN_FLIGHT = bentoml.metrics.Gauge(
    name="folio_requests_in_flight", documentation="Requests this worker is serving now (admitted)"
)

# Operations (docs/operations.md): what the SLO dashboards and alerts read. Gauges are per worker
# ("live*" modes drop a dead worker's series); counters sum over workers.
RECOMMENDATIONS = bentoml.metrics.Counter(
    name="folio_recommendations",
    documentation="/recommend answers by source: cache (a hit), ranked, cold_start, fallback (Triton "
    "unavailable: in-process ONNX or popularity)",
    labelnames=["variant", "source"],
)
RECOMMENDATION_SOURCES = ("cache", "ranked", "cold_start", "fallback")
FEEDBACK_WRITE_ERRORS = bentoml.metrics.Counter(
    name="folio_feedback_write_errors",
    documentation="Feedback writes refused because the state store failed: unavailable or busy",
    labelnames=["reason"],
)
MODEL_INFO = bentoml.metrics.Gauge(
    name="folio_model_info",
    documentation="1 for the version and precision each A/B variant serves now (0: served before)",
    labelnames=["variant", "model_version", "precision"],
    multiprocess_mode="liveall",
)
MODEL_PROMOTION_AGE = bentoml.metrics.Gauge(
    name="folio_model_promotion_age_seconds",
    documentation="Seconds since the served version was promoted (since trained when never promoted)",
    multiprocess_mode="livemax",
)
MODEL_MAX_AGE = bentoml.metrics.Gauge(
    name="folio_model_max_age_seconds",
    documentation="Freshness budget of the served version (FOLIO_MODEL_MAX_AGE_S)",
    multiprocess_mode="livemax",
)
COVERAGE = bentoml.metrics.Gauge(
    name="folio_catalog_coverage_ratio",
    documentation="Share of the servable catalog in at least one computed /recommend answer of this worker "
    "over the last FOLIO_COVERAGE_WINDOW_S",
    multiprocess_mode="liveall",
)
TRITON_UP = bentoml.metrics.Gauge(
    name="folio_triton_up",
    documentation="1 when every ranking stage of this worker reaches a ready Triton with its breaker closed",
    multiprocess_mode="liveall",
)
STATE_UP = bentoml.metrics.Gauge(
    name="folio_state_up",
    documentation="1 when the state store answered this worker's last ping",
    multiprocess_mode="liveall",
)
# Triton's own times (its metrics endpoint, scraped by the worker that owns an embedded server): counters
# fed by the differences between scrapes (runners/triton/metrics.py).
TRITON_QUEUE = bentoml.metrics.Counter(
    name="folio_triton_queue_seconds",
    documentation="Seconds requests waited in Triton's scheduler queue (dynamic batching)",
    labelnames=["model"],
)
TRITON_COMPUTE = bentoml.metrics.Counter(
    name="folio_triton_compute_seconds",
    documentation="Seconds Triton spent computing (input, inference, output)",
    labelnames=["model"],
)
TRITON_INFERENCES = bentoml.metrics.Counter(
    name="folio_triton_inferences",
    documentation="Requests Triton completed successfully",
    labelnames=["model"],
)
TRITON_EXECUTIONS = bentoml.metrics.Counter(
    name="folio_triton_executions",
    documentation="Model executions (batches) Triton ran",
    labelnames=["model"],
)


def preset_series(variants: list[str]) -> None:
    """Create every labelled series the dashboards and alerts read at 0, so a query sees it before the
    first event (a counter that was never incremented is otherwise absent)."""
    for variant in variants:
        for source in RECOMMENDATION_SOURCES:
            RECOMMENDATIONS.labels(variant=variant, source=source)
        VARIANT_REQUESTS.labels(variant=variant)
        VARIANT_IMPRESSIONS.labels(variant=variant)
        FEEDBACK_EVENTS.labels(event="click", variant=variant)
    for reason in ("unavailable", "busy"):
        FEEDBACK_WRITE_ERRORS.labels(reason=reason)
    for op in ("user", "trending", "catalog", "rate_limit", "ping", "cache_get", "cache_put"):
        STATE_ERRORS.labels(op=op)
    for level in ("l1", "l2"):
        for outcome in ("hit", "miss"):
            CACHE.labels(level=level, outcome=outcome)
    for reason in ("in_flight", "loop_lag"):
        SHED.labels(route="/recommend", reason=reason)
    for outcome in ("swapped", "refused"):
        MODEL_RELOADS.labels(outcome=outcome)
    COLD_STARTS.inc(0)
    TRITON_ERRORS.inc(0)


# Cache warming after a deploy (runners/serving/warmup.py).
CACHE_WARM_USERS = bentoml.metrics.Counter(
    name="folio_cache_warm_users",
    documentation="Users whose default /recommend answer a warming precomputed into a new version's cache "
    "(warmed), or passed over (skipped: forgotten, or an id no request can carry)",
    labelnames=["outcome"],
)
CACHE_WARM_RUNS = bentoml.metrics.Counter(
    name="folio_cache_warm_runs",
    documentation="Cache warmings by how they ended: complete, budget (FOLIO_WARM_BUDGET_S ran out), stopped "
    "(ranking fell back or the state store was unreachable: nothing cacheable), failed (an error)",
    labelnames=["result"],
)
CACHE_WARM_SECONDS = bentoml.metrics.Gauge(
    name="folio_cache_warm_seconds",
    documentation="How long this worker's last cache warming ran",
    multiprocess_mode="livemax",
)

# When set (a dict), `timed` also adds each stage's seconds to it: per-request breakdowns for scripts.
STAGE_TRACE: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "folio_trace", default=None
)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """The stage's latency into ``folio_stage_seconds`` (and STAGE_TRACE), and a span named after the stage
    when the request is traced (runners/platform/tracing.py; nothing more is done when it is not)."""
    opened = tracing.start(stage)
    error: BaseException | None = None
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        seconds = time.perf_counter() - start
        STAGE_SECONDS.labels(stage=stage).observe(seconds)
        if (trace := STAGE_TRACE.get()) is not None:
            trace[stage] = trace.get(stage, 0.0) + seconds
        if opened is not None:
            tracing.end(opened, error)


def ranking_event(name: str, value: float) -> None:
    """`RankingStage(on_event=...)`: every event of the ranking stage as Prometheus metrics (the Triton
    call's latency as a stage histogram, the others counted by name: a breaker opening included)."""
    if name == "triton_latency_s":
        STAGE_SECONDS.labels(stage="triton_call").observe(value)
        return
    RANKING_EVENTS.labels(event=name).inc()
    if name == "triton_error":
        TRITON_ERRORS.inc()
    elif name == "restart":
        TRITON_RESTARTS.inc()
