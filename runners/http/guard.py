"""The ASGI middleware in front of every route: request ids (http/logs.py), API keys (http/identity.py),
rate limits, content type and body size (http/limits.py), in that order.

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

import json
from dataclasses import dataclass, field
from typing import Any

from runners.http import limits
from runners.http.admission import Admission
from runners.http.identity import Scope, client_principal, header, is_open, key_matches, presented_key
from runners.http.logs import REQUEST_ID, request_id
from runners.platform.metrics import AUTH_FAILURES, BODY_REFUSALS
from runners.platform.settings import Settings
from runners.state.protocol import StateStore


@dataclass
class Runtime:
    """Filled in by the service at start-up; read by the middleware on each request."""

    settings: Settings | None = None
    state: StateStore | None = None
    digests: list[bytes] = field(default_factory=list)
    admission: Admission | None = None  # read by the admission middleware around the whole app


class GuardMiddleware:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app, self.runtime = app, runtime

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(header(scope, b"x-request-id"))
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
            if settings is not None and not is_open(scope["path"]) and limits.may_have_body(scope):
                try:
                    data = await limits.read_body(receive, settings.max_body_bytes)
                except limits.BodyTooLarge:
                    BODY_REFUSALS.labels(status="413").inc()
                    message = f"request body over {settings.max_body_bytes} bytes"
                    await _reply(send_with_id, 413, message, [(b"connection", b"close")])
                    return
                if data is None:  # the client left mid-body: nobody to answer
                    return
                receive = limits.Replay(data, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    async def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        settings, state = self.runtime.settings, self.runtime.state
        if settings is None or is_open(scope["path"]):
            return None
        if limits.declared_too_large(scope, settings.max_body_bytes):
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
            principal = client_principal(scope)
        unsupported = limits.unsupported_media_type(scope)
        if unsupported is not None:
            BODY_REFUSALS.labels(status="415").inc()
            return 415, unsupported, []
        if state is not None and settings.rate_limit_rps > 0:
            wait = await limits.rate_limited(state, principal, settings)
            if wait > 0:
                return 429, "rate limit exceeded: retry later", [(b"retry-after", limits.retry_after(wait))]
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
