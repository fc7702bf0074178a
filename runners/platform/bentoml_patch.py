"""Fixes to BentoML 1.4.40 and the uvicorn under it (upstream code, not ours), applied when the worker
builds the app, each checked against the upstream code it was written for.

When. Importing this module, or service.py, patches nothing. ``install()`` applies every fix; the entry
service is declared with ``@bentoml.service(service_class=PatchedService)``, whose ``to_asgi`` calls it
first. In BentoML 1.4 the HTTP worker (``_bentoml_impl/worker/service.py``) imports service.py, builds
the app with ``service.to_asgi()``, then ``uvicorn.Config`` and the server: ``to_asgi`` is the first
BentoML call on the service after its import, and the last point where every fix still takes effect, as
``to_asgi`` binds the /docs.json view (5) into the routes and ``uvicorn.Config`` reads
``FORWARDED_ALLOW_IPS`` (3) when built. The service's ``__init__`` and ``@bentoml.on_startup`` hooks run
in the app's lifespan, after both: too late. So ``bentoml build``, the tests and the supervisor process,
which import service.py without building its app, leave BentoML and uvicorn as they are.

Guard. The fixes were written against bentoml 1.4.40 (``WRITTEN_AGAINST``; pyproject.toml pins it, the
lock files in deploy/requirements/ pin both) and uvicorn 0.54.0. Before patching anything, ``install()``
checks the shape of every upstream target (``_shapes``: it exists, its parameters, the private names the
fix uses, and for a method a fix replaces whole, a hash of its source) and on any difference raises
``UpstreamChanged``, naming the versions found and expected and each difference, with nothing patched:
the worker stops before it serves a request. The shape decides: another release whose targets have the
same shape is patched, one outside the releases checked (``_UPSTREAM``) with a warning.

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
   uvicorn reads when the worker builds its Config, after it has built the app.
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
import hashlib
import importlib
import importlib.metadata
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import bentoml
from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

from runners.platform.metrics import HEAD_TIMEOUTS
from runners.platform.settings import Settings, load_settings

log = logging.getLogger(__name__)
client_log = logging.getLogger("runners.http")

# The releases the fixes were written against: pyproject.toml pins bentoml to its, the lock files
# (deploy/requirements/) pin both. Another release is patched only if every target has the same shape.
WRITTEN_AGAINST = {"bentoml": "1.4.40", "uvicorn": "0.54.0"}
# (distribution, first release checked, first release not checked) for each patched upstream
_UPSTREAM = {"bentoml": ((1, 4), (1, 5)), "uvicorn": ((0, 30), (0, 60))}


def release(dist: str) -> tuple[int, int]:
    major, minor = [*importlib.metadata.version(dist).split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def installed(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def supported(dist: str, what: str) -> bool:
    """Whether ``what`` may patch ``dist``: its targets have the shape the fixes were written against
    (``upstream_problems``, which decides); a release outside ``_UPSTREAM`` only adds a warning."""
    problems = upstream_problems((dist,))
    if problems:
        log.warning("%s %s changed: %s not applied (%s): %s", dist, installed(dist), what, __name__, problems)
        return False
    low, high = _UPSTREAM[dist]
    found = release(dist)
    if not low <= found < high:
        log.warning("%s %s.%s is not a checked release; its shape matches: %s applied", dist, *found, what)
    return True


# ------------------------------------------------------------------------------ the upstream shapes
class UpstreamChanged(RuntimeError):
    """Upstream code a fix replaces or relies on is not what it was written against: nothing patched."""


class Shape(NamedTuple):
    """What a fix needs of one upstream object, ``"module:Qualified.name"``."""

    dist: str
    target: str
    params: tuple[str, ...] | None = None  # its signature's parameter names (None: not a function)
    sha256: str | None = None  # of its source: the fix replaces it whole, so its body must be this one
    mentions: tuple[str, ...] = ()  # in its source: the attributes and calls the fix relies on


_TRAFFIC = "bentoml._internal.server.http.traffic:TimeoutMiddleware"
_APP = "_bentoml_impl.server.app"
_PROTOCOL_ATTRIBUTES = ("self.transport =", "self.loop =", "self.cycle =", "self.client =")
_SHAPES = (
    # 1. request timers: __call__ replaced, reading self.app, self.timeout and self._set_timer_out
    Shape(
        "bentoml",
        _TRAFFIC + ".__init__",
        ("self", "app", "timeout"),
        mentions=("self.app =", "self.timeout ="),
    ),
    Shape(
        "bentoml",
        _TRAFFIC + ".__call__",
        ("self", "scope", "receive", "send"),
        "fd8b9e3da28ed2b44cfd508d641617e049fcd4986138197ce7bb227332505896",
    ),
    Shape("bentoml", _TRAFFIC + "._set_timer_out", ("self", "waiter")),
    # 2. client errors: the module global log_exception wrapped, as the endpoints call it; a
    # ValidationError is the client's when raised under these frames (_PARSING_FRAMES)
    Shape("bentoml", f"{_APP}:log_exception", ("request", "exc_info")),
    Shape("bentoml", f"{_APP}:ServiceAppFactory.api_endpoint_wrapper", mentions=("log_exception(request)",)),
    Shape("bentoml", "_bentoml_sdk.io_models:IOMixin.from_http_request", ("request", "serde")),
    Shape("bentoml", "_bentoml_impl.serde:JSONSerde.parse_request", ("self", "request", "cls")),
    Shape("bentoml", "_bentoml_impl.serde:JSONSerde.deserialize_model", ("self", "payload", "cls")),
    # 5. /docs.json: the view replaced (runners/http/openapi.py), reading self.service.openapi_spec
    Shape(
        "bentoml",
        f"{_APP}:ServiceAppFactory.openapi_spec_view",
        ("self", "req"),
        "ca9d789d8db5aba2f41a5d56b7ec50db509b81cee3e02fbce71b9544ccb8c187",
    ),
    Shape("bentoml", "_bentoml_sdk:Service.openapi_spec"),
    # when: the worker builds the app with Service.to_asgi, which PatchedService overrides
    Shape("bentoml", "_bentoml_sdk:Service.to_asgi", ("self", "is_main")),
    Shape("bentoml", "_bentoml_impl.worker.service:main.callback", mentions=(".to_asgi(", "uvicorn.Config(")),
    # 3. forwarded headers: uvicorn reads the variable when its Config is built
    Shape("uvicorn", "uvicorn.config:Config.__init__", mentions=('"FORWARDED_ALLOW_IPS"',)),
)


def _shapes() -> list[Shape]:
    shapes = list(_SHAPES)
    for cls in http_protocols():  # 4. request-head timeout: three methods wrapped, four attributes read
        where, cycle = f"{cls.__module__}:{cls.__qualname__}", f"{cls.__module__}:RequestResponseCycle"
        shapes += [
            Shape("uvicorn", where, mentions=_PROTOCOL_ATTRIBUTES),
            Shape("uvicorn", f"{where}.connection_made", ("self", "transport")),
            Shape("uvicorn", f"{where}.connection_lost", ("self", "exc")),
            Shape("uvicorn", f"{where}.on_response_complete", ("self",)),
            Shape("uvicorn", cycle, mentions=("self.response_complete =",)),
        ]
    return shapes


# What each target was before install() patched it: a target patched here is checked as it was.
_ORIGINALS: dict[str, Any] = {}


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _unpatched(target: str) -> Any:
    found = _resolve(target)
    return _ORIGINALS.get(target) if getattr(found, "__folio__", False) else found


def _differences(shape: Shape) -> list[str]:
    try:
        found = _unpatched(shape.target)
    except (ImportError, AttributeError) as exc:
        return [f"{shape.target}: missing ({exc})"]
    if found is None:  # patched in this process, after this check passed
        return []
    problems = []
    if shape.params is not None:
        try:
            params: tuple[str, ...] | str = tuple(inspect.signature(found).parameters)
        except (TypeError, ValueError):
            params = "no signature"
        if params != shape.params:
            problems.append(f"{shape.target}: parameters {params}, expected {shape.params}")
    if shape.sha256 or shape.mentions:
        try:
            source = inspect.getsource(found)
        except (OSError, TypeError) as exc:
            return [*problems, f"{shape.target}: its source cannot be read ({exc})"]
        digest = hashlib.sha256(source.encode()).hexdigest()
        if shape.sha256 and digest != shape.sha256:
            problems.append(
                f"{shape.target}: source changed (sha256 {digest[:12]}, expected {shape.sha256[:12]}), "
                "and the fix replaces it whole"
            )
        if missing := [m for m in shape.mentions if m not in source]:
            problems.append(f"{shape.target}: its source no longer has {', '.join(missing)}")
    return problems


def upstream_problems(dists: Iterable[str] = ("bentoml", "uvicorn")) -> list[str]:
    """Each way the installed upstream differs from what the fixes were written against (none: [])."""
    wanted = set(dists)
    return [p for shape in _shapes() if shape.dist in wanted for p in _differences(shape)]


def check_upstream() -> None:
    """Raises ``UpstreamChanged`` (saying what differs, and what to do) unless every target matches."""
    problems = upstream_problems()
    if not problems:
        return
    found = ", ".join(f"{d} {installed(d)}" for d in WRITTEN_AGAINST)
    expected = ", ".join(f"{d} {v}" for d, v in WRITTEN_AGAINST.items())
    raise UpstreamChanged(
        f"{__name__}: the BentoML/uvicorn code its fixes patch is not what they were written against, "
        f"so none was applied and the service does not start.\n"
        f"Found {found}; the fixes were written against {expected}. What differs:\n"
        + "".join(f"  - {p}\n" for p in problems)
        + f"Install the pinned release (bentoml=={WRITTEN_AGAINST['bentoml']} in pyproject.toml; "
        "deploy/requirements/ pins both), or update the fixes in runners/platform/bentoml_patch.py "
        "for this release and their expected shapes (_shapes there)."
    )


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


_call_cancelling_timer.__folio__ = True  # type: ignore[attr-defined]


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

    for wrapper in (connection_made, on_response_complete, connection_lost):
        wrapper.__folio__ = True  # type: ignore[union-attr]
        setattr(cls, wrapper.__name__, wrapper)
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
    """Checks every upstream target (``check_upstream``: ``UpstreamChanged``, nothing patched, on any
    difference), then applies every fix. Idempotent; ``settings`` default to ``load_settings()``."""
    settings = settings or load_settings()
    check_upstream()
    for shape in _shapes():
        if not getattr(found := _resolve(shape.target), "__folio__", False):
            _ORIGINALS[shape.target] = found
    from _bentoml_impl.server import app as bentoml_app

    from runners.http import openapi

    traffic.TimeoutMiddleware.__call__ = _call_cancelling_timer  # type: ignore[method-assign,assignment]
    _quiet_client_errors(bentoml_app)
    trust_forwarded_headers_from(settings.trusted_proxies)
    bound_request_head(settings.request_head_timeout_s)
    openapi.install()


T = TypeVar("T")


class PatchedService(bentoml.Service[T]):
    """A BentoML service whose app is built with the fixes installed: ``service_class`` of the entry
    service's ``@bentoml.service``. The worker calls ``to_asgi`` once, after importing the service."""

    def to_asgi(self, is_main: bool = True) -> Any:
        install()
        return super().to_asgi(is_main)
