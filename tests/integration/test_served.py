"""End to end: `bentoml serve` as a real process, with the embedded tritonserver or a shared one, and
the embedded state or a real redis-server."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.faults.inject import group_gone
from runners.platform.processes import ServedFolio
from runners.platform.settings import hash_key
from runners.triton.server import TritonServer

pytestmark = pytest.mark.integration
KEY = "s3cret-key"


def post(base: str, route: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{base}{route}", json=body, timeout=30, **kw)


def wait_for(check, timeout_s: float, what: str, tail=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s}s\n{tail()}")


@pytest.fixture(scope="module")
def embedded(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("served")
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_BREAKER_RESET_S": "0.5",
        "FOLIO_CACHE_TTL_S": "0",
    }
    with ServedFolio(env, tmp / "serve.log") as served:
        yield served


def test_every_endpoint_answers(embedded: ServedFolio) -> None:
    base = embedded.url
    rec = post(base, "/recommend", {"user_id": "u1"}).json()
    assert rec["fallback"] == "none" and len(rec["items"]) == 10 and rec["model_version"].startswith("folio:")
    assert post(base, "/similar", {"item_id": "b1", "k": 3}).json()["items"]
    assert post(base, "/trending", {"k": 3}).json()["items"]
    fb = post(base, "/feedback", {"user_id": "e2e", "item_id": "b1", "event": "click"})
    assert fb.status_code == 200 and fb.json()["durable"] == "journal"
    assert post(base, "/forget", {"user_id": "e2e"}).json()["forgotten"] is True
    info = post(base, "/info", {}).json()
    assert info["triton"]["mode"] == "embedded" and info["triton"]["alive"]
    assert httpx.get(f"{base}/livez").status_code == 200 and httpx.get(f"{base}/readyz").status_code == 200
    spec = httpx.get(f"{base}/docs.json").text
    assert '"example"' in spec and "/feedback/batch" in spec  # Swagger shows working examples
    metrics = httpx.get(f"{base}/metrics").text
    names = ("folio_stage_seconds", "folio_ranking_candidates", "folio_feedback_events", "folio_cold_starts")
    for name in names:
        assert name in metrics, name


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``, None if absent."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def test_operations_metrics(embedded: ServedFolio) -> None:
    """What the dashboards and alerts read (deploy/prometheus, deploy/grafana) is exported, with values."""
    base = embedded.url
    for n in range(8):
        assert post(base, "/recommend", {"user_id": f"u{n}"}).json()["fallback"] == "none"
    assert post(base, "/similar", {"item_id": "b1", "k": 3}).status_code == 200

    def reported() -> bool:
        text = httpx.get(f"{base}/metrics", timeout=30).text
        queue = metric(text, "folio_triton_queue_seconds_total", model="ranker_int8")
        return bool(queue and metric(text, "folio_catalog_coverage_ratio"))

    wait_for(reported, 30, "no Triton times or coverage in /metrics", embedded.log_tail)
    text = httpx.get(f"{base}/metrics").text
    version = post(base, "/info", {}).json()["model_version"]
    assert metric(text, "folio_model_info", variant="default", model_version=version, precision="int8") == 1
    assert metric(text, "folio_triton_up") == 1 and metric(text, "folio_state_up") == 1
    assert metric(text, "folio_model_max_age_seconds") == 86400
    assert (
        0
        < (metric(text, "folio_model_age_seconds") or 0)
        <= (metric(text, "folio_model_promotion_age_seconds") or 0) + 1
    )  # the test version was never promoted: both count since it was trained
    assert (metric(text, "folio_recommendations_total", variant="default", source="ranked") or 0) >= 8
    assert metric(text, "folio_recommendations_total", source="fallback") == 0
    assert metric(text, "folio_feedback_write_errors_total", reason="unavailable") == 0
    assert (metric(text, "folio_stage_seconds_count", stage="ann_search") or 0) >= 9
    assert (metric(text, "folio_triton_inferences_total", model="ranker_int8") or 0) >= 8
    assert (metric(text, "folio_triton_compute_seconds_total", model="ranker_int8") or 0) > 0
    assert (metric(text, "folio_triton_executions_total", model="ranker_int8") or 0) >= 1
    assert 0 < (metric(text, "folio_catalog_coverage_ratio") or 0) <= 1


def test_triton_killed_falls_back_then_recovers(embedded: ServedFolio) -> None:
    base = embedded.url
    pid = post(base, "/info", {}).json()["triton"]["pid"]
    os.kill(pid, signal.SIGKILL)
    fallbacks = [post(base, "/recommend", {"user_id": f"u{n}"}).json()["fallback"] for n in range(30, 36)]
    assert "onnxruntime" in fallbacks and "popularity" not in fallbacks, fallbacks

    def back_on_triton() -> bool:
        info = post(base, "/info", {}).json()["triton"]
        return (
            info["alive"]
            and info["pid"] != pid
            and post(base, "/recommend", {"user_id": "u40"}).json()["fallback"] == "none"
        )

    wait_for(back_on_triton, 90, "not back on Triton after a restart", embedded.log_tail)
    assert embedded.alive()
    # Every ranking event reaches Prometheus. The watchdog counts its restart once its readiness poll
    # returns, which can be a poll interval after traffic is back on the new server: wait for it.
    for event in ("triton_error", "breaker_open", "fallback_onnxruntime", "restart"):
        line = rf'^folio_ranking_events_total\{{[^}}]*event="{event}"[^}}]*\}} [1-9]'
        counted = lambda: re.search(line, httpx.get(f"{base}/metrics", timeout=30).text, re.M)  # noqa: B023, E731
        wait_for(counted, 30, f"no {event} in /metrics", embedded.log_tail)


def test_shutdown_stops_the_embedded_triton(model_tag: str, tmp_path: Path) -> None:
    env = {"FOLIO_MODEL_TAG": model_tag, "FOLIO_STATE_DIR": str(tmp_path / "state")}
    served = ServedFolio(env, tmp_path / "serve.log").start()
    pid = post(served.url, "/info", {}).json()["triton"]["pid"]
    served.stop()  # SIGTERM, as a process manager would send
    wait_for(lambda: group_gone(pid), 30, f"tritonserver {pid} (or its stubs) outlived the service")


def test_journal_survives_a_restart(model_tag: str, tmp_path: Path) -> None:
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_TRITON_URL": "127.0.0.1:1",
    }
    events = [{"user_id": "durable", "item_id": f"b{b}", "event": "purchase"} for b in range(40, 46)]
    with ServedFolio(env, tmp_path / "a.log") as served:
        assert post(served.url, "/feedback/batch", {"events": events}).status_code == 200
    with ServedFolio(env, tmp_path / "b.log") as served:
        body = post(served.url, "/recommend", {"user_id": "durable"}).json()
        assert body["cold_start"] is False
        assert not {i["item_id"] for i in body["items"]} & {e["item_id"] for e in events}


def test_external_triton_is_used(model_tag: str, triton_server: TritonServer, tmp_path: Path) -> None:
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path),
        "FOLIO_TRITON_URL": triton_server.grpc_url,
    }
    with ServedFolio(env, tmp_path / "serve.log") as served:
        info = post(served.url, "/info", {}).json()["triton"]
        assert info["mode"] == "external" and info["url"] == triton_server.grpc_url
        assert (
            post(served.url, "/recommend", {"user_id": "u2", "variant": "fp32"}).json()["fallback"] == "none"
        )


def test_auth_rate_limit_and_body_size(model_tag: str, tmp_path: Path) -> None:
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_RATE_LIMIT_RPS": "0.5",
        "FOLIO_RATE_LIMIT_BURST": "3",
        "FOLIO_MAX_BODY_BYTES": "2048",
        "FOLIO_TRITON_URL": "127.0.0.1:1",  # nothing listens: ranking falls back, no Triton needed here
    }
    with (
        ServedFolio(env, tmp_path / "serve.log") as served,
        httpx.Client(base_url=served.url, timeout=30) as c,
    ):
        for route in ("/recommend", "/similar", "/trending", "/feedback", "/forget", "/info"):
            r = c.post(route, json={})
            assert r.status_code == 401 and "missing API key" in r.text, route
        assert c.get("/metrics").status_code == 401
        assert c.post("/info", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200
        ok = c.post("/recommend", json={"user_id": "u1"}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["fallback"] == "onnxruntime"
        assert c.post("/info", json={}, headers={"X-API-Key": KEY}).status_code == 200
        assert c.post("/trending", json={}, headers={"X-API-Key": KEY}).status_code == 200
        limited = c.post("/trending", json={}, headers={"X-API-Key": KEY})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        big = c.post("/info", content=b"{}" + b" " * 4096, headers={"X-API-Key": KEY})
        assert big.status_code == 413


def test_ab_variants_route_attribute_and_shadow(model_tag: str, tmp_path: Path) -> None:
    from runners.serving.variants import Assigner, VariantConfig

    config = {
        "salt": "t",
        "variants": [
            {"name": "control", "model": model_tag, "precision": "int8", "share": 0.5},
            {"name": "treatment", "model": model_tag, "precision": "fp16", "share": 0.5},
            {"name": "candidate", "model": model_tag, "precision": "fp32", "shadow": True},
        ],
    }
    assigner = Assigner(VariantConfig.model_validate(config))
    env = {"FOLIO_STATE_DIR": str(tmp_path), "FOLIO_VARIANTS": json.dumps(config), "FOLIO_CACHE_TTL_S": "0"}
    with ServedFolio(env, tmp_path / "serve.log") as served:
        users = [f"u{n}" for n in range(20)]
        for user in users:
            body = post(served.url, "/recommend", {"user_id": user}).json()
            want = assigner.assign(user)
            assert (body["variant"], body["precision"]) == (want.name, want.precision), user
        forced = post(served.url, "/recommend", {"user_id": users[0], "variant": "candidate"}).json()
        assert forced["variant"] == "candidate" and forced["precision"] == "fp32"
        treated = next(u for u in users if assigner.assign(u).name == "treatment")
        assert (
            post(served.url, "/feedback", {"user_id": treated, "item_id": "b1", "event": "click"}).status_code
            == 200
        )
        info = post(served.url, "/info", {}).json()
        assert set(info["variants"]) == {"control", "treatment", "candidate"}

        def metric(name: str) -> float:
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in httpx.get(f"{served.url}/metrics").text.splitlines()
                if line.startswith(name)
            )

        assert metric('folio_feedback_events_total{event="click",variant="treatment"}') == 1
        assert metric('folio_variant_requests_total{variant="treatment"}') >= 1
        wait_for(
            lambda: metric('folio_shadow_agreement_count{variant="candidate"}') >= 20, 30, "no shadow scores"
        )
