"""The fixes to BentoML and uvicorn: TimeoutMiddleware's timers are cancelled once answered (the
timeout still works); client errors log one line; forwarded headers are believed only from named
proxies; a connection that does not send a complete request head in time is closed. And their guard:
BentoML pinned to the release they were written against, nothing patched at import, everything when the
app is built, and an upstream of another shape refused with a clear error, leaving it untouched."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from typing import Any

import bentoml
import pytest
import uvicorn
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http import traffic
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from pydantic import BaseModel, Field
from starlette.testclient import TestClient

from runners.platform import bentoml_patch
from runners.platform.bento_image import FLAVOURS, lock_path, read_lock
from runners.platform.settings import Settings
from tests.paths import ROOT


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/slow":
        await asyncio.sleep(5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(path: str, timeout: float) -> tuple[list[dict[str, Any]], int]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    middleware = TimeoutMiddleware(_app, timeout=timeout)
    await middleware({"type": "http", "path": path, "headers": []}, receive, send)
    loop = asyncio.get_running_loop()
    pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    return sent, len(pending)


def test_answered_requests_leave_no_timer_behind() -> None:
    bentoml_patch.install()
    sent, pending = asyncio.run(_call("/fast", timeout=30))
    assert sent[0]["status"] == 200 and pending == 0


def test_timeout_still_answers_504() -> None:
    bentoml_patch.install()
    sent, _ = asyncio.run(_call("/slow", timeout=0.05))
    assert sent[0]["status"] == 504


# --------------------------------------------------------------- client errors: one line, no traceback
class Body(BaseModel):
    n: int = Field(ge=0)


@bentoml.service
class Tiny:
    @bentoml.api
    def echo(self, body: Body, /) -> Body:
        return body

    @bentoml.api
    def broken(self) -> dict[str, int]:
        Body(n=-1)  # a bug in the endpoint: BentoML answers 400 too, but it must keep its traceback
        return {}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def logs() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("runners.http", "bentoml._internal.server.http_app")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture(scope="module")
def tiny() -> Iterator[TestClient]:
    """The tiny service's real BentoML app (without BentoML's metrics: they register once a process)."""
    bentoml_patch.install()
    Tiny.inject_config()
    with TestClient(ServiceAppFactory(Tiny, is_main=True, enable_metrics=False)()) as client:
        yield client


def test_a_client_validation_error_logs_one_info_line_without_traceback(
    tiny: TestClient, logs: Records
) -> None:
    for body in (b'{"n": -1}', b"not json"):
        r = tiny.post("/echo", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400
    assert [r.levelno for r in logs.records] == [logging.INFO, logging.INFO]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in logs.records)
    assert "POST /echo answered 400: 1 validation error(s)" in logs.records[0].getMessage()
    assert "n: Input should be greater than or equal to 0" in logs.records[0].getMessage()


def test_a_validation_error_inside_an_endpoint_keeps_its_error_and_traceback(
    tiny: TestClient, logs: Records
) -> None:
    assert tiny.post("/broken", json={}).status_code == 400
    assert [r.levelno for r in logs.records] == [logging.ERROR] and logs.records[0].exc_info


# ---------------------------------------------------------------------------- forwarded headers
def _client_seen_by_app(xff: str) -> tuple[str, int] | None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get("client"))

    config = uvicorn.Config(app, lifespan="off")  # as BentoML's worker builds it: no proxy options
    config.load()
    scope = {"type": "http", "client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", xff.encode())]}
    asyncio.run(config.loaded_app(scope, None, None))
    return seen[0]


def test_forwarded_headers_are_trusted_only_from_the_named_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")  # so that monkeypatch restores it
    bentoml_patch.install()  # FOLIO_TRUSTED_PROXIES unset: trust nobody
    assert _client_seen_by_app("10.1.2.3") == ("127.0.0.1", 5000)
    bentoml_patch.trust_forwarded_headers_from(["10.0.0.0/8", "127.0.0.1"])
    assert _client_seen_by_app("10.1.2.3, 203.0.113.9") == ("203.0.113.9", 0)


# ------------------------------------------------------------------------- request-head timeout
async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _closed_after(writer_steps: list[bytes], seconds: float) -> tuple[float | None, bytes]:
    """(seconds until uvicorn closed a connection that sent ``writer_steps`` (one every 0.1 s, then
    nothing), or None when it was still open after ``seconds``; what it answered)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_ok, lifespan="off", log_level="warning", http="h11")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection(*sock.getsockname())
    start, answer = time.monotonic(), b""

    async def read() -> None:
        nonlocal answer
        while data := await reader.read(1024):
            answer += data

    reading = asyncio.create_task(read())
    try:
        for step in writer_steps:
            writer.write(step)
            await asyncio.sleep(0.1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, seconds - (time.monotonic() - start))
            return time.monotonic() - start, answer
        return None, answer
    finally:
        writer.close()
        server.should_exit = True
        await serving


