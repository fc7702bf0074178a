"""Scenarios 4-5: the service stopped (SIGTERM with a drain) or killed (SIGKILL of its worker, or of its
whole process tree as a container kill would) under mixed load.

SIGTERM goes to `bentoml serve` only, as a process manager sends it; the load keeps a connection per
request, so a reset means the server dropped a connection it had accepted (a refused connect, once the
listener is closed, is not counted against it). The SIGKILLs come right after a burst of acknowledged
feedback; afterwards every acknowledged event must be in the journal or Redis (read directly) and the
restarted worker must answer the burst's new user as a known one (it replayed the events).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp

from loadtests.faults import inject
from loadtests.faults.mix import Clock, Ledger, send_all
from loadtests.faults.suite import Suite, journal_check, recommend, redis_check
from loadtests.faults.verdict import (
    Row,
    Target,
    between,
    degraded_period,
    feedback_targets,
    is_fallback,
    row,
    seconds_text,
    target,
)
from runners.platform.processes import ServedFolio
from runners.platform.redis_server import RedisServer

NOT_ACCEPTED = "ClientConnectorError"  # the connect was refused: nothing was in flight on it
BURST_CONCURRENCY = 8  # well inside FOLIO_MAX_IN_FLIGHT: the burst is acknowledged, not shed


def sigterm(suite: Suite) -> list[Row]:
    p, name = suite.profile, "sigterm"
    served = suite.start(name, FOLIO_DRAIN_S=str(p.drain_s))
    try:
        assert served.proc is not None
        proc = served.proc
        tritons = inject.tritonservers(proc.pid)
        groups = {pid for t in tritons for pid in inject.group(t)}
        shm = inject.shm_regions(groups)

        async def script(clock: Clock, _: aiohttp.ClientSession) -> None:
            await asyncio.sleep(p.before_s)
            proc.send_signal(signal.SIGTERM)
            clock.mark("fault")

            async def triton_gone() -> None:
                if await inject.await_until(
                    lambda: not any(map(inject.alive, tritons)), p.drain_s + 30, 0.02
                ):
                    clock.mark("triton exited")

            async def exited() -> None:
                if await inject.await_until(lambda: proc.poll() is not None, p.drain_s + 30, 0.02):
                    clock.mark("exited")

            await asyncio.gather(triton_gone(), exited())

        load = suite.load(served.url, p.before_s + p.drain_s + 4, script, keepalive=False)
        time.sleep(2)  # what the exit left behind, looked at 2 s later
        left, left_shm = [g for g in groups if inject.alive(g)], inject.leftover_shm(shm)
    finally:
        served.stop()
    inject.clean_up(left, left_shm)
    term, exit_at = load.marks["fault"], load.marks.get("exited")
    end = exit_at if exit_at is not None else load.seconds
    window = between(load.samples, 0, end)
    drain = between(load.samples, term, end)
    unanswered = [s for s in load.samples if not s.answer.answered and s.answer.status != NOT_ACCEPTED]
    check = journal_check(load.ledger, suite.journal(name))
    exit_s = None if exit_at is None else exit_at - term
    triton_s = load.marks.get("triton exited")
    targets = [
        target(
            f"exit within drain + 2 s ({p.drain_s + 2:g} s)",
            exit_s is not None and exit_s <= p.drain_s + 2,
            f"exited after {exit_s if exit_s is None else round(exit_s, 2)} s",
        ),
        target(
            "no fallback answer during the drain",
            not any(map(is_fallback, drain)),
            f"{sum(map(is_fallback, drain))} of {len(drain)} requests",
        ),
        target(
            "no accepted connection left unanswered",
            not unanswered,
            f"{len(unanswered)} reset or timed out: {sorted({s.answer.status for s in unanswered})}",
        ),
        *feedback_targets(check),
        target(
            "no orphans",
            not left and not left_shm,
            f"{len(left)} Triton processes, {len(left_shm)} /dev/shm regions left 2 s after exit",
        ),
    ]
    result = row(
        f"4. SIGTERM, FOLIO_DRAIN_S={p.drain_s:g}",
        window,
        None,
        check,
        targets,
        recovery_expected=False,
        served_200_during_drain=sum(s.answer.status == "200" for s in between(drain, term, term + p.drain_s)),
        refused_connects=sum(s.answer.status == NOT_ACCEPTED for s in load.samples),
        triton_exited_after_s=None if triton_s is None else triton_s - term,
        exit_s=exit_s,
    )
    result.notes = (
        "The load runs until the process has exited; *requests* are those due before the exit. Connections "
        "refused once the drain has ended and the listener is closed count as failed in the table (nothing "
        "was in flight on them; a load balancer stops sending once readiness fails), and are not held "
        "against the targets; a reset or a timeout is."
    )
    return [result]


def _start_with_state(suite: Suite, name: str, redis: RedisServer | None) -> ServedFolio:
    return suite.start(name, FOLIO_REDIS_URL=redis.url) if redis else suite.start(name)


def sigkill(suite: Suite, what: str, state: str) -> Row:
    """SIGKILL the worker (``what`` "worker"; BentoML starts another) or every process of the service
    ("service"; restarted here on the same state) right after a burst of acknowledged feedback."""
    p, name = suite.profile, f"sigkill-{what}-{state}"
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(suite.redis(name)) if state == "redis" else None
        served = _start_with_state(suite, name, redis)
        stack.callback(served.stop)
        assert served.proc is not None
        root = served.proc.pid
        tritons = inject.tritonservers(root)
        groups = {pid for t in tritons for pid in inject.group(t)}
        shm = inject.shm_regions(groups)
        ledger, probe, acked = Ledger(), [""], [0]

        async def script(clock: Clock, session: aiohttp.ClientSession) -> None:
            await asyncio.sleep(p.before_s)
            events, probe[0] = suite.burst(name)
            clock.mark("burst")
            answers = await send_all(session, events, ledger, BURST_CONCURRENCY)
            acked[0] = sum(a.status == "200" for a in answers)
            if what == "worker":
                inject.send(inject.workers(root), signal.SIGKILL)
            else:
                inject.send([root, *(d.pid for d in inject.descendants(root))], signal.SIGKILL)
            clock.mark("fault")
            if what == "worker":
                up = lambda: recommend(served.url, probe[0]) is not None  # noqa: E731
                if await inject.await_until(up, 60, 0.2):
                    clock.mark("recovered")

        seconds = p.before_s + (p.respawn_s if what == "worker" else 2.0)
        load = suite.load(served.url, seconds, script, ledger=ledger, keepalive=False)
        restart_s = None
        if what == "service":
            served.proc.wait(30)
            started = time.monotonic()
            served = _start_with_state(suite, name, redis)
            stack.callback(served.stop)
            restart_s = time.monotonic() - started
        answer = recommend(served.url, probe[0])
        time.sleep(2)  # what the kill left behind, looked at once the service answers again (+2 s)
        left, left_shm = [g for g in groups if inject.alive(g)], inject.leftover_shm(shm)
        check = redis_check(ledger, redis) if redis else journal_check(ledger, suite.journal(name))
    inject.clean_up(left, left_shm)
    fault = load.marks["fault"]
    recovery, blips = degraded_period(load.samples, fault) if what == "worker" else (restart_s, 0)
    reflected = answer is not None and answer.get("cold_start") is False
    targets: list[Target] = [
        *feedback_targets(check),
        target(
            "the restarted service reflects the burst",
            reflected,
            f"/recommend of the burst's new user: cold_start {(answer or {}).get('cold_start', 'no answer')}",
        ),
        target(
            "no orphans",
            not left and not left_shm,
            f"{len(left)} Triton processes, {len(left_shm)} /dev/shm regions left after the restart",
        ),
    ]
    if what == "worker":
        targets.append(target("recovered within the load", recovery is not None, seconds_text(recovery)))
    return row(
        f"5. SIGKILL {'worker' if what == 'worker' else 'whole service'} after a feedback burst ({state})",
        load.samples,
        recovery,
        check,
        targets,
        burst_acked=f"{acked[0]} of {p.burst}",
        burst_sent_to_kill_s=fault - load.marks["burst"],
        degraded_after_recovery=blips,
        **({"restart_s": restart_s} if restart_s is not None else {}),
    )


def sigkills(suite: Suite) -> list[Row]:
    """The profile's SIGKILLs: worker or service, journal or redis."""
    return [sigkill(suite, *kind.split("-")) for kind in suite.profile.sigkills]
