"""What every scenario shares: the profile (durations, rates), the isolated model store holding the
source version, the services and Redis servers it starts, the mixed load, and the feedback check.

`Suite(source_tag, work, profile)` copies the source version (a tag of the current model store) into a
store of its own under ``work`` and promotes it there; every service of the suite reads that store
(BENTOML_HOME), so promotions never touch the caller's store. Services run one worker, the result cache
and the per-address rate limit off (all load comes from 127.0.0.1), FOLIO_MODEL_WATCH_S=0 unless a
scenario follows the production version.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.faults import feedback as stored
from loadtests.faults.mix import Ledger, Load, Request, Script, Workload, drive, feedback_request, plan
from loadtests.faults.store import IsolatedStore
from loadtests.faults.verdict import FeedbackCheck, check_feedback
from loadtests.harness.openloop import poisson_arrivals
from runners.platform.processes import ServedFolio
from runners.platform.redis_server import RedisServer


@dataclass(frozen=True)
class Profile:
    name: str
    rate: float = 50.0  # requests/s of the mixed load in the fault scenarios (issue 14 probed at ~50)
    before_s: float = 5.0  # load before the fault
    after_s: float = 20.0  # load after the fault (or its end)
    stall_s: float = 8.0  # Triton SIGSTOPped
    redis_down_s: float = 5.0  # Redis stopped, or dead before its restart
    burst: int = 200  # acknowledged feedback events just before a SIGKILL
    sigkills: tuple[str, ...] = ("worker-journal", "worker-redis", "service-journal", "service-redis")
    drain_s: float = 2.0  # FOLIO_DRAIN_S of the SIGTERM scenario
    watch_s: float = 1.0  # FOLIO_MODEL_WATCH_S of the promotion scenario
    promote_wait_s: float = 45.0  # for a refusal (or a swap) after a promotion
    decide_s: float = 20.0  # load after a promotion
    respawn_s: float = 20.0  # load after a worker SIGKILL (BentoML starts another, which starts Triton)
    search_start: float = 50.0  # the capacity search's first rate (requests/s)
    search_factor: float = 1.25  # and the ratio between its rates
    step_s: float = 6.0  # each rate of the capacity search
    overload_s: float = 15.0
    settle_s: float = 10.0  # idle after an overload before its RSS is read
    watcher_rate: float = 50.0
    watcher_s: float = 20.0
    watcher_reps: int = 3
    versions: int = 20  # stored versions in the watcher scenario
    timeout_s: float = 10.0  # the load's client timeout


FULL = Profile("full")
QUICK = Profile(
    "quick", rate=30.0, before_s=1.5, after_s=5.0, stall_s=3.0, redis_down_s=2.0, burst=40, watch_s=0.5,
    promote_wait_s=30.0, decide_s=8.0, respawn_s=10.0, search_start=150.0, search_factor=1.5, step_s=2.5,
    overload_s=4.0, settle_s=3.0, watcher_rate=50.0, watcher_s=5.0, watcher_reps=2, timeout_s=8.0,
    sigkills=("worker-journal", "service-redis"),
)  # fmt: skip
PROFILES = {p.name: p for p in (FULL, QUICK)}
PROBE_EVENTS = 8  # a new user's events in a burst: more than FOLIO_COLD_START_THRESHOLD (5)


class Suite:
    def __init__(self, source_tag: str, work: Path, profile: Profile) -> None:
        from models import registry

        model = registry.get(source_tag)
        self.source_tag = str(model.tag)
        self.work, self.profile = Path(work), profile
        self.work.mkdir(parents=True, exist_ok=True)
        self.workload = Workload.of_version(Path(model.path))
        metadata = json.loads(json.dumps(model.info.metadata, default=str))
        dataset = str(model.info.labels.get("dataset", "synthetic"))
        self.store = IsolatedStore(self.work / "home", Path(model.path), metadata, dataset)
        self._good: str | None = None
        self.seed = 0

    @property
    def good(self) -> str:
        """The source version saved (and promoted) in the suite's store."""
        if self._good is None:
            self._good = self.store.save()
            self.store.promote(self._good)
        return self._good

    def env(self, name: str, *, follow: bool = False, **extra: str) -> dict[str, str]:
        base = {
            "BENTOML_HOME": str(self.store.home),
            "FOLIO_STATE_DIR": str(self.work / name / "state"),
            "FOLIO_RATE_LIMIT_RPS": "0",
            "FOLIO_CACHE_TTL_S": "0",
            "FOLIO_MODEL_WATCH_S": "0",
            "FOLIO_WORKERS": "1",
        }
        pinned = {} if follow else {"FOLIO_MODEL_TAG": self.good}
        if follow:
            _ = self.good  # the store's production version exists before the service starts
        return base | pinned | extra

    def journal(self, name: str) -> Path:
        return self.work / name / "state" / "journal.jsonl"

    @contextmanager
    def serve(self, name: str, *, follow: bool = False, **extra: str) -> Iterator[ServedFolio]:
        served = ServedFolio(self.env(name, follow=follow, **extra), self.work / name / "serve.log")
        with served:
            warm(served.url, self.workload)
            yield served

    def start(self, name: str, *, follow: bool = False, **extra: str) -> ServedFolio:
        """A started (and warmed) service the caller stops, or kills."""
        served = ServedFolio(self.env(name, follow=follow, **extra), self.work / name / "serve.log").start()
        warm(served.url, self.workload)
        return served

    def redis(self, name: str) -> RedisServer:
        """A Redis with an append-only file fsynced every second, as deploy/ configures it."""
        return RedisServer(self.work / name / "redis", appendfsync="everysec")

    def load(
        self, url: str, seconds: float, script: Script | None = None, rate: float | None = None, **kw: Any
    ) -> Load:
        """The mixed load at ``rate`` (default: the profile's) for ``seconds`` while ``script`` runs."""
        self.seed += 1
        arrivals = poisson_arrivals(rate or self.profile.rate, seconds, seed=self.seed)
        requests = plan(self.workload, len(arrivals), seed=self.seed)
        kw.setdefault("timeout_s", self.profile.timeout_s)
        return asyncio.run(drive(url, requests, arrivals, script, **kw))

    def burst(self, user_prefix: str) -> tuple[list[Request], str]:
        """A burst of feedback: PROBE_EVENTS purchases of a brand-new user (its history shows in its
        next /recommend), then known users' clicks; (requests, the new user)."""
        probe = f"{user_prefix}-probe-{self.seed}"
        items = self.workload.items
        events = [feedback_request(probe, items[i % len(items)], "purchase") for i in range(PROBE_EVENTS)]
        users = self.workload.users
        events += [
            feedback_request(users[(7 * i) % len(users)], items[(13 * i + 1) % len(items)])
            for i in range(max(0, self.profile.burst - PROBE_EVENTS))
        ]
        return events, probe


def warm(url: str, workload: Workload, timeout_s: float = 60.0) -> None:
    """A few requests of each read route until /recommend answers from the full pipeline."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as c:
        for item in workload.items[:3]:
            c.post("/similar", json={"item_id": item, "k": 5})
        c.post("/trending", json={"k": 5})
        while time.monotonic() < deadline:
            r = c.post("/recommend", json={"user_id": workload.users[0], "k": 10})
            if r.status_code == 200 and r.json()["fallback"] == "none":
                for user in workload.users[1:6]:
                    c.post("/recommend", json={"user_id": user, "k": 10})
                return
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer /recommend from Triton within {timeout_s:.0f}s")


def journal_check(ledger: Ledger, path: Path) -> FeedbackCheck:
    return check_feedback(ledger, stored.journal_keys(path))


def redis_check(ledger: Ledger, server: RedisServer) -> FeedbackCheck:
    try:
        with server.client() as c:
            keys = stored.redis_keys(c)
    except Exception:  # Redis down or unreadable: the check says "not measured"
        keys = None
    return check_feedback(ledger, keys)


def recommend(url: str, user: str) -> dict[str, Any] | None:
    try:
        r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=30)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def info(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.post(f"{url}/info", json={}, timeout=10)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None
