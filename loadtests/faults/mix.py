"""The fault suite's mixed load: what each request is, how it is sent, what came back.

`plan(workload, n, seed)` draws ``n`` requests in MIX's shares: /recommend for known users and for
users the version never saw, /feedback, /similar, /trending. Every feedback event carries a key no other
event of this process has, (user_id, item_id, ts to the millisecond), so it can be looked up in the
state store afterwards (loadtests/faults/feedback.py). `drive(url, requests, arrivals, script)` sends
them open loop (loadtests/harness/openloop.schedule: latency counts from each request's due time) while
``script(clock, session)`` injects the fault alongside, marking when things happened; every feedback
answer is written to a `Ledger` (acknowledged, refused, or unanswered).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from loadtests.harness.openloop import schedule
from models import version

MIX = {"recommend": 0.80, "feedback": 0.10, "similar": 0.05, "trending": 0.05}
COLD_SHARE = 0.25  # of /recommend: users the version never saw
FeedbackKey = tuple[str, str, float]  # (user_id, item_id, ts rounded to the millisecond)

_TS_BASE = float(int(time.time()) - 3600)  # event times: within the last hour, one millisecond apart
_ts_counter = itertools.count()


def feedback_key(user_id: str, item_id: str, ts: float) -> FeedbackKey:
    return (str(user_id), str(item_id), round(float(ts), 3))


@dataclass(frozen=True)
class Workload:
    """Who and what the requests name: the version's known users and its catalog's item ids."""

    users: list[str]
    items: list[str]

    @classmethod
    def of_version(cls, directory: Path) -> Workload:
        users = [str(u) for u in version.read_histories(directory).user_ids]
        return cls(users, [str(c["item_id"]) for c in version.read_catalog(directory)])


@dataclass(frozen=True)
class Request:
    route: str  # without the leading slash
    body: dict[str, Any]
    key: FeedbackKey | None = None  # feedback only


def feedback_request(user_id: str, item_id: str, event: str = "click") -> Request:
    """A /feedback request with a process-unique event time (its key)."""
    ts = round(_TS_BASE + next(_ts_counter) * 0.001, 3)
    body = {"user_id": user_id, "item_id": item_id, "event": event, "ts": ts}
    return Request("feedback", body, feedback_key(user_id, item_id, ts))


def plan(workload: Workload, n: int, seed: int) -> list[Request]:
    """``n`` requests drawn in MIX's shares (deterministic for a seed, apart from the feedback times)."""
    rng = random.Random(seed)
    routes, weights = list(MIX), list(MIX.values())
    out = []
    for k in range(n):
        route = rng.choices(routes, weights)[0]
        if route == "recommend":
            cold = rng.random() < COLD_SHARE
            user = f"cold-{seed}-{k}" if cold else rng.choice(workload.users)
            out.append(Request(route, {"user_id": user, "k": 10}))
        elif route == "feedback":
            out.append(feedback_request(rng.choice(workload.users), rng.choice(workload.items)))
        elif route == "similar":
            out.append(Request(route, {"item_id": rng.choice(workload.items), "k": 10}))
        else:
            out.append(Request(route, {"k": 10}))
    return out


@dataclass(frozen=True)
class Answer:
    status: str  # the HTTP status, or the client error's class name when no answer came
    retry_after: bool = False  # the answer carried a Retry-After header
    fallback: str | None = None  # /recommend 200: "none", "onnxruntime", "popularity"
    model_version: str | None = None  # /recommend 200
    cold_start: bool | None = None  # /recommend 200
    detail: str = ""  # the start of an error answer's body
    cached: bool | None = None  # /recommend 200: answered from the result cache

    @property
    def answered(self) -> bool:
        return self.status.isdigit()


@dataclass
class Ledger:
    """Every feedback event sent, by what came back: acknowledged (200), refused (any other answer:
    nothing may be written), unanswered (no answer: it may or may not have been written)."""

    acked: set[FeedbackKey] = field(default_factory=set)
    refused: set[FeedbackKey] = field(default_factory=set)
    unanswered: set[FeedbackKey] = field(default_factory=set)

    def record(self, key: FeedbackKey, answer: Answer) -> None:
        if answer.status == "200":
            self.acked.add(key)
        elif answer.answered:
            self.refused.add(key)
        else:
            self.unanswered.add(key)

    @property
    def sent(self) -> int:
        return len(self.acked) + len(self.refused) + len(self.unanswered)


