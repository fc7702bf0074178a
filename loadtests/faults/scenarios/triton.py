"""Scenarios 1-2: the embedded tritonserver SIGKILLed, and SIGSTOPped (stalled) then SIGCONTinued, under
mixed load. Ranking falls back to ONNX Runtime in process; the watchdog restarts a dead Triton; the
breaker sends traffic back to Triton once it answers again."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from loadtests.faults import inject
from loadtests.faults.mix import Clock
from loadtests.faults.suite import Suite, info, journal_check
from loadtests.faults.verdict import (
    Row,
    between,
    counts,
    degraded_period,
    feedback_targets,
    reads_target,
    row,
    seconds_text,
    target,
)


def _recovered(recovery: float | None) -> list:
    return [target("recovered within the load", recovery is not None, seconds_text(recovery))]


def kill(suite: Suite) -> list[Row]:
    p, name = suite.profile, "triton-kill"
    with suite.serve(name) as served:
        assert served.proc is not None
        root = served.proc.pid
        old = inject.tritonservers(root)

        async def script(clock: Clock, _: aiohttp.ClientSession) -> None:
            await asyncio.sleep(p.before_s)
            inject.send(old, signal.SIGKILL)
            clock.mark("fault")
            restarted = lambda: bool(inject.tritonservers(root) - old)  # noqa: E731
            if await inject.await_until(restarted, p.after_s):
                clock.mark("triton restarted")

        load = suite.load(served.url, p.before_s + p.after_s, script)
        state = (info(served.url) or {}).get("triton", {})
    fault = load.marks["fault"]
    recovery, blips = degraded_period(load.samples, fault)
    restarted = load.marks.get("triton restarted")
    check = journal_check(load.ledger, suite.journal(name))
    return [
        row(
            "1. Triton SIGKILLed",
            load.samples,
            recovery,
            check,
            [reads_target(load.samples), *feedback_targets(check), *_recovered(recovery)],
            killed=sorted(old),
            degraded_after_recovery=blips,
            triton_restarted_after_s=None if restarted is None else restarted - fault,
            back_on_triton_after_restart_s=(
                None if restarted is None or recovery is None else max(0.0, fault + recovery - restarted)
            ),
            fallbacks_after_fault=counts(between(load.samples, fault))["fallbacks"],
            triton_restarts=state.get("restarts"),
        )
    ]


def stall(suite: Suite) -> list[Row]:
    p, name = suite.profile, "triton-stall"
    with suite.serve(name) as served:
        assert served.proc is not None
        pids = sorted(inject.tritonservers(served.proc.pid))

        async def script(clock: Clock, _: aiohttp.ClientSession) -> None:
            await asyncio.sleep(p.before_s)
            with inject.paused(pids):
                clock.mark("fault")
                await asyncio.sleep(p.stall_s)
            clock.mark("fault end")

        load = suite.load(served.url, p.before_s + p.stall_s + p.after_s, script)
        state = (info(served.url) or {}).get("triton", {})
    start, end = load.marks["fault"], load.marks["fault end"]
    recovery, blips = degraded_period(load.samples, end)
    during = counts(between(load.samples, start, end))
    check = journal_check(load.ledger, suite.journal(name))
    return [
        row(
            f"2. Triton SIGSTOPped {p.stall_s:.0f} s",
            load.samples,
            recovery,
            check,
            [reads_target(load.samples), *feedback_targets(check), *_recovered(recovery)],
            p99_during_stall_ms=during["p99_ms"],
            degraded_after_recovery=blips,
            fallbacks_during_stall=during["fallbacks"],
            triton_restarts=state.get("restarts"),
        )
    ]
