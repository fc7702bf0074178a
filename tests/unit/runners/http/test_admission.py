"""Admission control (runners/http/admission.py) as an ASGI middleware: past the in-flight bound a
request gets 503 + Retry-After at once, /recommend keeps the slots other routes may not take, and every
admitted request gives its slot back however it ends."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from runners.http.admission import Admission, AdmissionMiddleware, LoopLag

Message = dict[str, Any]


class HeldApp:
    """Answers 200 once ``release`` is set; raises for the path /boom."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        await self.release.wait()
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(guard: AdmissionMiddleware, path: str, method: str = "GET") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "client": ("10.0.0.1", 1)}
    await guard(scope, receive, send)
    return sent


def status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


def guard_with(limit: int) -> tuple[AdmissionMiddleware, HeldApp, Admission]:
    app = HeldApp()
    admission = Admission(limit)
    return AdmissionMiddleware(app, lambda: admission), app, admission


def test_past_the_bound_requests_are_refused_at_once_and_slots_come_back() -> None:
    async def main() -> None:
        guard, app, admission = guard_with(4)
        held = [asyncio.create_task(call(guard, "/recommend")) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert admission.in_flight == 4
        refused = await asyncio.wait_for(call(guard, "/recommend"), 0.5)  # answered while 4 are held
        assert status(refused) == 503
        headers = dict(refused[0]["headers"])
        assert headers[b"retry-after"] == b"1" and b"x-request-id" in headers
        assert json.loads(refused[1]["body"])["error"] == "the server is at capacity: retry shortly"
        assert app.calls == 4  # the refused one never reached the app
        app.release.set()
        assert [status(s) for s in await asyncio.gather(*held)] == [200] * 4
        assert admission.in_flight == 0
        assert status(await call(guard, "/recommend")) == 200

    asyncio.run(main())


def test_recommend_keeps_a_quarter_of_the_slots_for_itself() -> None:
    async def main() -> None:
        guard, app, admission = guard_with(4)
        held = [asyncio.create_task(call(guard, "/feedback", "POST")) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert status(await call(guard, "/similar", "POST")) == 503  # 3 of 4 is the other routes' share
        held.append(asyncio.create_task(call(guard, "/recommend", "POST")))
        await asyncio.sleep(0.01)
        assert admission.in_flight == 4
        app.release.set()
        await asyncio.gather(*held)

    asyncio.run(main())


def test_health_routes_are_never_counted_nor_refused() -> None:
    async def main() -> None:
        guard, app, admission = guard_with(1)
        held = asyncio.create_task(call(guard, "/recommend"))
        await asyncio.sleep(0.01)
        app.release.set()
        assert status(await call(guard, "/readyz")) == 200
        assert status(await call(guard, "/metrics")) == 200
        await held
        assert admission.in_flight == 0

    asyncio.run(main())


def test_a_request_that_fails_gives_its_slot_back() -> None:
    async def main() -> None:
        guard, app, admission = guard_with(2)
        app.release.set()
        with pytest.raises(RuntimeError):
            await call(guard, "/boom")
        assert admission.in_flight == 0

    asyncio.run(main())


def test_background_work_waits_for_a_half_idle_worker() -> None:
    admission = Admission(4)
    assert admission.enter("/recommend") and admission.spare()
    assert admission.enter("/recommend") and not admission.spare()
    with pytest.raises(ValueError):
        Admission(0)


def test_without_an_admission_everything_passes() -> None:
    async def main() -> None:
        app = HeldApp()
        app.release.set()
        assert status(await call(AdmissionMiddleware(app, lambda: None), "/recommend")) == 200

    asyncio.run(main())


def test_a_loop_late_on_every_wake_sheds_new_requests_but_never_the_only_one() -> None:
    async def main() -> None:
        lag = LoopLag(interval_s=0.005, samples=3)
        admission = Admission(10, max_lag_s=0.010, lag=lag)
        admission.start()
        try:
            assert admission.enter("/recommend")  # the loop is on time
            lag.record(0.05)  # one long request delayed one wake: not a backlog
            assert admission.enter("/recommend")
            lag.record(0.02)
            lag.record(0.03)  # late on three wakes in a row
            assert lag.now() == 0.02
            assert not admission.enter("/recommend")
            admission.leave()
            admission.leave()
            assert admission.enter("/recommend")  # nothing in flight: admitted whatever the lag
        finally:
            await admission.stop()

    asyncio.run(main())


def test_without_the_lag_task_or_with_the_bound_off_lag_sheds_nothing() -> None:
    late = LoopLag(samples=1)
    late.record(1.0)
    off = Admission(10, max_lag_s=0.0, lag=late)
    not_started = Admission(10, max_lag_s=0.025, lag=late)
    for admission in (off, not_started):
        assert admission.enter("/recommend") and admission.enter("/recommend")


def test_the_lag_task_measures_a_busy_loop() -> None:
    async def main() -> list[float]:
        lag = LoopLag(interval_s=0.005, samples=3)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.02)
        for _ in range(4):  # a backlog: every wake comes ~30 ms late
            time.sleep(0.03)
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        seen = list(lag.recent)
        task.cancel()
        return seen

    seen = asyncio.run(main())
    assert min(seen) >= 0.015, seen