def parse(route: str, status: int, headers: Any, payload: bytes) -> Answer:
    retry = "retry-after" in headers
    if status != 200:
        return Answer(str(status), retry, detail=payload[:200].decode(errors="replace"))
    if route != "recommend":
        return Answer("200", retry)
    try:
        body = json.loads(payload)
        return Answer(
            "200",
            retry,
            body.get("fallback"),
            body.get("model_version"),
            body.get("cold_start"),
            cached=body.get("cached"),
        )
    except ValueError:
        return Answer("200", retry, detail="<not json>")


async def post(session: aiohttp.ClientSession, request: Request, ledger: Ledger | None = None) -> Answer:
    """One request; a client error (refused, reset, timed out) is an Answer named after it."""
    try:
        async with session.post(f"/{request.route}", json=request.body) as r:
            answer = parse(request.route, r.status, r.headers, await r.read())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        answer = Answer(type(exc).__name__)
    if ledger is not None and request.key is not None:
        ledger.record(request.key, answer)
    return answer


async def send_all(
    session: aiohttp.ClientSession, requests: Sequence[Request], ledger: Ledger, concurrency: int = 32
) -> list[Answer]:
    """``requests`` as fast as ``concurrency`` connections allow (a burst), answers in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(request: Request) -> Answer:
        async with gate:
            return await post(session, request, ledger)

    return list(await asyncio.gather(*(one(r) for r in requests)))


class Clock:
    """Seconds since the load started; ``mark(name)`` records when something happened; ``load_done``
    turns true once every request of the load was answered (or timed out)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}
        self.load_done = False

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def mark(self, name: str) -> float:
        self.marks[name] = self.now()
        return self.marks[name]


@dataclass(frozen=True)
class Sample:
    route: str
    due_s: float  # when it was due, from the start of the load
    latency_s: float  # from the due time to the answer
    answer: Answer
    key: FeedbackKey | None = None

    @property
    def done_s(self) -> float:
        return self.due_s + self.latency_s


@dataclass
class Load:
    samples: list[Sample]
    marks: dict[str, float]
    seconds: float  # how long requests were sent for
    ledger: Ledger
    client_lag_ms: float = 0.0  # p99 of how late the generator's event loop woke up (it shares the cores)
    client_cores: float = 0.0  # CPU the generator's process used, in cores, while it ran


async def loop_lag(lags: list[float], stop: asyncio.Event, period_s: float = 0.01) -> None:
    """How late this event loop wakes from each ``period_s`` sleep, in ms, until ``stop``."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(period_s)
        lags.append((time.perf_counter() - t - period_s) * 1e3)


Script = Callable[[Clock, aiohttp.ClientSession], Coroutine[Any, Any, None]]


async def drive(
    url: str,
    requests: Sequence[Request],
    arrivals: np.ndarray,
    script: Script | None = None,
    *,
    keepalive: bool = True,
    timeout_s: float = 10.0,
    ledger: Ledger | None = None,
) -> Load:
    """Send ``requests[k]`` at ``arrivals[k]`` s while ``script`` runs; waits for both. A request still
    unanswered ``timeout_s`` after it left is a TimeoutError. ``keepalive=False``: a connection per
    request, so that a reset says the server dropped a connection it had accepted."""
    ledger = ledger if ledger is not None else Ledger()
    connector = aiohttp.TCPConnector(limit=0, force_close=not keepalive)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        clock, cpu0 = Clock(), time.process_time()
        task = asyncio.create_task(script(clock, session)) if script is not None else None
        lags: list[float] = []
        stop = asyncio.Event()
        monitor = asyncio.create_task(loop_lag(lags, stop))

        async def send(k: int) -> Answer:
            return await post(session, requests[k], ledger)

        run = await schedule(send, arrivals, 0, drain_timeout_s=timeout_s + 5)
        clock.load_done = True
        if task is not None:
            await task
        stop.set()
        await monitor
        cores = (time.process_time() - cpu0) / max(clock.now(), 1e-9)
    samples = [
        Sample(
            requests[c.index].route, float(arrivals[c.index]), c.latency_s, c.outcome, requests[c.index].key
        )
        for c in run.completions
    ]
    lag = float(np.percentile(lags, 99)) if lags else 0.0
    return Load(samples, clock.marks, float(run.sent_s), ledger, lag, cores)
