"""The serving state store's contract: the event model, its bounds, and the async interface
(`StateStore`) both backends implement: `LocalState` (runners/state/local.py: in-process dicts + an
fsynced JSON-lines journal, one worker) and `RedisState` (runners/state/redis_state.py: shared by every
worker). Build one with `runners.state.backends.open_state(url, journal)`.

Feedback log: the stream (Redis) and the journal's "ev" / "forget" lines (local; numbered by "n", in file
order) are the ordered log `training/feedback.py` exports from (runners/state/feedback_log.py reads it).

Durability: `append_events` returns after the data is durable as far as the backend goes: LocalState writes,
flushes and fsyncs its journal (and replays it on construction; a torn last line is dropped, any other bad
line is skipped, both counted in `journal_skipped` and logged); RedisState applies everything in one
MULTI/EXEC (persistence is then Redis's own AOF/RDB configuration). Everything a write needs is computed
and validated before the first byte is written (`Event` checks its own bounds; weights are checked).

Trending decay: an event of weight w at ts counts w * 2**(-(now - ts) / half_life_s) at `now`. We store, per
item, L = log2(sum of w * 2**((ts - EPOCH) / half_life_s)) (added in log space: max + log2(1 + 2**(min-max)))
and read 2**(L - (now - EPOCH) / half_life_s). L grows linearly with time, never exponentially, so nothing
overflows for any accepted timestamp (up to 2100) and any half-life; the read is finite because accepted
timestamps are at most a bounded skew ahead of now (runners/platform/settings.py checks skew / half-life).

Forget (right to be forgotten) deletes the user's history, cache, generation, the bucket f"user:{user_id}"
and their feedback entries, then records the keyed hash of the user id so `is_forgotten` is True until the
user sends feedback again. Its cost does not grow with the size of the store:
    Redis: one atomic script (per-user keys, the forgotten set, the fids list renamed to a purge list),
    then the stream entries are XDELed in chunks of 500, one short script each (a crash midway leaves the
    purge list in `purge`; the next forget finishes it).
    Local: a tombstone line appended to the journal (O(1)); the user's journal lines are removed by a
    compaction in the background (and at start-up, and before close()), which rewrites the journal
    without holding the write lock except to copy what was appended meanwhile. The user's trending
    contributions are kept only as anonymous per-item sums (also in Redis). Note: Redis's own AOF/RDB
    files may still hold the deleted bytes until Redis rewrites them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Protocol

from models.events import EVENTS, EventName

EPOCH = 1767225600.0  # 2026-01-01T00:00:00Z
TS_MAX = 4102444800.0  # 2100-01-01T00:00:00Z: no stored timestamp is later (the API's window is narrower)
MAX_ID_CHARS = 128  # user and item ids
MAX_VARIANT_CHARS = 64
MAX_VALUE = 1e6  # |value| of an event
MAX_WEIGHT = 1e3  # trending weight of one event


@dataclass(frozen=True)
class Event:
    """One feedback event. Construction validates every field, so nothing unbounded is ever stored (and a
    journal line that fails it is skipped on replay)."""

    user_id: str
    item_id: str
    event: EventName  # checked in __post_init__ (JSON replay gives any str)
    value: float | None
    ts: float
    variant: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", float(self.ts))  # numpy scalars in, plain JSON out
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))
        if self.event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {self.event!r}")
        for name, text, limit in (
            ("user_id", self.user_id, MAX_ID_CHARS),
            ("item_id", self.item_id, MAX_ID_CHARS),
            ("variant", self.variant or "-", MAX_VARIANT_CHARS),
        ):
            if not isinstance(text, str) or not 0 < len(text) <= limit:
                raise ValueError(f"{name} must be a non-empty string of at most {limit} characters")
        if not 0 < self.ts <= TS_MAX:  # also false for NaN
            raise ValueError(f"ts must be unix seconds in (0, {TS_MAX:.0f}], got {self.ts!r}")
        if self.value is not None and not abs(self.value) <= MAX_VALUE:
            raise ValueError(f"value must be finite with |value| <= {MAX_VALUE:g}, got {self.value!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str | bytes) -> Event:
        return cls(**json.loads(s))


class StateUnavailable(RuntimeError):
    """The backing store (Redis) cannot be reached; the message names the URL (never a password)."""


class StateBusy(StateUnavailable):
    """The store is reachable but every pooled connection stayed busy past the wait deadline (this worker
    is saturated, not the store down). A StateUnavailable, so "not now" callers need no change; it never
    counts toward the store's circuit breaker and is never retried."""


