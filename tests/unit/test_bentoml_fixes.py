"""The fix to BentoML's TimeoutMiddleware: timers are cancelled once answered; the timeout still works."""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from runners import bentoml_fixes


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
    bentoml_fixes.install()
    sent, pending = asyncio.run(_call("/fast", timeout=30))
    assert sent[0]["status"] == 200 and pending == 0


def test_timeout_still_answers_504() -> None:
    bentoml_fixes.install()
    sent, _ = asyncio.run(_call("/slow", timeout=0.05))
    assert sent[0]["status"] == 504
