"""runners/platform/tracing.py: FOLIO_TRACING_* into BentoML's tracing config, the tracer provider BentoML
builds from it, Folio's stage spans under a request's span (OpenTelemetry SDK's in-memory exporter, and the
OTLP/HTTP export read back by a local receiver), and the trace id in the JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from loadtests.harness.otlp_sink import OtlpSink
from runners.http.logs import REQUEST_ID, JsonLogFormatter
from runners.platform import tracing
from runners.platform.metrics import STAGE_SECONDS, timed
from runners.platform.settings import Settings, SettingsError
from tests.unit.runners.platform.test_settings import load_with


def bentoml_provider(settings: Settings) -> TracerProvider:
    """The tracer provider BentoML builds for the service config ``bentoml_config(settings)``: its v2 config
    loader (defaults merged, schema-validated) and its container's factory, without caching the result in
    this process's BentoMLContainer (which the app of tests/http uses)."""
    from bentoml._internal.configuration.containers import BentoMLConfiguration, BentoMLContainer

    overrides = {"services": {"folio": {"tracing": tracing.bentoml_config(settings)}}}
    cfg = BentoMLConfiguration(override_defaults=overrides, use_version=2).to_dict()["services"]["folio"]
    t = cfg["tracing"]
    factory = BentoMLContainer.tracer_provider._func  # bentoml==1.4.40 exactly (pyproject.toml)
    provider: TracerProvider = factory(
        tracer_type=t["exporter_type"],
        sample_rate=t["sample_rate"],
        timeout=t["timeout"],
        max_tag_value_length=t["max_tag_value_length"],
        zipkin=t["zipkin"],
        jaeger=t["jaeger"],
        otlp=t["otlp"],
    )
    return provider


