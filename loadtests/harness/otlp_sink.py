"""A minimal OTLP/HTTP trace receiver on loopback: what a collector would get from Folio, decoded.

Tests point ``FOLIO_TRACING_ENDPOINT`` at it and read the spans back; benchmarks run it so tracing at
1 % exports somewhere real without a collector::

    python -m loadtests.harness.otlp_sink --port 4318     # then FOLIO_TRACING_ENDPOINT=http://127.0.0.1:4318

It answers ``POST /v1/traces`` (protobuf, gzip or not) like a collector and keeps every span it was sent.
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from runners.platform.processes import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # hex, as in the JSON logs
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    status: str  # "STATUS_CODE_UNSET" | "STATUS_CODE_OK" | "STATUS_CODE_ERROR"
    service: str  # the resource's service.name


@dataclass
class OtlpSink:
    """``with OtlpSink() as sink:`` serves on ``sink.url`` until the block ends."""

    port: int = 0
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, predicate: Any, timeout_s: float) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds; AssertionError naming what came after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.received()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"after {timeout_s}s the sink holds {len(spans)} spans: {names}")
            time.sleep(0.1)

    def _add(self, body: bytes) -> None:
        req = ExportTraceServiceRequest.FromString(body)
        got = []
        for rs in req.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: next(iter(MessageToDict(a.value).values()), None) for a in s.attributes}
                    got.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes=attrs,
                            status=Status.StatusCode.Name(s.status.code),
                            service=resource.get("service.name", ""),
                        )
                    )
        with self._lock:
            self.spans.extend(got)
            self.requests += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404, "only /v1/traces")
                    return
                try:
                    sink._add(body)
                except Exception as exc:  # a malformed export: say so, as a collector would
                    self.send_error(400, f"not an ExportTraceServiceRequest: {exc}")
                    return
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    with OtlpSink(port=args.port) as sink:
        print(f"OTLP/HTTP sink on {sink.url}/v1/traces (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(10)
                print(f"{sink.requests} exports, {len(sink.received())} spans", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
