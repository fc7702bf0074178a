"""Hostile HTTP against a real `bentoml serve` (default mode: no API keys, per-address rate limit):
lying body framing, cross-site content types, rotated X-Forwarded-For, slow request heads, and the
log and /docs.json answers to client errors.

One server for the module, rate limited to 1 request/s (burst 2) per client address. Each request is
sent from its own loopback address (127.0.0.N, all of 127/8 is local) so the tests don't share a
bucket; only the X-Forwarded-For test uses 127.0.0.1, the address uvicorn trusts by default.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import psutil
import pytest

from runners.platform.processes import ServedFolio
from tests.openapi_doc import resolved

pytestmark = pytest.mark.integration
HEAD_TIMEOUT_S = 2.0
_ADDRESSES = (f"127.0.{b}.{c}" for b, c in itertools.product(range(1, 250), range(2, 250)))


@pytest.fixture(scope="module")
def served(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("hostile")
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_TRITON_URL": "127.0.0.1:1",  # nothing listens: ranking falls back, no Triton needed here
        "FOLIO_MODEL_WATCH_S": "0",
        "FOLIO_CACHE_TTL_S": "0",
        "FOLIO_RATE_LIMIT_RPS": "1",
        "FOLIO_RATE_LIMIT_BURST": "2",
        "FOLIO_REQUEST_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
    }
    with ServedFolio(env, tmp / "serve.log") as server:
        yield server


def call(
    served: ServedFolio, route: str, body: Any = None, *, content: bytes | None = None, **headers: str
) -> httpx.Response:
    """One POST from a fresh loopback address (a bucket of its own)."""
    transport = httpx.HTTPTransport(local_address=next(_ADDRESSES))
    with httpx.Client(base_url=served.url, transport=transport, timeout=30) as client:
        if body is not None:
            return client.post(route, json=body, headers=headers)
        return client.post(route, content=content, headers=headers)


def worker_rss_mb(served: ServedFolio) -> float:
    assert served.proc is not None
    tree = [psutil.Process(served.proc.pid), *psutil.Process(served.proc.pid).children(recursive=True)]
    return sum(p.memory_info().rss for p in tree if "tritonserver" not in p.name()) / 2**20


def documented(served: ServedFolio, route: str, response: httpx.Response) -> None:
    """The response's status, body and required headers are what /docs.json says for POST ``route``."""
    spec = httpx.get(f"{served.url}/docs.json", timeout=30).json()
    responses = spec["paths"][route]["post"]["responses"]
    doc = responses.get(str(response.status_code))
    assert doc is not None, f"{route} answered {response.status_code}, documented: {sorted(responses)}"
    schema = doc["content"]["application/json"]["schema"]
    jsonschema.Draft4Validator(resolved(spec, schema)).validate(response.json())
    for name, header in doc.get("headers", {}).items():
        assert not header.get("required") or name.lower() in response.headers, (route, name)