@dataclass
class UserSnapshot:
    """What a request needs of a user, read in one call (one Redis round trip): the cache generation
    (as ``generation``), whether the user is forgotten (as ``is_forgotten``) and the feedback history
    (as ``history``), whose rows are parsed only when read: a cache hit never reads them."""

    generation: int
    forgotten: bool
    rows: Sequence[Any]
    parse: Callable[[Any], Event] = field(default=lambda row: row)

    @cached_property
    def events(self) -> list[Event]:
        return [self.parse(r) for r in self.rows]


class StateStore(Protocol):
    kind: str

    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None: ...
    async def snapshot(self, user_id: str) -> UserSnapshot: ...
    async def history(self, user_id: str) -> list[Event]: ...
    async def generation(self, user_id: str) -> int: ...
    async def cache_get(self, user_id: str, field: str) -> str | None: ...
    async def cache_put(self, user_id: str, field: str, value: str, ttl_s: float) -> None: ...
    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]: ...
    async def active_users(self, events: int) -> dict[str, int]: ...
    async def take_tokens(
        self, costs: Mapping[str, int], rate_per_s: float, burst: int, now: float | None = None
    ) -> float: ...
    async def take_token(
        self, bucket: str, rate_per_s: float, burst: int, now: float | None = None
    ) -> float: ...
    async def forget(self, user_id: str) -> None: ...
    async def is_forgotten(self, user_id: str) -> bool: ...
    async def get_shared(self, name: str) -> str | None: ...
    async def set_shared(self, name: str, value: str) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def keyed_user_hash(key: bytes, user_id: str) -> str:
    """What the forgotten set holds for a user: HMAC-SHA256 under the store's key (an unkeyed hash of a
    numeric id is reversed by enumeration in under a second)."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


def legacy_user_hash(user_id: str) -> str:
    """Unkeyed sha256, what journals written before keyed hashes hold (still honoured on replay)."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def log2_weight(w: float, ts: float, half_life_s: float) -> float:
    """log2 of an event's trending contribution referred to EPOCH; linear in ts, finite for any Event."""
    return math.log2(w) + (ts - EPOCH) / half_life_s


def log2_add(a: float | None, b: float) -> float:
    """log2(2**a + 2**b) without forming either power."""
    if a is None:
        return b
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


def decayed(log2_sum: float, now: float, half_life_s: float) -> float:
    """The decayed score at ``now``. The exponent is bounded by validated settings (skew / half-life)
    and by the sums' half-life matching the reader's (trl records and Redis keys carry it); the clamp
    only guarantees a read that never raises and stays finite in float32."""
    return 2.0 ** min(log2_sum - (now - EPOCH) / half_life_s, 120.0)


def generation_base() -> int:
    return time.time_ns() // 1000


def check_events(events: Sequence[Event], weights: Sequence[float]) -> None:
    if len(events) != len(weights):
        raise ValueError(f"{len(events)} events but {len(weights)} weights")
    for w in weights:
        if not 0 < w <= MAX_WEIGHT:
            raise ValueError(f"weights must be in (0, {MAX_WEIGHT:g}], got {w!r}")


def check_bucket(costs: Mapping[str, int], rate_per_s: float, burst: int) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
    if any(not 1 <= c <= burst for c in costs.values()):
        raise ValueError(f"each cost must be in 1..burst ({burst}), got {dict(costs)}")
