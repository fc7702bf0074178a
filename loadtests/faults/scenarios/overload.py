"""Scenario 7: overload. First the capacity: the highest open-loop rate of the mixed load (rates
``search_factor`` apart) the service answers with p99 under 100 ms, nothing failed and at least 99 %
answered 200. Then 2x and 5x that rate for ``overload_s``: goodput (200 answers that arrived
within the load window, per second) as a share of the capacity, the admitted (200) requests' p99, the
refused ones (503 with Retry-After) and their p99, and the worker's RSS before, at its peak, and
``settle_s`` after. Latency counts from each request's due time, so a generator that falls behind (it
shares the cores with the service) shows in it: its lag is reported."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import psutil

from loadtests.faults import inject
from loadtests.faults.mix import Clock, Load, Sample
from loadtests.faults.suite import Suite, journal_check
from loadtests.faults.verdict import (
    Row,
    counts,
    feedback_targets,
    memory_back,
    p99_ms,
    reads_target,
    row,
    target,
)
from loadtests.harness.openloop import percentiles

P99_LIMIT_MS = 100.0
REFUSAL_LIMIT_MS = 10.0
FACTORS = (2, 5)
NAME = "overload"


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def sustained(samples: list[Sample]) -> bool:
    """Nothing failed, at least 99 % answered 200 (a few shed requests do not end the search) and p99 of
    the answered ones under P99_LIMIT_MS."""
    c = counts(samples)
    ok = sum(s.answer.status == "200" for s in samples)
    return c["failed"] == 0 and ok >= 0.99 * len(samples) and c["p99_ms"] < P99_LIMIT_MS


def capacity(suite: Suite, url: str, steps: int = 12) -> tuple[float | None, list[dict]]:
    """The highest sustained rate of the search (None: none was), and every step. Up from
    ``search_start`` while sustained; down from it until sustained when it is not."""
    p = suite.profile
    found, tried, rate = None, [], p.search_start
    for _ in range(steps):
        load = suite.load(url, p.step_s, rate=rate)
        ok = sustained(load.samples)
        tried.append({"rps": round(rate, 1), "p99_ms": round(p99_ms(load.samples), 1), "sustained": ok})
        time.sleep(1.0)
        if ok:
            found = rate
        going_up = all(t["sustained"] for t in tried)
        if (found is not None and not ok) or (not going_up and ok) or rate < 5:
            break
        rate = rate * p.search_factor if going_up else rate / p.search_factor
    return found, tried


def overload(suite: Suite) -> list[Row]:
    p = suite.profile
    rows = []
    with suite.serve(NAME) as served:
        assert served.proc is not None
        worker = inject.workers(served.proc.pid)[0]
        cap, steps = capacity(suite, served.url)
        if cap is None:
            raise RuntimeError(f"the service does not sustain {p.search_start} requests/s: {steps}")
        time.sleep(p.settle_s)
        for factor in FACTORS:
            baseline = rss(worker)
            peak = [baseline]

            async def sample_rss(clock: Clock, _: aiohttp.ClientSession, peak: list[int] = peak) -> None:
                while not clock.load_done:
                    peak[0] = max(peak[0], rss(worker))
                    await asyncio.sleep(0.5)

            load = suite.load(served.url, p.overload_s, sample_rss, rate=factor * cap)
            time.sleep(p.settle_s)
            after = rss(worker)
            rows.append(_row(factor, cap, load, p.overload_s, (baseline, peak[0], after), steps))
            rows[-1].feedback = journal_check(load.ledger, suite.journal(NAME))
            rows[-1].targets += feedback_targets(rows[-1].feedback)
            steps = []  # shown once
    return rows


def _row(
    factor: int, cap: float, load: Load, seconds: float, memory: tuple[int, int, int], steps: list
) -> Row:
    samples = load.samples
    admitted = [s for s in samples if s.answer.status == "200"]
    refused = [s for s in samples if s.answer.status == "503" and s.answer.retry_after]
    goodput = sum(s.done_s <= seconds for s in admitted) / seconds
    share = goodput / cap
    admitted_p99, refused_p99 = p99_ms(admitted), p99_ms(refused)
    baseline, peak, after = memory
    recs = [s for s in admitted if s.route == "recommend"]
    last = max((s.done_s for s in samples if s.answer.answered), default=seconds)
    targets = [
        target(
            "excess refused with 503 + Retry-After",
            bool(refused),
            f"{len(refused)} refused" if refused else "no request was refused with 503 + Retry-After",
        ),
        target(
            "goodput >= 90 % of capacity",
            share >= 0.9,
            f"{goodput:.0f}/s = {share:.0%} of {cap:.0f}/s",
            speed=True,
        ),
        target(
            f"admitted p99 < {P99_LIMIT_MS:g} ms",
            admitted_p99 < P99_LIMIT_MS,
            f"{admitted_p99:.0f} ms",
            speed=True,
        ),
        target(
            f"refusals < {REFUSAL_LIMIT_MS:g} ms",
            None if not refused else refused_p99 < REFUSAL_LIMIT_MS,
            f"p99 {refused_p99:.1f} ms" if refused else "no request was refused with 503 + Retry-After",
            speed=True,
        ),
        target(
            "memory back to baseline",
            memory_back(baseline, after),
            f"worker RSS {baseline >> 20} -> peak {peak >> 20} -> {after >> 20} MB",
        ),
        reads_target(samples),
    ]
    figures: dict[str, Any] = {
        "offered_rps": round(factor * cap, 1),
        "capacity_rps": round(cap, 1),
        "goodput_rps": round(goodput, 1),
        "goodput_share": round(share, 3),
        "admitted_p99_ms": admitted_p99,
        "refused_503_retry_after": len(refused),
        "refused_p50_ms": percentiles([s.latency_s for s in refused], (50,))["p50_ms"],
        "refused_p99_ms": refused_p99,
        "fallback_share_of_recommend": round(
            sum(s.answer.fallback != "none" for s in recs) / max(1, len(recs)), 3
        ),
        "worker_rss_mb": [baseline >> 20, peak >> 20, after >> 20],
        "last_answer_after_load_end_s": round(max(0.0, last - seconds), 2),
        "generator_lag_s": round(max(0.0, load.seconds - seconds), 2),  # the last request left this late
        "generator_loop_lag_p99_ms": round(load.client_lag_ms, 1),
        "generator_cpu_cores": round(load.client_cores, 2),
    }
    if steps:
        figures["capacity_search"] = ", ".join(
            f"{s['rps']:g}/s p99 {s['p99_ms']:g} ms{'' if s['sustained'] else ' (not sustained)'}"
            for s in steps
        )
    return row(
        f"7. overload {factor}x capacity", samples, None, None, targets, recovery_expected=False, **figures
    )