@pytest.fixture()
def head_timeout() -> Iterator[float]:
    bentoml_patch.bound_request_head(0.5)
    yield 0.5
    bentoml_patch.bound_request_head(Settings().request_head_timeout_s)


@pytest.mark.parametrize(
    "steps",
    [
        [],  # a connection that never sends anything
        [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-Slow: 1\r\n", b"X-Slow: 2\r\n", b"X-Slow: 3\r\n"] * 2,
        [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\n", b"X-Slow: 1\r\n"] + [b"X: 1\r\n"] * 8,
    ],
    ids=["silent", "slow-head", "slow-second-head"],
)
def test_a_connection_without_a_complete_request_head_is_closed(
    steps: list[bytes], head_timeout: float
) -> None:
    closed, answer = asyncio.run(_closed_after(steps, seconds=4))
    assert closed is not None and head_timeout <= closed < head_timeout + len(steps) * 0.1 + 1
    assert answer.count(b"200 OK") == (1 if b"\r\n\r\n" in b"".join(steps) else 0)


def test_a_slow_body_after_a_complete_head_is_not_cut(head_timeout: float) -> None:
    head = [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"]
    closed, answer = asyncio.run(_closed_after(head + [b"x"] * 12, seconds=4))  # 1.3 s of body
    assert closed is not None and closed > 1.2 and answer.startswith(b"HTTP/1.1 200")


# ------------------------------------------------------------------------------------------- guard
def upstream() -> dict[str, Any]:
    """The upstream objects the fixes replace, and the variable uvicorn reads, as they are now."""
    from _bentoml_impl.server import app
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return {
        "timer": traffic.TimeoutMiddleware.__dict__["__call__"],
        "log": app.log_exception,
        "docs": app.ServiceAppFactory.__dict__["openapi_spec_view"],
        **{
            n: H11Protocol.__dict__[n] for n in ("connection_made", "connection_lost", "on_response_complete")
        },
        "FORWARDED_ALLOW_IPS": os.environ.get("FORWARDED_ALLOW_IPS"),
    }


def patched(found: dict[str, Any]) -> dict[str, bool]:
    return {k: getattr(v, "__folio__", False) for k, v in found.items() if k != "FORWARDED_ALLOW_IPS"}


def _fresh_python(code: str) -> str:
    """Runs ``code`` in a new interpreter at the repository root (nothing patched yet); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "FORWARDED_ALLOW_IPS"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_bentoml_is_pinned_to_the_release_the_fixes_were_written_against() -> None:
    pinned = bentoml_patch.WRITTEN_AGAINST
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"bentoml=={pinned['bentoml']}" in dependencies
    for flavour in FLAVOURS:
        lock = read_lock(lock_path(ROOT, flavour))
        assert {"bentoml": lock["bentoml"], "uvicorn": lock["uvicorn"]} == pinned
    assert {d: importlib.metadata.version(d) for d in pinned} == pinned
    assert bentoml_patch.upstream_problems() == []


def test_install_applies_every_fix_and_is_idempotent() -> None:
    bentoml_patch.install()
    first = upstream()
    assert all(patched(first).values())
    bentoml_patch.install()
    assert upstream() == first
    assert bentoml_patch.upstream_problems() == []  # the patched targets are checked as they were


def test_importing_the_service_patches_nothing_and_building_its_app_patches_everything() -> None:
    out = _fresh_python(
        """
from runners.serving import fleet
from tests.unit.runners.platform.test_bentoml_patch import patched, upstream

fleet.primary_tag = lambda settings: "folio:stand-in"  # the app is built, never started: no model needed
before = upstream()
assert before["FORWARDED_ALLOW_IPS"] is None and not any(patched(before).values()), before
import service
assert upstream() == before, "importing service.py patched upstream"
app = service.Recommender.to_asgi()  # what the BentoML worker does after importing the service
after = upstream()
assert all(patched(after).values()) and after["FORWARDED_ALLOW_IPS"] == "", after
from runners.http.admission import AdmissionMiddleware
assert isinstance(app, AdmissionMiddleware), app  # admission control wraps BentoML's whole app
docs = next(r for r in app.app.routes if getattr(r, "path", None) == "/docs.json")
assert docs.endpoint.__func__ is after["docs"], docs.endpoint
print("checked")
"""
    )
    assert out.strip().endswith("checked")


class _NewArgument(TimeoutMiddleware):  # a release whose __call__ takes one more argument
    async def __call__(self, scope: Any, receive: Any, send: Any, extra: Any = None) -> None:
        await self.app(scope, receive, send)


class _NewBody(TimeoutMiddleware):  # the same signature, another body (which the fix would drop)
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class _NoTimerOut:  # the private method the replacement calls is gone
    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("stand_in", "difference"),
    [
        (
            _NewArgument,
            "TimeoutMiddleware.__call__: parameters ('self', 'scope', 'receive', 'send', 'extra'), "
            "expected ('self', 'scope', 'receive', 'send')",
        ),
        (_NewBody, "TimeoutMiddleware.__call__: source changed"),
        (_NoTimerOut, "TimeoutMiddleware._set_timer_out: missing"),
    ],
    ids=["new-argument", "new-body", "no-timer-out"],
)
def test_a_middleware_of_another_shape_is_refused_loudly_and_left_untouched(
    stand_in: type, difference: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(traffic, "TimeoutMiddleware", stand_in)  # as another 1.4.x would have it
    monkeypatch.setattr(bentoml_patch, "installed", {"bentoml": "1.4.41", "uvicorn": "0.54.0"}.get)
    call = stand_in.__dict__["__call__"]
    with pytest.raises(bentoml_patch.UpstreamChanged) as refused:
        bentoml_patch.install()
    message = str(refused.value)
    assert "none was applied and the service does not start" in message
    assert "Found bentoml 1.4.41, uvicorn 0.54.0; the fixes were written against bentoml 1.4.40" in message
    assert difference in message
    assert "Install the pinned release (bentoml==1.4.40 in pyproject.toml" in message
    assert stand_in.__dict__["__call__"] is call
    assert not bentoml_patch.supported("bentoml", "the /docs.json corrections")  # openapi.install's check


def test_a_refused_upstream_is_left_entirely_as_it_was() -> None:
    out = _fresh_python(
        """
from bentoml._internal.server.http import traffic
from runners.platform import bentoml_patch
from tests.unit.runners.platform.test_bentoml_patch import upstream

def _set_timer_out(self, waiter, reason): ...

traffic.TimeoutMiddleware._set_timer_out = _set_timer_out  # one target of another shape
before = upstream()
try:
    bentoml_patch.install()
except bentoml_patch.UpstreamChanged as exc:
    print(exc)
else:
    raise SystemExit("installed on an upstream of another shape")
assert upstream() == before, "a refused install patched something"
"""
    )
    assert "none was applied" in out
    assert "_set_timer_out: parameters ('self', 'waiter', 'reason'), expected ('self', 'waiter')" in out
