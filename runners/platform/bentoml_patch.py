"""Fixes applied to BentoML 1.4 and the uvicorn under it at import of the service (upstream code, not ours).

``install()`` applies them all, before BentoML builds the app and the worker builds its uvicorn server.
Each patch of upstream internals checks the release it was written against (``_UPSTREAM``) and the
names it replaces; on another release it logs a warning and leaves upstream as it is (the unit tests
pin each fix on the installed release, so an upgrade that drops one fails there).

1. Request timers. BentoML's ``TimeoutMiddleware`` (``traffic.timeout``) schedules
   ``loop.call_later(timeout, ...)`` for every request and never cancels it, so each request's timer,
   future and context (with its tracing span) stay alive for the whole timeout (30 s here) after the
   answer left: ~20 objects a request, 60,000 at 100 req/s. Every full garbage collection walks them;
   at 100 req/s one ran every ~8 s and stopped the event loop for 60-190 ms, the whole cache-miss p99.
   The replacement ``__call__`` has the same logic and cancels the timer once the response has started.
2. Client errors logged as such. BentoML logs every 400 (a body that fails validation) with a full
   traceback at ERROR. A 4xx caused by the request (validation while parsing it, or a BentoML 4xx
   exception) is logged as one INFO line instead; anything else keeps BentoML's ERROR + traceback.
3. Forwarded headers. uvicorn's ProxyHeadersMiddleware is on by default (BentoML builds its
   ``uvicorn.Config`` without proxy options) and takes ``X-Forwarded-For`` from ``FORWARDED_ALLOW_IPS``,
   default 127.0.0.1: any local client could rotate that header past the per-address rate limit.
   ``FORWARDED_ALLOW_IPS`` is set to ``FOLIO_TRUSTED_PROXIES`` (empty by default: trust nobody), which
   uvicorn reads when the worker builds its Config, after it has imported the service.
4. Request-head timeout. uvicorn (h11 and httptools alike) times out nothing before a request head is
   complete: its keep-alive timer runs only between requests and stops at the first byte, and a fresh
   connection has no timer at all, so a client that sends its headers slowly holds a connection (and a
   file descriptor) forever. Nothing in uvicorn's or BentoML's configuration bounds it
   (``timeout_keep_alive`` and ``h11_max_incomplete_event_size`` don't). The protocol classes get a
   timer, armed when a connection opens and after each response, that closes the connection when no
   complete head arrived within ``FOLIO_REQUEST_HEAD_TIMEOUT_S``.
5. The OpenAPI document (/docs.json) says what the server really answers: ``runners/http/openapi.py``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

from runners.platform.metrics import HEAD_TIMEOUTS
from runners.platform.settings import Settings, load_settings

log = logging.getLogger(__name__)
client_log = logging.getLogger("runners.http")

# (distribution, first release checked, first release not checked) for each patched upstream
_UPSTREAM = {"bentoml": ((1, 4), (1, 5)), "uvicorn": ((0, 30), (0, 60))}


def release(dist: str) -> tuple[int, int]:
    major, minor = [*importlib.metadata.version(dist).split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def supported(dist: str, what: str) -> bool:
    """Whether ``dist``'s installed release is one this module's patches were written against."""
    low, high = _UPSTREAM[dist]
    found = release(dist)
    if low <= found < high:
        return True
    log.warning("%s %s.%s is not a checked release: %s not applied (see %s)", dist, *found, what, __name__)
    return False


# ---------------------------------------------------------------------------------- 1. request timers
async def _call_cancelling_timer(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: dict[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            body = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(body, status_code=504)(scope, receive, send)
            return
    finally:
        timer.cancel()
    await fut


# ------------------------------------------------------------------------- 2. client errors, one line
_PARSING_FRAMES = frozenset({"from_http_request", "parse_request", "deserialize_model"})


def client_error(exc: BaseException | None) -> tuple[int, str] | None:
    """(status, one-line summary) when ``exc`` is the request's fault, else None."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        tb: types.TracebackType | None = exc.__traceback__
        frames = set()
        while tb is not None:
            frames.add(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        if not frames & _PARSING_FRAMES:
            return None  # a model built by the endpoint failed: a server bug, keep the traceback
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_context=False, include_input=False)[:5]
        )
        return 400, f"{exc.error_count()} validation error(s) for {exc.title}: {problems}"[:500]
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return exc.error_code.value, f"{type(exc).__name__}: {exc}"[:500]
    return None


