"""Open-loop load: requests leave on a schedule whatever the answers do, latency counts from the due time.

`schedule(send, arrivals, first_counted)` is the scheduler: ``arrivals`` are offsets in seconds from the
start (`fixed_arrivals`: evenly spaced; `poisson_arrivals`: exponential gaps), request ``k`` is
``send(k)`` (an async callable: the HTTP sender below, the gRPC one of loadtests/triton_bench), and
every answer is timed from its request's due time, so a stalled server shows in the percentiles
instead of slowing the generator down (closed-loop tools, Locust's paced users included, hide such
stalls: coordinated omission). Arrivals before ``first_counted`` are the warm-up.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class Completion(Generic[T]):
    index: int
    counted: bool  # past the warm-up
    latency_s: float  # from the due time to the answer
    outcome: T  # what send() returned


@dataclass
class Run(Generic[T]):
    completions: list[Completion[T]] = field(default_factory=list)
    offered: int = 0  # counted arrivals
    dropped: int = 0  # counted or not: arrivals not sent because max_outstanding were in flight
    sent_s: float = 0.0  # from the start until the last request left
    done_s: float = 0.0  # until the last answer (or the drain timeout)

    def counted(self) -> list[Completion[T]]:
        return [c for c in self.completions if c.counted]


def fixed_arrivals(rate: float, seconds: float) -> np.ndarray:
    """``int(rate * seconds)`` arrivals ``1 / rate`` apart."""
    return np.arange(int(rate * seconds)) / rate


def poisson_arrivals(rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Poisson arrivals at ``rate`` a second within ``seconds``."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 10))
    return arrivals[arrivals < seconds]


async def schedule(
    send: Callable[[int], Awaitable[T]],
    arrivals: Sequence[float] | np.ndarray,
    first_counted: int,
    *,
    max_outstanding: int | None = None,
    on_counted: Callable[[], Awaitable[None]] | None = None,
    drain_timeout_s: float | None = None,
) -> Run[T]:
    """Send request k at ``arrivals[k]`` s from now; ``on_counted()`` is awaited just before the first
    counted request leaves. Waits for the answers (at most ``drain_timeout_s``)."""
    run: Run[T] = Run(offered=max(0, len(arrivals) - first_counted))
    outstanding: set[asyncio.Task[None]] = set()

    async def one(k: int, due: float) -> None:
        outcome = await send(k)
        run.completions.append(Completion(k, k >= first_counted, time.perf_counter() - due, outcome))

    start = time.perf_counter()
    for k, offset in enumerate(arrivals):
        due = start + float(offset)
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        if k == first_counted and on_counted is not None:
            await on_counted()
        if max_outstanding is not None and len(outstanding) >= max_outstanding:
            run.dropped += 1
            continue
        task = asyncio.create_task(one(k, due))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    run.sent_s = time.perf_counter() - start
    if outstanding:
        await asyncio.wait(set(outstanding), timeout=drain_timeout_s)
    run.done_s = time.perf_counter() - start
    return run


def percentiles(latencies_s: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """``p<N>_ms`` of the latencies (NaN when there are none)."""
    if not latencies_s:
        return {f"p{p}_ms": math.nan for p in points}
    values = np.percentile(np.asarray(latencies_s) * 1e3, list(points))
    return {f"p{p}_ms": float(v) for p, v in zip(points, values, strict=True)}


# --- the HTTP sender ------------------------------------------------------------------------------------


def _field(payload: bytes, name: str) -> str:
    """The value of a top-level JSON field as text; "<not json>" when the answer is no JSON object."""
    try:
        return str(json.loads(payload).get(name))
    except (ValueError, AttributeError):
        return "<not json>"


async def _http(
    url: str, route: str, body: Callable[[int], dict[str, Any]], rps: float, seconds: float,
    warmup_s: float, tally: str | None,
) -> dict[str, Any]:  # fmt: skip
    import aiohttp

    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def send(i: int) -> tuple[str, bytes]:  # (HTTP status or the client error's name, body)
            try:
                async with session.post(route, data=json.dumps(body(i)), headers=headers) as response:
                    return str(response.status), await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__, b""

        arrivals = fixed_arrivals(rps, warmup_s + seconds)
        run = await schedule(send, arrivals, int(rps * warmup_s))
    done = run.counted()
    statuses = [c.outcome[0] for c in done]
    ok = statuses.count("200")
    error_kinds: dict[str, int] = {}
    for status in statuses:
        if status != "200":
            error_kinds[status] = error_kinds.get(status, 0) + 1
    tallies: dict[str, int] = {}
    for c in done:
        if tally is not None and c.outcome[0] == "200":
            value = _field(c.outcome[1], tally)
            tallies[value] = tallies.get(value, 0) + 1
    latencies = [c.latency_s for c in done]
    return {
        "offered_rps": rps,
        "seconds": seconds,
        "requests": len(done),
        "completed_rps": round(ok / max(run.done_s - warmup_s, 1e-9), 1),  # answered with 200
        "errors": sum(error_kinds.values()),
        "error_kinds": error_kinds,
        **({"tally": {tally: tallies}} if tally is not None else {}),
        "generator_lag_s": max(0.0, run.sent_s - (warmup_s + seconds)),
        **percentiles(latencies),
        "max_ms": max(latencies) * 1e3 if latencies else math.nan,
    }


def open_loop(
    url: str,
    route: str,
    body: Callable[[int], dict[str, Any]],
    rps: float,
    seconds: float,
    warmup_s: float = 3.0,
    tally: str | None = None,
) -> dict[str, Any]:
    """POST ``body(i)`` as JSON to ``url + route`` at ``rps`` for ``warmup_s`` (not counted) then ``seconds``;
    latency percentiles (ms, from each request's due time), errors (non-200 or no answer) by kind, and
    with ``tally`` the count of each value of that field in the 200 answers' JSON. One asyncio process
    with aiohttp costs ~0.3 ms of CPU a request, a fraction of what Locust costs on the same cores."""
    return asyncio.run(_http(url, route, body, rps, seconds, warmup_s, tally))
