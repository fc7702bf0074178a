"""The ASGI middleware in front of every route: request ids, API keys, rate limits, content type, body size.

* Request id: ``X-Request-ID`` from the client (if sane) or a new one; echoed on every response, put
  in a context variable for the endpoints and the JSON logs.
* Auth (when ``FOLIO_API_KEYS`` holds sha256 digests): every route except health, the API docs and the
  Swagger page (``is_open``) needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The
  presented key is hashed and compared with every digest in constant time; keys are never logged.
* Rate limit: a token bucket per key (per client address without auth), atomic in the state store
  (Redis when configured, so every worker shares it). 429 with ``Retry-After``. Fails open, counted,
  when the store is down. The client address is the connection's peer: ``X-Forwarded-For`` is believed
  only from ``FOLIO_TRUSTED_PROXIES`` (runners/platform/bentoml_patch.py).
* Content type: a POST, PUT or PATCH that carries a body must say
  ``Content-Type: application/json`` (parameters allowed; a charset must be UTF-8), else 415. Only
  that type: the API documents no other, and the three types a browser may send cross-site without a
  CORS preflight (text/plain, form, multipart) are refused, so no web page can /forget or send
  feedback for a visitor. A body-less POST (``/info``) may omit the type.
* Body size: the bytes actually received are counted, whatever the framing (Content-Length,
  chunked, or both: chunked wins), and the request is answered 413 (connection closed) as soon as they
  pass ``FOLIO_MAX_BODY_BYTES``, without reading the rest; a Content-Length over the limit is refused
  before any byte is read. The body is read here, before the endpoint runs, so an endpoint never sees
  a cut body and the 413 is always a clean JSON answer. Chunked bodies are accepted (counted).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runners.platform.metrics import AUTH_FAILURES, BODY_REFUSALS, RATE_LIMITED, STATE_ERRORS
from runners.platform.settings import Settings
from runners.state.protocol import StateStore, StateUnavailable

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs.json", "/"})
OPEN_PREFIXES = ("/static_content/",)  # the Swagger page's scripts and styles
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # the ones whose body is read and checked
JSON_TYPE = "application/json"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("folio_request_id", default="-")
_SANE_ID = re.compile(r"^[\w.-]{1,64}$")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


@dataclass
class Runtime:
    """Filled in by the service at start-up; read by the middleware on each request."""

    settings: Settings | None = None
    state: StateStore | None = None
    digests: list[bytes] = field(default_factory=list)


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": REQUEST_ID.get(),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging() -> None:
    log = logging.getLogger("runners")
    if not any(isinstance(h.formatter, JsonLogFormatter) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def is_open(path: str) -> bool:
    """Health, the API docs and the Swagger page: no key, no rate limit, no body checks."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v).decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-api-key")


def key_matches(key: str, digests: list[bytes]) -> bytes | None:
    """The matching digest; compares against all of them in constant time."""
    given = hashlib.sha256(key.encode()).hexdigest().encode()
    found = None
    for d in digests:
        if hmac.compare_digest(given, d):
            found = d
    return found


class GuardMiddleware:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app, self.runtime = app, runtime

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _SANE_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            refusal = await self._refusal(scope)
            if refusal is not None:
                status, body, headers = refusal
                await _reply(send_with_id, status, body, headers)
                return
            settings = self.runtime.settings
            if settings is not None and not is_open(scope["path"]) and _may_have_body(scope):
                try:
                    data = await _read_body(receive, settings.max_body_bytes)
                except _BodyTooLarge:
                    BODY_REFUSALS.labels(status="413").inc()
                    message = f"request body over {settings.max_body_bytes} bytes"
                    await _reply(send_with_id, 413, message, [(b"connection", b"close")])
                    return
                if data is None:  # the client left mid-body: nobody to answer
                    return
                receive = _Replay(data, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    async def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        settings, state = self.runtime.settings, self.runtime.state
        if settings is None or is_open(scope["path"]):
            return None
        length = _header(scope, b"content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            BODY_REFUSALS.labels(status="413").inc()
            message = f"request body over {settings.max_body_bytes} bytes"
            return 413, message, [(b"connection", b"close")]
        if self.runtime.digests:
            key = presented_key(scope)
            digest = key_matches(key, self.runtime.digests) if key else None
            if digest is None:
                AUTH_FAILURES.inc()
                problem = "invalid API key" if key else "missing API key: send Authorization: Bearer <key>"
                return 401, problem, [(b"www-authenticate", b"Bearer")]
            principal = "key:" + digest[:16].decode()
        else:
            client = scope.get("client") or ("unknown", 0)
            principal = f"addr:{client[0]}"
        unsupported = _unsupported_media_type(scope)
        if unsupported is not None:
            BODY_REFUSALS.labels(status="415").inc()
            return 415, unsupported, []
        if state is not None and settings.rate_limit_rps > 0:
            try:
                wait = await state.take_token(principal, settings.rate_limit_rps, settings.rate_limit_burst)
            except StateUnavailable:
                STATE_ERRORS.labels(op="rate_limit").inc()
                wait = 0.0
            if wait > 0:
                RATE_LIMITED.inc()
                retry = str(max(1, math.ceil(wait))).encode()
                return 429, "rate limit exceeded: retry later", [(b"retry-after", retry)]
        return None


def _may_have_body(scope: Scope) -> bool:
    if scope.get("method") not in BODY_METHODS:
        return False
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length != "0")


def _unsupported_media_type(scope: Scope) -> str | None:
    """Why the request's Content-Type is refused (415), or None when it is JSON (or there is no body)."""
    if scope.get("method") not in BODY_METHODS:
        return None
    given = _header(scope, b"content-type")
    want = f"send the body as JSON with Content-Type: {JSON_TYPE}"
    if given is None:
        return f"{want} (no Content-Type was given)" if _may_have_body(scope) else None
    media_type, *params = (part.strip() for part in given.split(";"))
    if media_type.lower() != JSON_TYPE:
        return f"{want}, not {media_type[:100]!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"{want}; charset=utf-8 (JSON is UTF-8), not charset {value.strip()[:40]!r}"
    return None


class _Replay:
    """``receive`` for the app once the guard has read the whole body: that body in one message, then
    the server's own ``receive`` (which reports the client's disconnect)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is None:
            return await self.receive()
        body, self.body = self.body, None
        return {"type": "http.request", "body": body, "more_body": False}


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, counted as it arrives: raises ``_BodyTooLarge`` as soon as it passes ``limit`` bytes
    (the rest is not read); None when the client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