def _quiet_client_errors(app_module: Any) -> None:
    original = app_module.log_exception
    if getattr(original, "__folio__", False):
        return

    def log_exception(request: Any, exc_info: Any = True) -> None:
        found = client_error(sys.exc_info()[1])
        if found is None:
            original(request, exc_info)
            return
        status, summary = found
        client_log.info("%s %s answered %d: %s", request.method, request.url.path, status, summary)

    log_exception.__folio__ = True  # type: ignore[attr-defined]
    app_module.log_exception = log_exception


# ------------------------------------------------------------------------------ 3. forwarded headers
def trust_forwarded_headers_from(proxies: Iterable[str]) -> None:
    """X-Forwarded-For/-Proto are believed only from these addresses or networks (none: from nobody)."""
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(p.strip() for p in proxies if p.strip())


# -------------------------------------------------------------------------- 4. request-head timeout
def _arm_head_timer(protocol: Any) -> None:
    timer = getattr(protocol, "_folio_head_timer", None)
    if timer is not None:
        timer.cancel()
    protocol._folio_head_timer = None
    if not protocol.transport.is_closing():
        seconds = type(protocol)._folio_head_timeout_s
        protocol._folio_head_timer = protocol.loop.call_later(seconds, _head_timed_out, protocol)


def _head_timed_out(protocol: Any) -> None:
    protocol._folio_head_timer = None
    transport, cycle = protocol.transport, protocol.cycle
    if transport.is_closing() or transport.get_protocol() is not protocol:  # closed, or upgraded
        return
    if cycle is not None and not cycle.response_complete:
        return  # a request head arrived: its body and answer are bounded by the request timeout
    HEAD_TIMEOUTS.inc()
    log.info(
        "closed a connection from %s: no complete request head within %ss",
        (protocol.client or ("?",))[0],
        type(protocol)._folio_head_timeout_s,
    )
    transport.close()


def _bound_head(cls: Any, seconds: float) -> None:
    cls._folio_head_timeout_s = seconds
    if "_folio_head_timeout_patched" in cls.__dict__:
        return
    made: Callable[..., None] = cls.connection_made
    lost: Callable[..., None] = cls.connection_lost
    completed: Callable[..., None] = cls.on_response_complete

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        _arm_head_timer(self)

    def on_response_complete(self: Any) -> None:
        completed(self)
        _arm_head_timer(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        timer = getattr(self, "_folio_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._folio_head_timer = None
        lost(self, exc)

    cls.connection_made = connection_made
    cls.on_response_complete = on_response_complete
    cls.connection_lost = connection_lost
    cls._folio_head_timeout_patched = True


def http_protocols() -> list[type]:
    """uvicorn's HTTP/1.1 protocol classes that ``http="auto"`` (BentoML's choice) can pick."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    found: list[type] = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: auto picks h11
        pass
    else:
        found.append(HttpToolsProtocol)
    return found


def bound_request_head(seconds: float) -> None:
    if not supported("uvicorn", "the request-head timeout"):
        return
    for cls in http_protocols():
        names = ("connection_made", "connection_lost", "on_response_complete")
        if all(callable(getattr(cls, n, None)) for n in names):
            _bound_head(cls, seconds)
        else:
            log.warning("%s lacks %s: the request-head timeout is not applied", cls.__name__, names)


# ------------------------------------------------------------------------------------------ install
def install(settings: Settings | None = None) -> None:
    """Idempotent; ``settings`` default to ``load_settings()``."""
    settings = settings or load_settings()
    if supported("bentoml", "the request-timer and client-error fixes"):
        from _bentoml_impl.server import app as bentoml_app

        traffic.TimeoutMiddleware.__call__ = _call_cancelling_timer  # type: ignore[method-assign,assignment]
        _quiet_client_errors(bentoml_app)
    trust_forwarded_headers_from(settings.trusted_proxies)
    bound_request_head(settings.request_head_timeout_s)
    from runners.http import openapi

    openapi.install()