class Started(SpanProcessor):
    """Names of every span started, sampled or not (BentoML's sampler records unsampled spans too)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_start(self, span: object, parent_context: object = None) -> None:
        self.names.append(span.name)  # type: ignore[attr-defined]


class Traced:
    def __init__(self, provider: TracerProvider, sink: OtlpSink) -> None:
        self.provider, self.sink = provider, sink
        self.memory, self.started = InMemorySpanExporter(), Started()
        provider.add_span_processor(SimpleSpanProcessor(self.memory))
        provider.add_span_processor(self.started)
        self.tracer = provider.get_tracer("test")

    def finished(self) -> dict[str, ReadableSpan]:
        spans = self.memory.get_finished_spans()
        assert len({s.name for s in spans}) == len(spans), [s.name for s in spans]
        return {s.name: s for s in spans}


@pytest.fixture()
def traced(request: pytest.FixtureRequest) -> Iterator[Traced]:
    """Tracing on (OTLP to a local receiver) at the sample rate the test is parametrised with (default 1)."""
    rate = getattr(request, "param", 1.0)
    with OtlpSink() as sink:
        settings = Settings(tracing_exporter="otlp", tracing_endpoint=sink.url, tracing_sample_rate=rate)
        provider = bentoml_provider(settings)
        tracing.use(provider)
        try:
            yield Traced(provider, sink)
        finally:
            tracing.use(None)
            provider.shutdown()


def pipeline(fail_in_rules: bool = False) -> None:
    """The stage nesting of one /recommend cache miss (runners/stages/pipeline.py, retrieval.py, Triton)."""
    with timed("cache"):
        pass
    with timed("history"):
        pass
    with timed("retrieval"), timed("ann_search"):
        pass

    async def rank() -> None:
        async def call() -> None:
            with tracing.span("triton_call") as span:
                assert span is not None
                span.set_attribute("folio.candidates", 500)

        await asyncio.wait_for(call(), 1.0)  # a task of its own, as in RankingStage.rank

    with timed("ranking"):
        asyncio.run(rank())
    with timed("rules"):
        if fail_in_rules:
            raise KeyError("b9")


def test_off_by_default_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_with(monkeypatch)
    assert settings.tracing_exporter == "none" and tracing.bentoml_config(settings) == {}
    bad = [
        ({"FOLIO_TRACING_EXPORTER": "otlp"}, "FOLIO_TRACING_ENDPOINT"),
        ({"FOLIO_TRACING_EXPORTER": "jaeger"}, "FOLIO_TRACING_EXPORTER"),
        ({"FOLIO_TRACING_EXPORTER": "otlp", "FOLIO_TRACING_ENDPOINT": "otel:4318"}, "FOLIO_TRACING_ENDPOINT"),
        ({"FOLIO_TRACING_SAMPLE_RATE": "1.5"}, "FOLIO_TRACING_SAMPLE_RATE"),
        ({"FOLIO_TRACING_SAMPLE_RATE": "-0.1"}, "FOLIO_TRACING_SAMPLE_RATE"),
    ]
    for env, name in bad:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(SettingsError, match=name):
            load_with(mp, **env)


@pytest.mark.parametrize(
    ("given", "sent_to"),
    [
        ("http://otel-collector:4318", "http://otel-collector:4318/v1/traces"),
        ("https://otel.example:4318/", "https://otel.example:4318/v1/traces"),
        ("http://gateway/otlp/v1/traces", "http://gateway/otlp/v1/traces"),
    ],
)
def test_bentoml_config_names_the_collector(
    monkeypatch: pytest.MonkeyPatch, given: str, sent_to: str
) -> None:
    env = {
        "FOLIO_TRACING_EXPORTER": "otlp",
        "FOLIO_TRACING_ENDPOINT": given,
        "FOLIO_TRACING_SAMPLE_RATE": "0.01",
    }
    cfg = tracing.bentoml_config(load_with(monkeypatch, **env))
    assert cfg == {
        "exporter_type": "otlp",
        "sample_rate": 0.01,
        "excluded_urls": ["/livez", "/readyz", "/metrics"],
        "otlp": {"protocol": "http", "endpoint": sent_to},
    }


def test_a_traced_request_yields_the_stage_tree(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("POST /recommend"):
        pipeline()
    spans = traced.finished()
    root = spans["POST /recommend"]
    parent = {name: s.parent.span_id if s.parent else None for name, s in spans.items()}
    by_id = {s.context.span_id: name for name, s in spans.items()}
    tree = {name: by_id.get(p) if p else None for name, p in parent.items()}
    assert tree == {
        "POST /recommend": None,
        "cache": "POST /recommend",
        "history": "POST /recommend",
        "retrieval": "POST /recommend",
        "ann_search": "retrieval",
        "ranking": "POST /recommend",
        "triton_call": "ranking",
        "rules": "POST /recommend",
    }
    assert {s.context.trace_id for s in spans.values()} == {root.context.trace_id}
    assert spans["triton_call"].attributes == {"folio.candidates": 500}
    # ... and exported over OTLP/HTTP as BentoML configured it, with the same ids
    traced.provider.force_flush()
    got = traced.sink.wait_for(lambda s: len(s) == len(spans), timeout_s=10)
    assert {(s.name, s.trace_id) for s in got} == {(n, f"{root.context.trace_id:032x}") for n in spans}


def test_a_failing_stage_marks_its_span(traced: Traced) -> None:
    before = STAGE_SECONDS.labels(stage="rules")._sum.get()  # the metric is still observed
    with pytest.raises(KeyError), traced.tracer.start_as_current_span("POST /recommend"):
        pipeline(fail_in_rules=True)
    rules = traced.finished()["rules"]
    assert rules.status.status_code is StatusCode.ERROR and rules.events[0].name == "exception"
    assert STAGE_SECONDS.labels(stage="rules")._sum.get() > before
    assert trace.get_current_span() is trace.INVALID_SPAN  # every span's context was detached


@pytest.mark.parametrize("traced", [0.0], indirect=True)
def test_an_unsampled_request_opens_no_stage_span(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("POST /recommend") as root:
        assert root.is_recording() and not root.get_span_context().trace_flags.sampled  # BentoML's sampler
        pipeline_without_triton()
    assert traced.started.names == ["POST /recommend"] and traced.finished() == {}
    # a caller's sampled traceparent is followed (BentoML's ParentBased sampler): the tree is recorded
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    ctx = TraceContextTextMapPropagator().extract(carrier)
    with traced.tracer.start_as_current_span("POST /recommend", context=ctx):
        pipeline()
    spans = traced.finished()
    assert len(spans) == 8 and {s.context.trace_id for s in spans.values()} == {
        0x0AF7651916CD43DD8448EB211C80319C
    }


def pipeline_without_triton() -> None:
    for stage in ("cache", "history", "retrieval", "ranking", "rules"):
        with timed(stage):
            pass
    with tracing.span("triton_call") as span:
        assert span is None


def test_tracing_off_opens_no_span_even_when_the_request_is_sampled(traced: Traced) -> None:
    tracing.use(None)  # FOLIO_TRACING_EXPORTER=none, a caller's sampled traceparent notwithstanding
    with traced.tracer.start_as_current_span("POST /recommend"):
        pipeline_without_triton()
    assert list(traced.finished()) == ["POST /recommend"] and traced.started.names == ["POST /recommend"]


def log_line(message: str) -> dict[str, str]:
    record = logging.LogRecord("runners.test", logging.WARNING, __file__, 1, message, None, None)
    return json.loads(JsonLogFormatter().format(record))


def test_log_lines_carry_the_trace_id_next_to_the_request_id(traced: Traced) -> None:
    token = REQUEST_ID.set("req-42")
    try:
        with traced.tracer.start_as_current_span("POST /recommend") as root, timed("ranking"):
            line = log_line("Triton breaker opened")
        ctx = root.get_span_context()
        assert list(line)[3:6] == ["request_id", "trace_id", "span_id"]
        assert line["request_id"] == "req-42" and line["trace_id"] == f"{ctx.trace_id:032x}"
        assert line["span_id"] == f"{traced.finished()['ranking'].context.span_id:016x}"
        assert "trace_id" not in log_line("outside any request")
        tracing.use(None)
        with traced.tracer.start_as_current_span("POST /recommend"):
            assert "trace_id" not in log_line("tracing off")
    finally:
        REQUEST_ID.reset(token)


@pytest.mark.parametrize("traced", [0.0], indirect=True)
def test_an_unsampled_request_logs_no_trace_id(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("POST /recommend"):
        line = log_line("x")
    assert "trace_id" not in line and "span_id" not in line and line["message"] == "x"


def test_configure_uses_the_provider_bentoml_built(traced: Traced) -> None:
    from bentoml._internal.container import BentoMLContainer

    tracing.use(None)
    with BentoMLContainer.tracer_provider.patch(traced.provider):
        tracing.configure(Settings(tracing_exporter="otlp", tracing_endpoint=traced.sink.url))
        assert tracing.enabled()
        with traced.tracer.start_as_current_span("POST /recommend"), timed("cache"):
            pass
        assert set(traced.finished()) == {"POST /recommend", "cache"}
        tracing.configure(Settings())
        assert not tracing.enabled()
