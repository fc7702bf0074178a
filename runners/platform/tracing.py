"""Tracing: BentoML's built-in OpenTelemetry tracing, configured from ``FOLIO_TRACING_*``, and Folio's spans.

How it fits together:
- ``bentoml_config(settings)`` is the service's ``@bentoml.service(tracing=...)`` config: BentoML builds its
  tracer provider from it (``BentoMLContainer.tracer_provider``: an OTLP/HTTP exporter behind a batch
  processor, sampler ``ParentBasedTraceIdRatio(sample_rate)``: a sampled ``traceparent`` header is
  followed) and its ASGI middleware opens the server span of each request. Off (``none``): no exporter.
- ``configure(settings)`` (worker start-up) arms Folio's spans: a child span per pipeline stage
  (``metrics.timed``) and around the Triton call (``span``), from BentoML's provider, so they join the
  request's server span.
- The hot path: a stage opens a span only when tracing is on *and* the request's span is sampled. BentoML's
  sampler records every span (RECORD_ONLY) to know its trace id, so ``is_recording()`` says nothing; the
  trace flags do. Off, a stage pays one global check; on at 1 %, 99 % of requests also pay one context
  look-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import Token
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, StatusCode, TracerProvider
from opentelemetry.trace.propagation import _SPAN_KEY  # where get_current_span looks, without its checks

if TYPE_CHECKING:
    from runners.platform.settings import Settings

# Requests that are never traced: probes and scrapes (BentoML matches these as regexes on the URL).
EXCLUDED_URLS = ["/livez", "/readyz", "/metrics"]
OTLP_TRACES_PATH = "/v1/traces"

_tracer: trace.Tracer | None = None  # None: tracing off, no Folio span is ever opened


class Opened(NamedTuple):
    span: Span
    token: Token[Context]  # made ``span`` current


def otlp_endpoint(url: str) -> str:
    """The collector's traces URL: ``url`` as given, or with ``/v1/traces`` when it names no path."""
    return url.rstrip("/") + OTLP_TRACES_PATH if urlsplit(url).path in ("", "/") else url


def bentoml_config(settings: Settings) -> dict[str, Any]:
    """BentoML's ``tracing`` service config for ``settings`` (empty when tracing is off)."""
    if settings.tracing_exporter == "none" or not settings.tracing_endpoint:
        return {}
    return {
        "exporter_type": "otlp",
        "sample_rate": settings.tracing_sample_rate,
        "excluded_urls": EXCLUDED_URLS,
        "otlp": {"protocol": "http", "endpoint": otlp_endpoint(settings.tracing_endpoint)},
    }


def configure(settings: Settings) -> None:
    """Arm (or disarm) Folio's spans in this worker, from the provider BentoML built for its config."""
    if settings.tracing_exporter == "none":
        use(None)
        return
    from bentoml._internal.container import BentoMLContainer

    use(BentoMLContainer.tracer_provider.get())


def use(provider: TracerProvider | None) -> None:
    """Open Folio's spans from ``provider`` (None: never). ``configure`` calls it; tests hand in theirs."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("folio")


def enabled() -> bool:
    return _tracer is not None


def _sampled() -> bool:
    """The current span is sampled, in about 250 ns (the public ``get_current_span().get_span_context()
    .trace_flags.sampled`` takes about 500 on a 2-core CI machine)."""
    current: Span | None = otel_context.get_current().get(_SPAN_KEY)  # type: ignore[assignment]
    return current is not None and bool(current.get_span_context().trace_flags & 1)


def start(name: str) -> Opened | None:
    """A child span of the current one, made current; None (and nothing done) unless tracing is on and
    the current span is sampled. Close with ``end``."""
    if _tracer is None or not _sampled():
        return None
    span = _tracer.start_span(name)
    return Opened(span, otel_context.attach(trace.set_span_in_context(span)))


def end(opened: Opened, error: BaseException | None = None) -> None:
    otel_context.detach(opened.token)
    if error is not None:
        opened.span.record_exception(error)
        opened.span.set_status(StatusCode.ERROR, type(error).__name__)
    opened.span.end()


@contextmanager
def span(name: str) -> Iterator[Span | None]:
    """``start``/``end`` as a context manager: yields the span (set attributes on it) or None."""
    opened = start(name)
    if opened is None:
        yield None
        return
    error: BaseException | None = None
    try:
        yield opened.span
    except BaseException as exc:
        error = exc
        raise
    finally:
        end(opened, error)


def log_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the sampled span being served, for the JSON logs; else None."""
    if _tracer is None or not _sampled():
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
