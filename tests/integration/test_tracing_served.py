"""Tracing end to end: `bentoml serve` with FOLIO_TRACING_EXPORTER=otlp exports each request's span tree over
OTLP/HTTP to a receiver on loopback (what a collector gets), and the JSON log line of a traced request
carries its trace id next to its request id."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from loadtests.harness.otlp_sink import OtlpSink, ReceivedSpan
from runners.platform.processes import ServedFolio
from tests.http.test_tracing import STAGES, expected_parents

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as s:
        yield s


@pytest.fixture(scope="module")
def served(model_tag: str, sink: OtlpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("traced")
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_TRACING_EXPORTER": "otlp",
        "FOLIO_TRACING_ENDPOINT": sink.url,  # /v1/traces is added
        "FOLIO_TRACING_SAMPLE_RATE": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the batch processor's export interval (ms; default 5 s)
    }
    with ServedFolio(env, tmp / "serve.log") as s:
        yield s


def recommend(served: ServedFolio, user: str, request_id: str) -> dict:
    body = {"user_id": user, "k": 13}  # not the start-up cache warming's k
    r = httpx.post(f"{served.url}/recommend", json=body, headers={"X-Request-ID": request_id})
    assert r.status_code == 200, r.text
    return r.json()


def trace_of(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def request_trace(sink: OtlpSink, predicate, timeout_s: float = 20) -> list[ReceivedSpan]:  # type: ignore[no-untyped-def]
    """The spans of the one exported trace whose server span and Folio spans satisfy ``predicate``."""

    def found(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        for tid in {s.trace_id for s in spans if s.name == "POST /recommend"}:
            if predicate(trace := trace_of(spans, tid)):
                return trace
        return None

    spans = sink.wait_for(lambda s: found(s) is not None, timeout_s)
    got = found(spans)
    assert got is not None
    return got


def test_a_request_exports_its_span_tree(served: ServedFolio, sink: OtlpSink) -> None:
    assert recommend(served, "u3", "otlp-miss")["cached"] is False
    spans = request_trace(sink, lambda t: {s.name for s in t} >= STAGES)
    name = {s.span_id: s.name for s in spans}
    (server,) = [s for s in spans if s.name == "POST /recommend" and s.parent_span_id == ""]
    parents = {s.name: name[s.parent_span_id] for s in spans if s.name in STAGES}
    top = server.name
    assert parents == expected_parents(top)
    assert {s.service for s in spans} == {"folio"}  # BentoML's resource: the service's name
    (call,) = [s for s in spans if s.name == "triton_call"]
    assert (
        call.attributes["folio.triton.model"] == "ranker_int8"
        and int(call.attributes["folio.candidates"]) > 0
    )
    # probes and scrapes are never traced (BentoML's excluded_urls); a later request marks the export's end
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{served.url}{path}").status_code == 200
    assert recommend(served, "u3", "otlp-hit")["cached"] is True
    request_trace(sink, lambda t: {s.name for s in t} & STAGES == {"cache"})
    assert not [s for s in sink.received() if s.name.startswith("GET")]


def test_a_log_line_carries_the_trace_id(served: ServedFolio, sink: OtlpSink) -> None:
    """Triton killed: the request that opens the breaker logs a warning with its request and trace ids,
    and that trace holds the failed Triton call."""
    pid = httpx.post(f"{served.url}/info", json={}).json()["triton"]["pid"]
    os.kill(pid, signal.SIGKILL)
    warning: dict[str, str] | None = None
    deadline = time.monotonic() + 30
    n = 0
    while warning is None and time.monotonic() < deadline:
        n += 1
        recommend(served, f"u{10 + n}", f"otlp-down-{n}")
        lines = [json.loads(x) for x in served.log_file.read_text().splitlines() if x.startswith("{")]
        warning = next((x for x in lines if x["message"].startswith("Triton breaker opened")), None)
    assert warning is not None, served.log_tail()
    assert list(warning)[3:6] == ["request_id", "trace_id", "span_id"], warning
    assert warning["request_id"].startswith("otlp-down-") and len(warning["trace_id"]) == 32
    spans = sink.wait_for(lambda s: any(x.trace_id == warning["trace_id"] for x in s), 20)
    (call,) = [s for s in trace_of(spans, warning["trace_id"]) if s.name == "triton_call"]
    assert call.status == "STATUS_CODE_ERROR"
    assert warning["span_id"] in {s.span_id for s in trace_of(spans, warning["trace_id"])}
