"""Admission control: a bound on the requests one worker serves at once, and on how late its event loop
may run.

Past the bound (``FOLIO_MAX_IN_FLIGHT``), or while the event loop has been more than
``FOLIO_SHED_LOOP_LAG_S`` behind on each of its last wakes (``LoopLag``: requests then wait unread in
socket buffers, where no count can see them; keep it above the longest synchronous stretch of one
request, e.g. raise it for a very large catalog), a new
request is refused at once with 503 and ``Retry-After`` (nothing read, nothing written), so an
overloaded worker keeps answering the requests it admitted within their latency budget instead of
queueing everything until every answer is late (docs/reliability.md). ``/recommend`` may use
every slot; other routes (feedback, similar, trending, admin) only ``OTHER_SHARE`` of them, so they can
never crowd recommendations out. Health, docs (``is_open``) and /metrics are not counted. Shadow
scoring (runners/serving/fleet.py) runs only while the worker is less than half busy.

``AdmissionMiddleware`` is the outermost ASGI layer (service.py wraps BentoML's whole app with it), so a
refusal costs no tracing span, metrics middleware, access-log line or request timer: shedding must stay
cheap for the worker to keep its capacity for the requests it admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from runners.http.identity import Scope, header, is_open
from runners.http.logs import request_id
from runners.platform.metrics import IN_FLIGHT, SHED

PRIORITY_ROUTE = "/recommend"
METRICS_ROUTE = "/metrics"  # never shed: an overloaded worker is what an operator needs to see
OTHER_SHARE = 0.75
RETRY_AFTER_S = 1


class LoopLag:
    """How late the event loop runs, sustained: a task sleeps ``interval_s`` again and again and keeps
    how late its last ``samples`` wakes were; ``now()`` is the smallest of them. A loop that is behind
    on every wake is backlogged; one long request delays one wake and sheds nothing."""

    def __init__(
        self, interval_s: float = 0.005, samples: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s, self._clock = interval_s, clock
        self.recent: deque[float] = deque([0.0] * samples, maxlen=samples)

    def now(self) -> float:
        return min(self.recent)

    def record(self, lag_s: float) -> None:
        self.recent.append(max(0.0, lag_s))

    async def run(self) -> None:
        while True:
            due = self._clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(self._clock() - due)


class Admission:
    def __init__(self, limit: int, max_lag_s: float = 0.0, lag: LoopLag | None = None) -> None:
        """``max_lag_s`` 0: no lag bound."""
        if limit < 1:
            raise ValueError(f"the in-flight bound must be at least 1, got {limit}")
        self.limit = limit
        self.other_limit = max(1, int(limit * OTHER_SHARE))
        self.in_flight = 0
        self.max_lag_s = max_lag_s
        self.lag = lag if lag is not None else LoopLag()
        self._monitor: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring the loop's lag (in the serving loop; without it no request is shed for lag)."""
        if self.max_lag_s > 0 and self._monitor is None:
            self._monitor = asyncio.create_task(self.lag.run(), name="folio-loop-lag")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None

    def enter(self, path: str) -> bool:
        """Admit a request (then ``leave`` when it is answered) or refuse it (False: answer 503). One
        request is always admitted when none is in flight: a late loop then has nothing of ours to run."""
        priority = path == PRIORITY_ROUTE
        route = PRIORITY_ROUTE if priority else "other"
        if self.in_flight >= (self.limit if priority else self.other_limit):
            SHED.labels(route=route, reason="in_flight").inc()
            return False
        if self._monitor is not None and self.in_flight and self.lag.now() > self.max_lag_s:
            SHED.labels(route=route, reason="loop_lag").inc()
            return False
        self.in_flight += 1
        IN_FLIGHT.set(self.in_flight)
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        IN_FLIGHT.set(self.in_flight)

    def spare(self) -> bool:
        """Less than half busy: background work (shadow scoring) may run."""
        return self.in_flight < self.limit / 2


class AdmissionMiddleware:
    """``admission()`` is read per request (the service creates it once its settings are loaded; None:
    admit everything)."""

    def __init__(self, app: Any, admission: Callable[[], Admission | None]) -> None:
        self.app, self.admission = app, admission

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        counted = scope["type"] == "http" and not is_open(scope["path"]) and scope["path"] != METRICS_ROUTE
        admission = self.admission() if counted else None
        if admission is None:
            await self.app(scope, receive, send)
            return
        if not admission.enter(scope["path"]):
            await _refuse(send, request_id(header(scope, b"x-request-id")))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()


async def _refuse(send: Any, rid: str) -> None:
    body = json.dumps({"error": "the server is at capacity: retry shortly", "request_id": rid}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
        (b"x-request-id", rid.encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
