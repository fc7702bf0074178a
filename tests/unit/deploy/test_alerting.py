"""The alerting rules (deploy/prometheus/folio-rules.yml): promtool's checks and unit tests, the
prometheus-operator copy, the runbook links, and the metric names they read.

promtool comes with Debian's `prometheus` package: without it these tests skip, except under CI where they
fail (tests/monitoring.py). The rules against a real Prometheus and a real service:
tests/integration/test_prometheus.py."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests import monitoring as mon
from tests.paths import ROOT

SEVERITIES = {"critical", "warning"}
_SHED_IN_ERRORS = "[5m])) or vector(0))\n          + (sum(rate(folio_requests_shed_total[5m])) or vector(0))"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mon.binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


# ---------------------------------------------------------------------------------------------- promtool
def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(mon.RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(mon.rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", mon.RULE_TESTS.name, cwd=mon.RULE_TESTS.parent)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("breakage", "failing"),
    [
        (
            lambda t: t.replace(
                " > 0.2\n          and sum(rate(bentoml", " > 2\n          and sum(rate(bentoml"
            ),
            "Latency",
        ),
        (lambda t: t.replace(_SHED_IN_ERRORS, "[5m])) or vector(0))"), "requests shed by admission control"),
        (lambda t: t.replace("for: 2m", "for: 30s"), "FolioDown"),
        (
            lambda t: t.replace("runbook_url: docs/operations.md#foliotritondown", "runbook_url: x"),
            "FolioTritonDown",
        ),
    ],
    ids=["threshold", "expression", "for", "annotation"],
)
def test_promtool_unit_tests_catch_a_broken_rule(
    tmp_path: Path, breakage: Callable[[str], str], failing: str
) -> None:
    broken = breakage(mon.RULES.read_text())
    assert broken != mon.RULES.read_text()
    (tmp_path / mon.RULES.name).write_text(broken)
    (tmp_path / mon.RULE_TESTS.name).write_text(mon.RULE_TESTS.read_text())
    done = promtool("test", "rules", mon.RULE_TESTS.name, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "FAILED" in output, output
    assert failing in output


def test_example_config_is_valid_and_loads_the_rules() -> None:
    done = promtool("check", "config", "--syntax-only", str(mon.EXAMPLE_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(mon.EXAMPLE_CONFIG.read_text())
    assert config["rule_files"] == [mon.RULES.name]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"folio", "triton"}


# ------------------------------------------------------------------------------------------- the rules
def test_every_alert_is_documented_and_does_not_flap() -> None:
    anchors = mon.runbook_anchors()
    names = [alert["alert"] for alert in mon.alerts()]
    assert len(names) == len(set(names)) and len(names) >= 12, names
    for alert in mon.alerts():
        name, notes = alert["alert"], alert.get("annotations", {})
        assert notes.get("summary") and notes.get("description"), name
        url = notes.get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), f"{name}: {url!r}"
        assert url.split("#", 1)[1] in anchors, f"{name}: no heading in docs/operations.md for {url}"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        assert mon.seconds(alert.get("for", "0s")) >= 60, f"{name}: for: under a minute"


def test_every_slo_and_failure_has_an_alert() -> None:
    exprs = {alert["alert"]: alert["expr"] for alert in mon.alerts()}
    wanted = {
        "FolioRecommendLatencyHigh": "histogram_quantile(0.95",
        "FolioErrorRateHigh": "folio:api_errors:rate5m",
        "FolioErrorBudgetBurnFast": "(14.4 * 0.001)",
        "FolioCacheHitRateLow": "< 0.85",
        "FolioModelStale": "folio_model_max_age_seconds",
        "FolioDown": 'up{job="folio"} == 0',
        "FolioTritonDown": "folio_triton_up",
        "FolioRankingFallbackHigh": "folio_ranking_fallbacks_total",
        "FolioStateStoreDown": "folio_state_up",
        "FolioFeedbackWriteErrors": "folio_feedback_write_errors_total",
    }
    for name, needle in wanted.items():
        assert needle in exprs.get(name, ""), name
    recorded = {r["record"]: r["expr"] for r in mon.rules() if "record" in r}
    assert all("folio_requests_shed_total" in e for e in recorded.values())  # shed 503s are errors


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(mon.RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for alert in mon.alerts():
        assert cases.get(alert["alert"]) == {True, False}, f"{alert['alert']}: {cases.get(alert['alert'])}"


def test_rules_read_only_metrics_someone_exports() -> None:
    used = {name for rule in mon.rules() for name in mon.metric_names(rule["expr"])}
    assert used - mon.exported() == set()
    assert "folio_triton_up" in used and "folio:api_errors:rate5m" in used


def test_a_renamed_metric_is_caught(tmp_path: Path) -> None:
    source = (ROOT / "runners" / "platform" / "metrics.py").read_text()
    renamed = tmp_path / "metrics.py"
    renamed.write_text(source.replace('name="folio_triton_up"', 'name="folio_triton_ready"'))
    others = [p for p in mon.METRICS_SOURCES if p.name != "metrics.py" or p.parent.name != "platform"]
    exported = mon.folio_exports([renamed, *others])
    assert "folio_triton_up" not in exported and "folio_triton_ready" in exported


def test_metric_names_parse_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(folio_stage_seconds_bucket{stage=~"a|b_c"}[5m])))'
        ' / ignoring (le) group_left () (up{job="x"} offset 5m) > bool 1e6 and on (instance) '
        "folio:api_errors:rate5m or vector(0) + nv_inference_count[$__rate_interval]"
    )
    assert mon.metric_names(expr) == {
        "folio_stage_seconds_bucket",
        "up",
        "folio:api_errors:rate5m",
        "nv_inference_count",
    }


# ------------------------------------------------------------------------------- prometheus-operator copy
def test_prometheus_rule_is_the_rules_file() -> None:
    script = mon.load_module(mon.TO_PROMETHEUSRULE)
    assert mon.PROMETHEUS_RULE.read_text() == script.render(mon.RULES.read_text()), (
        "stale: run python deploy/prometheus/to_prometheusrule.py"
    )
    doc = yaml.safe_load(mon.PROMETHEUS_RULE.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert doc["spec"]["groups"] == mon.rule_groups()
    assert script.main(["--check"]) == 0


def test_prometheus_rule_check_catches_a_stale_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = mon.load_module(mon.TO_PROMETHEUSRULE)
    stale = tmp_path / "rule.yaml"
    stale.write_text(mon.PROMETHEUS_RULE.read_text().replace("for: 10m", "for: 11m", 1))
    monkeypatch.setattr(script, "MANIFEST", stale)
    assert script.main(["--check"]) == 1


def test_prometheus_rule_applies_apart_from_the_main_manifests() -> None:
    """The CRD may be absent: the main kustomization must not need it; its own one lists it."""
    main = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert not any("prometheusrule" in r.lower() or "monitoring" in r for r in main["resources"])
    own = yaml.safe_load((mon.PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert own["resources"] == [mon.PROMETHEUS_RULE.name] and own["namespace"] == "folio"
