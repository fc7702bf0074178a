"""Folio's Grafana dashboard (deploy/grafana/folio.json), written from the panel list below.

    python deploy/grafana/build_dashboard.py           # rewrite folio.json
    python deploy/grafana/build_dashboard.py --check   # exit 1 when the committed JSON differs

Grafana JSON model, schemaVersion 39: import it (Dashboards > New > Import) or provision the file; the
`DS_PROMETHEUS` variable picks the Prometheus data source. Queries use only metrics Folio exports
(docs/operations.md), plus `up` and, for an external Triton scraped by Prometheus itself, Triton's
`nv_*` counters as the `or` branch of the Triton panels. tests/unit/deploy/test_dashboard.py checks the
committed JSON against this script; tests/integration/test_prometheus.py runs every query against a real
Prometheus scraping a real `bentoml serve` and fails on an error or a metric name nobody exports.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "folio.json"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RATE = "$__rate_interval"
# The API routes: everything BentoML counts except health, metrics and docs (/readyz answers 503 on
# purpose while a worker drains). The same filter as deploy/prometheus/folio-rules.yml.
API = 'endpoint!~"/|/livez|/readyz|/healthz|/metrics|/docs.json"'
WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "table" (instant queries, one row per series)
    width: int = 8
    height: int = 8
    threshold: float | None = None  # drawn as a red line (an SLO or an alert's threshold)
    runbook: tuple[str, ...] = ()  # alert names: links to their runbook sections
    stacked: bool = False
    max: float | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(" ".join(expr.split()), legend, instant)


def rate(selector: str) -> str:
    return f"rate({selector}[{RATE}])"


def quantile(p: float, by: str, histogram: str) -> str:
    """``histogram_quantile`` of a histogram (its name without ``_bucket``, with its selector) by ``by``."""
    name, brace, rest = histogram.partition("{")
    return f"histogram_quantile({p}, sum by ({by}) ({rate(name + '_bucket' + brace + rest)}))"


def share(numerator: str, denominator: str) -> str:
    return f"({numerator}) / ({denominator})"


REQUESTS = f"bentoml_service_request_total{{{API}}}"
ERRORS = f'bentoml_service_request_total{{{API},http_response_code=~"5.."}}'
API_REQUESTS = f"sum({rate(REQUESTS)})"
SHED = f"(sum({rate('folio_requests_shed_total')}) or vector(0))"
API_5XX = f"(sum({rate(ERRORS)}) or vector(0))"
FALLBACKS = 'folio_ranking_fallbacks_total{fallback!="none"}'
HITS = 'folio_cache_lookups_total{outcome="hit"}'
LOOKUPS = 'folio_cache_lookups_total{level="l1"}'  # every lookup starts at L1
CLICKS = 'folio_feedback_events_total{event="click"}'


def burn(window: str) -> str:
    """The error ratio over ``window`` divided by the 0.1 % budget (1: spending exactly the budget)."""
    shed = f"(sum(rate(folio_requests_shed_total[{window}])) or vector(0))"
    return (
        f"((sum(rate({ERRORS}[{window}])) or vector(0)) + {shed})"
        f" / (sum(rate({REQUESTS}[{window}])) + {shed}) / 0.001"
    )


def quantiles(histogram: str, by: str) -> tuple[Query, ...]:
    return tuple(
        q(quantile(p, f"le, {by}", histogram), f"{{{{{by}}}}} p{round(p * 100)}") for p in (0.5, 0.95, 0.99)
    )


def triton_per_inference(folio_metric: str, nv_metrics: tuple[str, ...]) -> str:
    """Seconds per inference from Folio's re-export of an embedded Triton, or else (`or`) from the
    `nv_*` counters of an external Triton scraped directly (microseconds)."""
    folio = (
        f"sum by (model) ({rate(folio_metric)}) / sum by (model) ({rate('folio_triton_inferences_total')})"
    )
    nv_sum = " + ".join(f"sum by (model) ({rate(m)})" for m in nv_metrics)
    nv = f"({nv_sum}) / 1e6 / sum by (model) ({rate('nv_inference_request_success')})"
    return f"({folio}) or ({nv})"


def by(labels: str, selector: str) -> str:
    """``sum by (labels) (rate(selector))``."""
    return f"sum by ({labels}) ({rate(selector)})"


ROWS = (
    Row(
        "Traffic and SLOs",
        (
            Panel(
                "Request rate by endpoint",
                "API requests per second by route (BentoML), and the requests admission control shed with "
                "503 before BentoML saw them.",
                (
                    q(by("endpoint", REQUESTS), "{{endpoint}}"),
                    q(f"sum({rate('folio_requests_shed_total')})", "shed (503)"),
                ),
                unit="reqps",
            ),
            Panel(
                "Latency p50 / p95 / p99 by endpoint",
                "Server-side latency of each API route (BentoML's histogram; buckets at 100 and 250 ms, so "
                "values between are interpolated). SLO: /recommend P95 under 200 ms.",
                quantiles(f"bentoml_service_request_duration_seconds{{{API}}}", "endpoint"),
                unit="s",
                threshold=0.2,
                runbook=("FolioRecommendLatencyHigh",),
            ),
            Panel(
                "Error rate (5xx + shed)",
                "Share of API requests answered 5xx or shed with 503. SLO: under 0.1 %.",
                (q(share(f"{API_5XX} + {SHED}", f"{API_REQUESTS} + {SHED}"), "errors"),),
                unit="percentunit",
                threshold=0.001,
                runbook=("FolioErrorRateHigh",),
            ),
            Panel(
                "Error budget burn rate (99.9 % availability)",
                "Error ratio divided by the 0.1 % budget: 1 spends the 30-day budget in 30 days. Pages at "
                "14.4 (1 h and 5 min windows), warns at 6 (6 h and 30 min).",
                (q(burn("1h"), "1h"), q(burn("5m"), "5m"), q(burn("6h"), "6h")),
                threshold=14.4,
                runbook=("FolioErrorBudgetBurnFast", "FolioErrorBudgetBurnSlow"),
            ),
            Panel(
                "5xx by endpoint and code",
                "Which routes fail, and how.",
                (q(by("endpoint, http_response_code", ERRORS), "{{endpoint}} {{http_response_code}}"),),
                unit="reqps",
            ),
            Panel(
                "Targets up",
                "1 per Folio replica Prometheus scrapes successfully (job folio).",
                (q('up{job="folio"}', "{{instance}}"),),
                max=1,
                runbook=("FolioDown",),
            ),
        ),
    ),
    Row(
        "Cache and ranking",
        (
            Panel(
                "Cache hit rate",
                "Share of result-cache lookups answered from L1 (in-process) or L2 (Redis). SLO: over 85 %.",
                (
                    q(
                        share(
                            f"sum({rate(HITS)})",
                            f"sum({rate(LOOKUPS)})",
                        ),
                        "hit rate",
                    ),
                    q(
                        share(
                            by("level", HITS),
                            by("level", "folio_cache_lookups_total"),
                        ),
                        "{{level}} hit rate",
                    ),
                ),
                unit="percentunit",
                threshold=0.85,
                max=1,
                runbook=("FolioCacheHitRateLow",),
            ),
            Panel(
                "Answers by source (cold-start and fallback share)",
                "Where each /recommend answer came from: cache, ranked, cold_start (too little history: "
                "trending by genre), fallback (ranked without Triton).",
                (
                    q(
                        f"{by('source', 'folio_recommendations_total')} / ignoring (source) group_left () "
                        f"sum({rate('folio_recommendations_total')})",
                        "{{source}}",
                    ),
                ),
                unit="percentunit",
                stacked=True,
                max=1,
            ),
            Panel(
                "Ranking fallbacks (share of ranked)",
                "Share of ranked recommendations not ranked by Triton: onnxruntime (the same model in the "
                "worker) or popularity.",
                (
                    q(
                        f"{by('fallback', FALLBACKS)} / ignoring (fallback) group_left () "
                        f"sum({rate('folio_ranking_fallbacks_total')})",
                        "{{fallback}}",
                    ),
                ),
                unit="percentunit",
                threshold=0.05,
                runbook=("FolioRankingFallbackHigh", "FolioTritonDown"),
            ),
            Panel(
                "Catalog coverage",
                "Share of the catalog recommended at least once over FOLIO_COVERAGE_WINDOW_S, per worker. "
                "A fall means the recommender collapses onto fewer books.",
                (q("avg by (instance) (folio_catalog_coverage_ratio)", "{{instance}}"),),
                unit="percentunit",
                max=1,
            ),
            Panel(
                "Cold starts and fallbacks per second",
                "Cold-start answers, and ranking fallbacks by kind.",
                (
                    q(f"sum({rate('folio_cold_starts_total')})", "cold start"),
                    q(by("fallback", FALLBACKS), "fallback {{fallback}}"),
                ),
                unit="reqps",
            ),
            Panel(
                "Candidates per ranking call",
                "How many candidates retrieval hands to the ranker (p50 / p95).",
                (
                    q(quantile(0.5, "le", "folio_ranking_candidates"), "p50"),
                    q(quantile(0.95, "le", "folio_ranking_candidates"), "p95"),
                ),
            ),
        ),
    ),
    Row(
        "Pipeline stages",
        (
            Panel(
                "Stage latency p95",
                "cache, history, retrieval (with ann_search, the FAISS search inside it), ranking (with "
                "triton_call), rules, feedback.",
                (q(quantile(0.95, "le, stage", "folio_stage_seconds"), "{{stage}}"),),
                unit="s",
                width=12,
                runbook=("FolioRecommendLatencyHigh",),
            ),
            Panel(
                "Stage latency p99",
                "The slowest 1 % of each stage.",
                (q(quantile(0.99, "le, stage", "folio_stage_seconds"), "{{stage}}"),),
                unit="s",
                width=12,
            ),
        ),
    ),
    Row(
        "Triton",
        (
            Panel(
                "Triton reachable (per worker)",
                "1 when every ranking stage of the worker reaches a ready Triton with its breaker closed.",
                (q("min by (instance, pid) (folio_triton_up)", "{{instance}} pid {{pid}}"),),
                max=1,
                runbook=("FolioTritonDown",),
            ),
            Panel(
                "Triton queue and compute time per inference",
                "Seconds a request waited in Triton's dynamic-batching queue, and computed, per inference "
                "(embedded Triton: folio_triton_*; an external one scraped by Prometheus: nv_*).",
                (
                    q(
                        triton_per_inference(
                            "folio_triton_queue_seconds_total", ("nv_inference_queue_duration_us",)
                        ),
                        "queue {{model}}",
                    ),
                    q(
                        triton_per_inference(
                            "folio_triton_compute_seconds_total",
                            (
                                "nv_inference_compute_input_duration_us",
                                "nv_inference_compute_infer_duration_us",
                                "nv_inference_compute_output_duration_us",
                            ),
                        ),
                        "compute {{model}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Triton batching and errors",
                "Inferences per execution (the dynamic batch size), failed Triton calls and restarts of the "
                "embedded server per second, ranking events.",
                (
                    q(
                        f"({by('model', 'folio_triton_inferences_total')} "
                        f"/ {by('model', 'folio_triton_executions_total')}) "
                        f"or ({by('model', 'nv_inference_request_success')} "
                        f"/ {by('model', 'nv_inference_exec_count')})",
                        "batch {{model}}",
                    ),
                    q(f"sum({rate('folio_triton_errors_total')})", "errors/s"),
                    q(f"sum({rate('folio_triton_restarts_total')})", "restarts/s"),
                    q(by("event", "folio_ranking_events_total"), "{{event}}/s"),
                ),
                runbook=("FolioTritonDown",),
            ),
        ),
    ),
    Row(
        "State store and feedback",
        (
            Panel(
                "State store reachable (per worker)",
                "1 when the state store (Redis, or the local journal) answered the worker's last ping.",
                (q("min by (instance, pid) (folio_state_up)", "{{instance}} pid {{pid}}"),),
                max=1,
                runbook=("FolioStateStoreDown",),
            ),
            Panel(
                "State-store errors and busy calls",
                "Calls that found the store unreachable, or every pooled connection busy (503 to the "
                "client), by operation; breaker events.",
                (
                    q(by("op", "folio_state_unavailable_total"), "unavailable {{op}}"),
                    q(by("op", "folio_state_busy_total"), "busy {{op}}"),
                    q(by("event", "folio_state_breaker_events_total"), "breaker {{event}}"),
                ),
                unit="ops",
                runbook=("FolioStateStoreErrors",),
            ),
            Panel(
                "Feedback accepted and refused",
                "Feedback events durably written, by event; writes refused because the store failed.",
                (
                    q(by("event", "folio_feedback_events_total"), "{{event}}"),
                    q(by("reason", "folio_feedback_write_errors_total"), "refused {{reason}}"),
                ),
                unit="ops",
                runbook=("FolioFeedbackWriteErrors",),
            ),
        ),
    ),
    Row(
        "Model",
        (
            Panel(
                "Served versions",
                "What each A/B variant serves now (folio_model_info == 1), per replica.",
                (
                    q(
                        "max by (instance, variant, model_version, precision) (folio_model_info) == 1",
                        instant=True,
                    ),
                ),
                kind="table",
                runbook=("FolioModelReloadRefused",),
            ),
            Panel(
                "Model age against its budget",
                "Seconds since the served version was trained and since it was promoted; the freshness "
                "budget FOLIO_MODEL_MAX_AGE_S (24 h by default).",
                (
                    q("max(folio_model_age_seconds)", "since trained"),
                    q("max(folio_model_promotion_age_seconds)", "since promoted"),
                    q("min(folio_model_max_age_seconds)", "budget"),
                ),
                unit="s",
                runbook=("FolioModelStale",),
            ),
            Panel(
                "Model reloads",
                "Versions swapped in, and versions refused (the reason is in /info last_reload_error).",
                (q(f"sum by (outcome) (increase(folio_model_reloads_total[{RATE}]))", "{{outcome}}"),),
                runbook=("FolioModelReloadRefused",),
            ),
        ),
    ),
    Row(
        "A/B variants",
        (
            Panel(
                "Click-through by variant",
                "Feedback clicks divided by items recommended, per variant.",
                (
                    q(
                        f"{by('variant', CLICKS)} / {by('variant', 'folio_variant_impressions_total')}",
                        "{{variant}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "Requests by variant",
                "/recommend answers per second, per variant.",
                (q(by("variant", "folio_variant_requests_total"), "{{variant}}"),),
                unit="reqps",
            ),
            Panel(
                "/recommend p95 by variant",
                "Latency per variant (the pipeline, without HTTP).",
                (q(quantile(0.95, "le, variant", "folio_variant_seconds"), "{{variant}}"),),
                unit="s",
            ),
        ),
    ),
    Row(
        "Overload and protection",
        (
            Panel(
                "Shed requests",
                "Requests refused with 503 + Retry-After by admission control, by route and reason "
                "(in_flight: the worker was full; loop_lag: its event loop ran late).",
                (q(by("route, reason", "folio_requests_shed_total"), "{{route}} {{reason}}"),),
                unit="reqps",
                runbook=("FolioErrorRateHigh",),
            ),
            Panel(
                "Requests in flight",
                "Requests each worker is serving now.",
                (q("sum by (instance) (folio_requests_in_flight)", "{{instance}}"),),
            ),
            Panel(
                "Refused: rate limit and authentication",
                "429 (per-client rate limit) and 401 (missing or wrong API key) per second.",
                (
                    q(f"sum({rate('folio_rate_limited_total')})", "429 rate limited"),
                    q(f"sum({rate('folio_auth_failures_total')})", "401 auth"),
                ),
                unit="reqps",
            ),
        ),
    ),
)


def anchor(alert: str) -> str:
    """The runbook section of an alert: docs/operations.md has a heading named after each alert."""
    return alert.lower()


def _target(ref: str, query: Query, kind: str) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": query.expr}
    if kind == "table":
        target |= {"format": "table", "instant": True, "range": False}
    else:
        target |= {"legendFormat": query.legend or "__auto", "range": True}
    return target


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if panel.threshold is not None:
        steps.append({"color": "red", "value": panel.threshold})
    defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if panel.max is not None:
        defaults |= {"min": 0, "max": panel.max}
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
    }
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stacked else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.threshold is not None else "off"},
        }
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        out["options"] = {"showHeader": True, "cellHeight": "sm"}
        out["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}},
        ]
    out["fieldConfig"] = {"defaults": defaults, "overrides": []}
    out["targets"] = [_target(chr(ord("A") + i), query, panel.kind) for i, query in enumerate(panel.queries)]
    if panel.runbook:
        out["links"] = [
            {"title": f"Runbook: {alert}", "url": f"${{runbook}}#{anchor(alert)}", "targetBlank": True}
            for alert in panel.runbook
        ]
    return out


def panels() -> list[dict[str, Any]]:
    """Rows and their panels, laid out left to right and wrapped at Grafana's 24 columns."""
    out: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in ROWS:
        out.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y, x, row_height = next_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            out.append(_panel(panel, next_id, x, y))
            next_id, x, row_height = next_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return out


def dashboard() -> dict[str, Any]:
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "uid": "folio",
        "title": "Folio",
        "description": "Folio's SLOs, pipeline stages, Triton, state store, model and A/B variants "
        "(generated by deploy/grafana/build_dashboard.py; runbook: docs/operations.md).",
        "tags": ["folio", "recommender"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "runbook",
                    "label": "Runbook URL",
                    "description": "Where your team hosts docs/operations.md (the panels' runbook links)",
                    "type": "textbox",
                    "query": "docs/operations.md",
                    "current": {"text": "docs/operations.md", "value": "docs/operations.md"},
                    "hide": 2,
                },
            ]
        },
        "links": [
            {
                "title": "Runbook",
                "type": "link",
                "url": "${runbook}#alerts-and-runbook",
                "targetBlank": True,
                "icon": "doc",
            }
        ],
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write deploy/grafana/folio.json")
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