def test_a_chunked_body_that_lies_in_content_length_is_cut_at_the_limit(served: ServedFolio) -> None:
    total = 32 * 2**20  # the default limit is 1 MB
    before = worker_rss_mb(served)
    sock = socket.create_connection(("127.0.0.1", served.port), source_address=(next(_ADDRESSES), 0))
    sock.sendall(
        b"POST /feedback HTTP/1.1\r\nHost: folio\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent, cut = 0, False
    try:
        while sent < total:
            sock.sendall(frame)
            sent += len(chunk)
    except OSError:  # the server closed the connection
        cut = True
    sock.settimeout(10)
    answer = b""
    try:
        while data := sock.recv(65536):
            answer += data
    except OSError:
        cut = True
    sock.close()
    assert cut or answer, "the server neither answered nor closed the connection"
    assert sent < total, f"the server read all {sent >> 20} MB"
    if answer:  # a reset can beat the answer to the client; when it arrived it is the 413
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower(), head
        assert json.loads(body) == {"error": "request body over 1000000 bytes"}
    assert worker_rss_mb(served) - before < 20
    # chunked bodies under the limit are accepted, counted
    ok = call(served, "/trending", content=iter([b'{"k":', b" 3}"]), **{"Content-Type": "application/json"})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


@pytest.mark.parametrize(
    ("kind", "content", "content_type"),
    [
        ("text", b'{"user_id": "VICTIM"}', "text/plain"),
        ("form", b"user_id=VICTIM", "application/x-www-form-urlencoded"),
        ("multipart without boundary", b'{"user_id": "VICTIM"}', "multipart/form-data"),
        (
            "multipart",
            b'--x\r\nContent-Disposition: form-data; name="user_id"\r\n\r\nVICTIM\r\n--x--\r\n',
            "multipart/form-data; boundary=x",
        ),
    ],
)
def test_cross_site_content_types_are_415_and_change_nothing(
    served: ServedFolio, kind: str, content: bytes, content_type: str
) -> None:
    user = f"victim-{kind.replace(' ', '-')}"
    events = [{"user_id": user, "item_id": f"b{b}", "event": "purchase"} for b in range(40, 46)]
    assert call(served, "/feedback/batch", {"events": events}).status_code == 200
    assert call(served, "/recommend", {"user_id": user}).json()["cold_start"] is False
    forged = content.replace(b"VICTIM", user.encode())
    forget = call(served, "/forget", content=forged, **{"Content-Type": content_type})
    assert forget.status_code == 415, forget.text
    assert "Content-Type: application/json" in forget.json()["error"]
    documented(served, "/forget", forget)
    # a feedback event posted the same way is not recorded either
    stranger = f"stranger-{kind.replace(' ', '-')}"
    body = json.dumps({"user_id": stranger, "item_id": "b1", "event": "click"}).encode()
    assert call(served, "/feedback", content=body, **{"Content-Type": content_type}).status_code == 415
    kept = call(served, "/recommend", {"user_id": user}).json()
    assert kept["cold_start"] is False  # the victim's history is still there
    assert call(served, "/recommend", {"user_id": stranger}).json()["cold_start"] is True


def test_rotating_x_forwarded_for_does_not_escape_the_address_rate_limit(served: ServedFolio) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:  # from 127.0.0.1
        answers = [
            client.post("/trending", json={}, headers={"X-Forwarded-For": f"203.0.113.{n}"}) for n in range(6)
        ]
    statuses = [r.status_code for r in answers]
    assert statuses.count(429) >= 3, statuses
    limited = next(r for r in answers if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    documented(served, "/trending", limited)


def test_a_client_error_logs_one_line_without_a_traceback(served: ServedFolio) -> None:
    rid = "bad-body-" + str(time.time_ns())
    bad = call(served, "/recommend", {"user_id": "", "k": 0}, **{"X-Request-ID": rid})
    assert bad.status_code == 400 and isinstance(bad.json()["detail"], list)
    time.sleep(0.5)  # the log line is written after the answer
    log = served.log_file.read_text(errors="replace")
    lines = [json.loads(line) for line in log.splitlines() if rid in line and line.startswith("{")]
    assert [(e["level"], e["logger"]) for e in lines] == [("INFO", "runners.http")], lines
    assert "answered 400: 2 validation error(s)" in lines[0]["message"]
    since = log[log.index(rid) :]  # nothing else runs meanwhile: what the request made the server log
    assert "Traceback" not in since and "Exception on /recommend" not in log
    documented(served, "/recommend", bad)


def test_docs_json_lists_the_error_codes_the_server_sends(served: ServedFolio) -> None:
    spec = httpx.get(f"{served.url}/docs.json", timeout=30).json()
    codes = {p: sorted(op["post"]["responses"]) for p, op in spec["paths"].items() if "post" in op}
    common = {"200", "400", "401", "413", "415", "429", "500", "503", "504"}  # 503: admission control
    assert set(codes["/similar"]) == common | {"404"}
    assert set(codes["/feedback"]) == common | {"404", "409"}
    assert set(codes["/admin/catalog/withdraw"]) == common | {"403", "404"}
    assert set(codes["/forget"]) == common
    assert set(codes["/admin/reload"]) == common | {"403", "409"}
    detail = resolved(spec, spec["paths"]["/recommend"]["post"]["responses"]["400"]["content"])
    assert "array" in json.dumps(detail)
    variant = spec["components"]["schemas"]["RecommendRequestIODescriptor"]["properties"]["variant"]
    assert variant["enum"] == ["int8", "fp16", "fp32", "default", None] and variant["nullable"] is True
    documented(served, "/similar", call(served, "/similar", {"item_id": "no-such-book"}))  # 404
    documented(served, "/admin/reload", call(served, "/admin/reload", {}))  # 403: no API keys here
    off = call(served, "/admin/catalog/withdraw", {"item_ids": ["b1"]})
    assert off.status_code == 403
    documented(served, "/admin/catalog/withdraw", off)
    big = call(served, "/info", content=b"{}" + b" " * 2_000_000, **{"Content-Type": "application/json"})
    assert big.status_code == 413 and big.headers["connection"] == "close"
    documented(served, "/info", big)


def test_slow_request_heads_are_cut(served: ServedFolio) -> None:
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", served.port), source_address=(next(_ADDRESSES), 0))
        sock.sendall(b"POST /info HTTP/1.1\r\nHost: folio\r\n")
        sock.setblocking(False)
        socks.append(sock)
    start, closed = time.monotonic(), {}
    while len(closed) < len(socks) and time.monotonic() - start < HEAD_TIMEOUT_S + 15:
        for n, sock in enumerate(socks):
            if n in closed:
                continue
            try:
                sock.send(b"X-Slow: 1\r\n")
                if sock.recv(1024) == b"":
                    closed[n] = time.monotonic() - start
            except BlockingIOError:
                pass
            except OSError:
                closed[n] = time.monotonic() - start
        time.sleep(0.25)
    for sock in socks:
        sock.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} slow connections still open"
    assert min(closed.values()) >= HEAD_TIMEOUT_S * 0.9
    assert call(served, "/info", {}).status_code == 200  # the server still serves
