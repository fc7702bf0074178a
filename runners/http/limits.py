"""What a request may send: JSON bodies only (415 otherwise), a bounded body counted as it arrives
(413), and the per-principal token bucket in the state store (429)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from runners.http.identity import Scope, header
from runners.platform.metrics import RATE_LIMITED, STATE_ERRORS
from runners.platform.settings import Settings
from runners.state.protocol import StateStore, StateUnavailable

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # the ones whose body is read and checked
JSON_TYPE = "application/json"

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


def declared_too_large(scope: Scope, limit: int) -> bool:
    length = header(scope, b"content-length")
    return bool(length and length.isdigit() and int(length) > limit)


def may_have_body(scope: Scope) -> bool:
    if scope.get("method") not in BODY_METHODS:
        return False
    length = header(scope, b"content-length")
    return header(scope, b"transfer-encoding") is not None or (length is not None and length != "0")


def unsupported_media_type(scope: Scope) -> str | None:
    """Why the request's Content-Type is refused (415), or None when it is JSON (or there is no body)."""
    if scope.get("method") not in BODY_METHODS:
        return None
    given = header(scope, b"content-type")
    want = f"send the body as JSON with Content-Type: {JSON_TYPE}"
    if given is None:
        return f"{want} (no Content-Type was given)" if may_have_body(scope) else None
    media_type, *params = (part.strip() for part in given.split(";"))
    if media_type.lower() != JSON_TYPE:
        return f"{want}, not {media_type[:100]!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"{want}; charset=utf-8 (JSON is UTF-8), not charset {value.strip()[:40]!r}"
    return None


class Replay:
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


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, counted as it arrives: raises ``BodyTooLarge`` as soon as it passes ``limit`` bytes
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
            raise BodyTooLarge
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def rate_limited(state: StateStore, principal: str, settings: Settings) -> float:
    """Seconds ``principal`` must wait (0: go ahead). Fails open, counted, when the store is down."""
    try:
        wait = await state.take_token(principal, settings.rate_limit_rps, settings.rate_limit_burst)
    except StateUnavailable:
        STATE_ERRORS.labels(op="rate_limit").inc()
        return 0.0
    if wait > 0:
        RATE_LIMITED.inc()
    return wait


def retry_after(wait: float) -> bytes:
    return str(max(1, math.ceil(wait))).encode()
