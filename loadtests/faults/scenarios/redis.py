"""Scenario 3: Redis (the shared state store, AOF fsynced every second) stopped with SIGSTOP and resumed,
and SIGKILLed then restarted on the same append-only file, under mixed load. Reads must keep answering
(history and cache degrade); feedback is refused with 503 while Redis is away, and nothing acknowledged
may be missing, nor anything refused present, once it is back."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from loadtests.faults import inject
from loadtests.faults.mix import Clock, Sample
from loadtests.faults.suite import Suite, redis_check
from loadtests.faults.verdict import (
    FeedbackCheck,
    Row,
    Target,
    between,
    counts,
    degraded_period,
    feedback_targets,
    reads_target,
    row,
    seconds_text,
    target,
)


def _targets(samples: list[Sample], check: FeedbackCheck, recovery: float | None) -> list[Target]:
    return [
        reads_target(samples),
        *feedback_targets(check),
        target("recovered within the load", recovery is not None, seconds_text(recovery)),
    ]


def stop(suite: Suite) -> list[Row]:
    p, name = suite.profile, "redis-stop"
    with suite.redis(name) as redis, suite.serve(name, FOLIO_REDIS_URL=redis.url) as served:
        assert redis.pid is not None
        pid = redis.pid

        async def script(clock: Clock, _: aiohttp.ClientSession) -> None:
            await asyncio.sleep(p.before_s)
            with inject.paused([pid]):
                clock.mark("fault")
                await asyncio.sleep(p.redis_down_s)
            clock.mark("fault end")

        load = suite.load(served.url, p.before_s + p.redis_down_s + p.after_s, script)
        check = redis_check(load.ledger, redis)
    start, end = load.marks["fault"], load.marks["fault end"]
    recovery, blips = degraded_period(load.samples, end)
    during = between(load.samples, start, end)
    reads = [s for s in during if s.route == "recommend"]
    return [
        row(
            f"3a. Redis SIGSTOPped {p.redis_down_s:g} s",
            load.samples,
            recovery,
            check,
            _targets(load.samples, check, recovery),
            degraded_after_recovery=blips,
            recommend_p99_while_stopped_ms=counts(reads)["p99_ms"],
            feedback_refused_while_stopped=sum(
                s.route == "feedback" and s.answer.status != "200" for s in during
            ),
        )
    ]


def kill(suite: Suite) -> list[Row]:
    p, name = suite.profile, "redis-kill"
    with suite.redis(name) as redis, suite.serve(name, FOLIO_REDIS_URL=redis.url) as served:

        async def script(clock: Clock, _: aiohttp.ClientSession) -> None:
            await asyncio.sleep(p.before_s)
            inject.send([redis.pid or 0], signal.SIGKILL)
            clock.mark("fault")
            await asyncio.sleep(p.redis_down_s)
            await asyncio.to_thread(redis.start)  # same port, same directory: replays the AOF
            clock.mark("fault end")

        load = suite.load(served.url, p.before_s + p.redis_down_s + p.after_s, script)
        check = redis_check(load.ledger, redis)
    start, end = load.marks["fault"], load.marks["fault end"]
    recovery, blips = degraded_period(load.samples, end)
    acked_before = {s.key for s in load.samples if s.key in load.ledger.acked and s.done_s < start}
    return [
        row(
            f"3b. Redis SIGKILLed, restarted after {p.redis_down_s:g} s (AOF everysec)",
            load.samples,
            recovery,
            check,
            _targets(load.samples, check, recovery),
            acked_before_the_kill=len(acked_before),
            degraded_after_recovery=blips,
            restart_s=end - start - p.redis_down_s,
            reads_during_outage=counts(
                [s for s in between(load.samples, start, end) if s.route != "feedback"]
            )["requests"],
        )
    ]
