"""The Grafana dashboard (deploy/grafana/folio.json): the committed JSON is the generator's output, its
panels cover what an on-call engineer needs, every query parses (promtool) and reads only metrics someone
exports, and every runbook link lands on a heading of docs/operations.md. Every query against a real
Prometheus scraping a real service: tests/integration/test_prometheus.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import monitoring as mon


@pytest.fixture(scope="module")
def builder() -> Any:
    return mon.load_module(mon.BUILD_DASHBOARD)


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return mon.dashboard()


def test_committed_json_is_the_generators_output(builder: Any) -> None:
    assert mon.DASHBOARD.read_text() == builder.render(), (
        "stale: run python deploy/grafana/build_dashboard.py"
    )
    assert builder.main(["--check"]) == 0


def test_check_catches_a_stale_dashboard(
    builder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "folio.json"
    stale.write_text(mon.DASHBOARD.read_text().replace("folio_state_up", "folio_state_ok", 1))
    monkeypatch.setattr(builder, "OUT", stale)
    assert builder.main(["--check"]) == 1


def test_model_and_datasource(board: dict[str, Any]) -> None:
    assert board["schemaVersion"] == 39 and board["uid"] == "folio"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["DS_PROMETHEUS"]["type"] == "datasource"
        and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    )
    want = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == want, panel["title"]
        assert panel["targets"] and all(t["datasource"] == want for t in panel["targets"]), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_layout_has_unique_ids_and_no_overlap(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_panels_cover_the_operations_questions(board: dict[str, Any]) -> None:
    exprs = "\n".join(expr for _, expr in mon.panel_queries(board))
    latency = "rate(bentoml_service_request_duration_seconds_bucket"
    needles = [
        *(f"histogram_quantile({p}, sum by (le, endpoint) ({latency}" for p in ("0.5", "0.95", "0.99")),
        "sum by (endpoint) (rate(bentoml_service_request_total",
        'http_response_code=~"5.."',
        'folio_cache_lookups_total{outcome="hit"}',
        "sum by (source) (rate(folio_recommendations_total",  # cold-start and fallback share
        "folio_ranking_fallbacks_total",
        "sum by (le, stage) (rate(folio_stage_seconds_bucket",  # ann_search and triton_call among stages
        "folio_triton_queue_seconds_total",
        "folio_triton_compute_seconds_total",
        "folio_state_unavailable_total",
        "folio_state_busy_total",
        "folio_model_info",
        "folio_model_age_seconds",
        'sum by (variant) (rate(folio_feedback_events_total{event="click"}',
        "sum by (variant) (rate(folio_variant_impressions_total",
        "folio_requests_shed_total",
        "folio_catalog_coverage_ratio",
        "folio_triton_up",
        "folio_state_up",
    ]
    assert [n for n in needles if n not in exprs] == []


def test_queries_read_only_metrics_someone_exports(board: dict[str, Any]) -> None:
    used = {name for _, expr in mon.panel_queries(board) for name in mon.metric_names(expr)}
    assert used - (mon.exported() - mon.recorded()) == set()  # panels work without the recording rules
    assert {"folio_stage_seconds_bucket", "nv_inference_queue_duration_us", "up"} <= used


def test_every_query_parses(board: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's $__rate_interval as 5m)."""
    queries = mon.panel_queries(board)
    rules = [
        {"record": f"panel:query:{n}", "expr": mon.grafana_to_promql(expr, "5m")}
        for n, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    done = subprocess.run(
        [mon.binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and f"{len(queries)} rules found" in done.stdout, done.stdout + done.stderr
    rules[0]["expr"] += " +"  # a broken query fails the check
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    broken = subprocess.run(
        [mon.binary("promtool"), "check", "rules", str(path)], capture_output=True, timeout=60
    )
    assert broken.returncode != 0


def test_runbook_links_land_on_headings(board: dict[str, Any]) -> None:
    anchors = mon.runbook_anchors()
    links = [link["url"] for p in board["panels"] for link in p.get("links", [])] + [
        link["url"] for link in board["links"]
    ]
    assert len(links) >= 10
    for url in links:
        assert re.fullmatch(r"\$\{runbook\}#[a-z0-9-]+", url), url
        assert url.split("#", 1)[1] in anchors, url
    linked_alerts = {url.split("#", 1)[1] for url in links}
    assert {a["alert"].lower() for a in mon.alerts()} - linked_alerts == set()


def test_json_is_plain_and_stable(board: dict[str, Any]) -> None:
    assert json.loads(json.dumps(board)) == board
    assert mon.DASHBOARD.read_text().endswith("}\n")
