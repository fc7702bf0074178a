"""The alerting rules and the Grafana dashboard against a real Prometheus scraping a real `bentoml serve`
(embedded Triton, embedded state, API keys on: Prometheus authenticates as deploy/prometheus/prometheus.yml
says).

Prometheus (Debian's `prometheus` package) runs on a free loopback port with a temporary configuration:
scrape and evaluation every second, the REAL rules file with every `for:` rewritten to ``FOR`` (the
file's minutes would outlast the test; nothing else in the rules is changed, so a rate over [5m] still
averages over up to five minutes), Folio's /metrics as job `folio`, and the embedded Triton's own metrics
endpoint as job `triton`, standing in for an external Triton: the dashboard reads Triton's `nv_*`
counters only in the `or` branch meant for an external server, and the same tritonserver binary exports
them, so their names are checked against a real scrape too.

- Every metric name a rule or a panel reads is in what Prometheus scraped, every panel's query evaluates
  without error (Grafana's `$__rate_interval` as ``RATE_INTERVAL``), every rule evaluates healthy.
- Triton SIGKILLed again and again under /recommend traffic: FolioTritonDown and FolioRankingFallbackHigh
  fire, every request is still answered; once the killing stops FolioTritonDown resolves (the fallback
  alert reads a 5-minute rate and stays up for minutes: not waited for).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from loadtests.faults.inject import tritonservers
from runners.platform.processes import ChildProcess, ServedFolio, free_port
from runners.platform.settings import hash_key
from tests import monitoring as mon
from tests.integration.test_lifecycle import AUTH, KEY, Traffic

pytestmark = pytest.mark.integration
FOR = "3s"
RATE_INTERVAL = "30s"
KILL_EVERY_S = 0.3
# Counters with labels exist only from their first event, and this run causes none of these: each is
# still checked to be declared under that name in runners/ (tests/monitoring.py, folio_exports), and
# folio_ranking_events_total is seen in the scrape once Triton is killed below.
EVENT_ONLY = {
    "folio_ranking_events_total": "a Triton error or a breaker opening",
    "folio_state_breaker_events_total": "the Redis state store's breaker; this run has the embedded state",
    "folio_state_busy_total": "every pooled Redis connection busy; this run has the embedded state",
}


class Prometheus:
    """`prometheus` on a free loopback port with ``config``; its API as small helpers that fail on error."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.workdir = workdir
        self._child = ChildProcess("prometheus", workdir / "prometheus.log", die_with_parent=True)

    def start(self) -> Prometheus:
        argv = [
            mon.binary("prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self._child.spawn(argv, cwd=self.workdir)

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self._child.wait_ready(ready, 60)
        return self

    def stop(self) -> None:
        self._child.stop()

    def alive(self) -> bool:
        return self._child.alive()

    def log_tail(self) -> str:
        return self._child.log_tail(30)

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{path} {params}: {r.text[:500]}"
        return body["data"]

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def alert_states(self) -> dict[str, set[str]]:
        states: dict[str, set[str]] = {}
        for alert in self.api("alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states


def rules_with_short_for(text: str) -> str:
    """The rules file with every alert's `for:` set to FOR, and nothing else changed."""
    short, n = re.subn(r"(?m)^(\s+for: )\S+$", rf"\g<1>{FOR}", text)
    assert n == len(mon.alerts(text)), "every alert has a for: to rewrite"
    assert mon.rules(short) == [{**r, "for": FOR} if "alert" in r else r for r in mon.rules(text)]
    return short


def metrics_port(pid: int) -> int:
    """The metrics port of a tritonserver, from its command line."""
    args = " ".join(psutil.Process(pid).cmdline())
    found = re.search(r"--metrics-port[= ](\d+)", args)
    assert found, args
    return int(found.group(1))


@pytest.fixture(scope="module")
def served(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("observed")
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_BREAKER_RESET_S": "0.5",
        "FOLIO_CACHE_TTL_S": "0",  # every /recommend is ranked: the fallback share moves with Triton
    }
    with ServedFolio(env, tmp / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(served: ServedFolio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "rules.yml").write_text(rules_with_short_for(mon.RULES.read_text()))
    (tmp / "folio-api-key").write_text(KEY)
    assert served.proc is not None
    (triton,) = tritonservers(served.proc.pid)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "folio",
                "authorization": {"type": "Bearer", "credentials_file": str(tmp / "folio-api-key")},
                "static_configs": [{"targets": [f"127.0.0.1:{served.port}"]}],
            },
            {"job_name": "triton", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port(triton)}"]}]},
        ],
    }
    server = Prometheus(config, tmp).start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(check: Any, timeout_s: float, what: str, *procs: ServedFolio | Prometheus) -> None:
    """Poll ``check`` until true; fail at once, with the logs, when a process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                pytest.fail(f"{type(proc).__name__} died while waiting: {what}\n{proc.log_tail()}")
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {type(p).__name__}\n{p.log_tail()}" for p in procs)
    raise AssertionError(f"{what}: not within {timeout_s}s\n{tails}")


def scraped(prometheus: Prometheus, expr: str) -> bool:
    return bool(prometheus.query(expr))


def test_rules_and_panels_read_what_is_exported(served: ServedFolio, prometheus: Prometheus) -> None:
    up = lambda: scraped(prometheus, 'up{job="folio"} == 1') and scraped(prometheus, 'up{job="triton"} == 1')  # noqa: E731
    wait_for(up, 30, "Prometheus scrapes Folio and Triton", served, prometheus)
    with (
        Traffic(served.url) as traffic,
        httpx.Client(base_url=served.url, headers=AUTH, timeout=30) as client,
    ):
        click = {"user_id": "u1", "item_id": "b1", "event": "click"}
        assert client.post("/feedback", json=click).status_code == 200
        seen = [
            'increase(bentoml_service_request_duration_seconds_count{endpoint="/recommend"}[30s]) > 0',
            'increase(folio_stage_seconds_count{stage="ann_search"}[30s]) > 0',
            "increase(folio_triton_inferences_total[30s]) > 0",
            'folio_feedback_events_total{event="click"} > 0',
        ]
        wait_for(lambda: all(scraped(prometheus, e) for e in seen), 60, "traffic scraped", served, prometheus)
        # every panel query evaluates (an error fails in .api()), under traffic
        answers = [
            (expr, prometheus.query(mon.grafana_to_promql(expr, RATE_INTERVAL)))
            for _, expr in mon.panel_queries()
        ]
    assert traffic.results and {status for status, _ in traffic.results} == {200}
    # and has data, unless it reads only what an event creates (no fallback, reload or Redis here)
    waits_for_an_event = [*EVENT_ONLY, 'fallback!="none"']
    empty = [
        expr for expr, result in answers if not result and not any(e in expr for e in waits_for_an_event)
    ]
    assert empty == []

    names = prometheus.names()
    for_rules = {name for rule in mon.rules() for name in mon.metric_names(rule["expr"])} - mon.recorded()
    for_panels = {name for _, expr in mon.panel_queries() for name in mon.metric_names(expr)}
    triton_only = {n for n in for_rules | for_panels if n.startswith("nv_")}
    assert triton_only and triton_only <= mon.NV_NAMES
    from_triton = prometheus.query(
        f'count by (__name__) ({{__name__=~"{"|".join(triton_only)}",job="triton"}})'
    )
    assert {r["metric"]["__name__"] for r in from_triton} == triton_only
    missing = sorted((for_rules | for_panels) - names)
    assert missing == sorted(EVENT_ONLY), (
        f"read by a rule or a panel, never scraped: {missing}; allowed only (until their first event): "
        f"{sorted(EVENT_ONLY)} (a name preset at start-up now: drop it from EVENT_ONLY)"
    )
    assert set(EVENT_ONLY) <= mon.folio_exports()  # declared in runners/ under that name

    groups = prometheus.api("rules")["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule.get("alert", rule.get("record")) for rule in mon.rules()}
    unhealthy = {name: rule.get("lastError") for name, rule in evaluated.items() if rule["health"] != "ok"}
    assert unhealthy == {}
    assert evaluated["FolioTritonDown"]["duration"] == 3  # the rewritten for:


def test_triton_killed_fires_then_resolves(served: ServedFolio, prometheus: Prometheus) -> None:
    assert served.proc is not None
    wait_for(lambda: scraped(prometheus, "min(folio_triton_up) == 1"), 60, "Triton up", served, prometheus)
    assert "FolioTritonDown" not in prometheus.alert_states()
    killed: list[int] = []
    stop = threading.Event()

    def keep_killing() -> None:  # the ranking stage restarts it within about a second
        while not stop.is_set():
            for pid in tritonservers(served.proc.pid):  # type: ignore[union-attr]
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            stop.wait(KILL_EVERY_S)

    killer = threading.Thread(target=keep_killing, daemon=True)
    with Traffic(served.url) as traffic:
        killer.start()
        try:
            firing = lambda: {"firing"} <= prometheus.alert_states().get("FolioTritonDown", set())  # noqa: E731
            wait_for(firing, 90, "FolioTritonDown firing", served, prometheus)
            fallback = lambda: "firing" in prometheus.alert_states().get("FolioRankingFallbackHigh", set())  # noqa: E731
            wait_for(fallback, 30, "FolioRankingFallbackHigh firing", served, prometheus)
        finally:
            stop.set()
            killer.join(10)
        resolved = lambda: "FolioTritonDown" not in prometheus.alert_states()  # noqa: E731
        wait_for(resolved, 90, "FolioTritonDown resolved after the killing stopped", served, prometheus)
    assert len(set(killed)) >= 2, killed  # restarted and killed again
    statuses = {status for status, _ in traffic.results}
    assert traffic.results and statuses == {200}, statuses  # ranked by the fallback all along
    assert scraped(prometheus, "min(folio_triton_up) == 1")
    assert scraped(prometheus, 'folio_ranking_events_total{event="breaker_open"} > 0')
