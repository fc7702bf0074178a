"""What the monitoring tests share: the alerting rules (deploy/prometheus/), the Grafana dashboard and its
generator (deploy/grafana/), the metric names a PromQL expression reads, the runbook's anchors, and the
Prometheus binaries (Debian's `prometheus` package; `.ci/run` installs it)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.paths import ROOT

RULES = ROOT / "deploy" / "prometheus" / "folio-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "folio-rules.test.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
TO_PROMETHEUSRULE = ROOT / "deploy" / "prometheus" / "to_prometheusrule.py"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "monitoring" / "folio-prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "folio.json"
BUILD_DASHBOARD = ROOT / "deploy" / "grafana" / "build_dashboard.py"
RUNBOOK = ROOT / "docs" / "operations.md"

METRICS_SOURCES = sorted((ROOT / "runners").rglob("*.py"))
DECLARED = re.compile(r"bentoml\.metrics\.(Counter|Gauge|Histogram)\(\s*name=\"(\w+)\"")
# Exported by others: BentoML's HTTP metrics, Prometheus's own `up`, an external Triton's counters.
# tests/integration/test_prometheus.py checks that a real scrape has each one the rules or panels use.
BENTOML_NAMES = {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket"}
NV_NAMES = {
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_request_success",
    "nv_inference_exec_count",
}

# PromQL words that look like metric names
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"offset", "bool", "inf", "nan", "atan2"}


def binary(name: str) -> str:
    """The path of a Prometheus binary. Skips the test where it is not installed, unless under CI (the
    `CI` environment variable set): there a missing binary fails the test."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set: the alerting tests must run")
        pytest.skip(why)
    return path


def folio_exports(sources: list[Path] = METRICS_SOURCES) -> set[str]:
    """The sample names of every `folio_*` metric declared in ``sources`` (counters get `_total`, a
    histogram is read through `_bucket`)."""
    suffix = {"Counter": "_total", "Gauge": "", "Histogram": "_bucket"}
    return {name + suffix[kind] for path in sources for kind, name in DECLARED.findall(path.read_text())}


def exported() -> set[str]:
    """Every name a rule or panel may read: Folio's, BentoML's, Triton's (nv_*), `up`, recorded ones."""
    return folio_exports() | BENTOML_NAMES | NV_NAMES | {"up"} | recorded()


def load_module(path: Path) -> ModuleType:
    """A script of deploy/ (not a package) imported by path."""
    name = f"deploy_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rule_groups(text: str | None = None) -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text() if text is None else text)["groups"])


def rules(text: str | None = None) -> list[dict[str, Any]]:
    return [rule for group in rule_groups(text) for rule in group["rules"]]


def alerts(text: str | None = None) -> list[dict[str, Any]]:
    return [rule for rule in rules(text) if "alert" in rule]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    import json

    return dict(json.loads(DASHBOARD.read_text()))


def panel_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    board = dashboard() if board is None else board
    return [
        (panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])
    ]


def grafana_to_promql(expr: str, rate_interval: str) -> str:
    """A panel's query as Prometheus takes it: Grafana's range variables replaced by a duration."""
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, rate_interval)
    if "$" in expr:
        raise ValueError(f"a Grafana variable left in {expr!r}")
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names (and recording-rule names) a PromQL expression selects: identifiers outside
    strings, label matchers, range brackets and grouping clauses that are not called as functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text)
    return {name for name, call in names if not call and name.lower() not in _KEYWORDS}


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {slug(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def seconds(duration: str) -> float:
    """A Prometheus duration (`90s`, `10m`, `1h30m`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)
