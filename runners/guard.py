"""The ASGI middleware in front of every route: request ids, API keys, rate limits, body size.

* Request id: ``X-Request-ID`` from the client (if sane) or a new one; echoed on every response, put
  in a context variable for the endpoints and the JSON logs.
* Auth (when ``FOLIO_API_KEYS`` holds sha256 digests): every route except health and the API docs
  needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The presented key is hashed and
  compared with every digest in constant time; keys are never logged.
* Rate limit: a token bucket per key (per client address without auth), atomic in the state store
  (Redis when configured, so every worker shares it). 429 with ``Retry-After``. Fails open, counted,
  when the store is down.
* Body size: 413 past ``FOLIO_MAX_BODY_BYTES`` by Content-Length (the server enforces it matches the
  body); 411 for a chunked body.
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
from dataclasses import dataclass, field
from typing import Any

from runners.metrics import AUTH_FAILURES, RATE_LIMITED, STATE_ERRORS
from runners.settings import Settings
from runners.store import StateStore, StateUnavailable

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs.json", "/"})
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("folio_request_id", default="-")
_SANE_ID = re.compile(r"^[\w.-]{1,64}$")

Scope = dict[str, Any]


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
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    async def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        settings, state = self.runtime.settings, self.runtime.state
        if settings is None or scope["path"] in OPEN_PATHS:
            return None
        length = _header(scope, b"content-length")
        if length is None and _header(scope, b"transfer-encoding"):
            return 411, "send the body with a Content-Length (chunked bodies are not accepted)", []
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return 413, f"request body over {settings.max_body_bytes} bytes", []
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
