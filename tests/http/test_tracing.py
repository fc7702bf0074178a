"""Tracing through the entry service's ASGI app: BentoML's request span, Folio's stage spans under it and the
Triton call under ranking, kept by the OpenTelemetry SDK's in-memory exporter.

This package's app runs with tracing off (no FOLIO_TRACING_*): BentoML built its tracer provider with no
exporter and a sample rate of 0, and follows a caller's sampled ``traceparent``. The tests add an in-memory
exporter to that provider and arm Folio's spans as ``tracing.configure`` does when an exporter is set.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.testclient import TestClient

from runners.platform import tracing

pytestmark = pytest.mark.integration  # starts the real tritonserver

STAGES = {"cache", "history", "retrieval", "ann_search", "ranking", "triton_call", "rules"}


def expected_parents(server: str) -> dict[str, str]:
    """The span tree of a computed /recommend: each stage's parent span (``server``: the request's)."""
    return {
        "cache": server,
        "history": server,
        "retrieval": server,
        "ann_search": "retrieval",
        "ranking": server,
        "triton_call": "ranking",
        "rules": server,
    }


CALLER_SPAN = 0xB7AD6B7169203331


def traceparent(trace_id: int, sampled: bool = True) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id:032x}-{CALLER_SPAN:016x}-{'01' if sampled else '00'}"}


@pytest.fixture()
def provider(client: TestClient) -> TracerProvider:
    """The provider BentoML built for this app (its middleware holds the same singleton)."""
    from bentoml._internal.container import BentoMLContainer

    built: TracerProvider = BentoMLContainer.tracer_provider.get()
    return built


@pytest.fixture()
def exported(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # a provider cannot drop one: shut it down
    yield exporter
    exporter.shutdown()  # stores nothing from here on


@pytest.fixture()
def armed(provider: TracerProvider) -> Iterator[None]:
    tracing.use(provider)
    try:
        yield
    finally:
        tracing.use(None)


def of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def tree(spans: list[ReadableSpan]) -> tuple[ReadableSpan, dict[str, str]]:
    """The request's server span, and each Folio span's parent by name."""
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    name = {s.context.span_id: s.name for s in spans}
    parents = {s.name: name[s.parent.span_id] for s in spans if s.name in STAGES and s.parent}
    return server, parents


def test_a_traced_miss_yields_the_stage_tree(
    client: TestClient, exported: InMemorySpanExporter, armed: None
) -> None:
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    headers = {**traceparent(trace_id), "X-Request-ID": "traced-miss"}
    r = client.post("/recommend", json={"user_id": "u7", "k": 13}, headers=headers)
    assert r.status_code == 200 and r.json()["cached"] is False and r.json()["fallback"] == "none", r.text
    server, parents = tree(of_trace(exported, trace_id))
    assert server.name == "POST /recommend" and server.parent is not None
    assert server.parent.span_id == CALLER_SPAN and server.parent.is_remote  # the caller's trace, continued
    top = server.name
    assert parents == expected_parents(top)
    (call,) = [s for s in of_trace(exported, trace_id) if s.name == "triton_call"]
    assert call.attributes is not None
    assert (
        call.attributes["folio.triton.model"] == "ranker_int8"
        and int(call.attributes["folio.candidates"]) > 0
    )

    # the same request again: a cache hit, one stage
    again = 0x1AF7651916CD43DD8448EB211C80319C
    r = client.post("/recommend", json={"user_id": "u7", "k": 13}, headers=traceparent(again))
    assert r.json()["cached"] is True
    assert tree(of_trace(exported, again))[1] == {"cache": "POST /recommend"}


def test_unsampled_requests_record_nothing(
    client: TestClient, exported: InMemorySpanExporter, armed: None
) -> None:
    # this app's sample rate is 0: a request without a traceparent, or with an unsampled one, is not traced
    client.post("/recommend", json={"user_id": "u8", "k": 13})
    client.post("/recommend", json={"user_id": "u8", "k": 14}, headers=traceparent(0x2A, sampled=False))
    assert exported.get_finished_spans() == ()


def test_tracing_off_opens_no_folio_span(client: TestClient, exported: InMemorySpanExporter) -> None:
    assert not tracing.enabled()  # FOLIO_TRACING_EXPORTER unset
    trace_id = 0x3AF7651916CD43DD8448EB211C80319C
    r = client.post("/recommend", json={"user_id": "u9", "k": 13}, headers=traceparent(trace_id))
    assert r.status_code == 200 and r.json()["cached"] is False
    spans = of_trace(exported, trace_id)
    assert spans and not {s.name for s in spans} & STAGES  # BentoML's own request span only
