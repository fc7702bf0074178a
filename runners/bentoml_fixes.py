"""A fix applied to BentoML 1.4 at import of the service (upstream code, not ours).

BentoML's ``TimeoutMiddleware`` (``traffic.timeout``) schedules ``loop.call_later(timeout, ...)`` for
every request and never cancels it, so each request's timer, future and context (with its tracing span)
stay alive for the whole timeout (30 s here) after the answer left: ~20 objects a request, 60,000 at
100 req/s. Every full garbage collection walks them; at 100 req/s one ran every ~8 s and stopped the
event loop for 60-190 ms, the whole cache-miss p99. ``install()`` replaces its ``__call__`` with the
same logic that cancels the timer once the response has started (the timeout no longer applies then).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


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


def install() -> None:
    """Idempotent."""
    traffic.TimeoutMiddleware.__call__ = _call_cancelling_timer  # type: ignore[method-assign,assignment]
