"""Serving state store: per-user history, result cache, trending, rate limits, feedback stream, forget.

Two implementations of one async interface (`StateStore`): `LocalState` (in-process dicts + a JSON-lines
journal, one worker) and `RedisState` (shared by every worker). Build one with `open_state(url, journal)`.

Redis keys (all under `prefix`, default "folio:"):
    hist:<user>   list of Event JSON, oldest first, LTRIMmed to the newest `max_history`
    gen:<user>    cache generation; SETNX to a time-derived base (microseconds) then INCR, so it is never
                  reused for a user even after forget deleted it (`generation()`: 0 = unknown user,
                  -1 = forgotten and nothing written since)
    cache:<user>  hash field -> {"v": value, "exp": unix time}; at most `cache_fields` fields; EXPIRE
                  refreshed on put; expired fields are ignored
    fids:<user>   list of the user's entry ids in `feedback` (so forget can XDEL them)
    rl:<bucket>   hash tokens/ts of a token bucket (atomic Lua); PEXPIREs when the bucket would be full again
    trendlog:<hl> zset item -> log2 of the sum of w * 2**((ts - EPOCH) / hl); one key per half-life hl
    feedback      stream, field "e" = Event JSON, XADD MAXLEN ~ stream_maxlen; a forget adds a tombstone
                  entry, field "f" = the user's keyed hash (the feedback export reads both, in order)
    forgotten:k   set of keyed hashes (HMAC-SHA256) of forgotten user ids (never the raw id)
    purge         set of `purge:<nonce>` lists of stream ids still to XDEL (a forget in progress)
    shared:<name> small values every worker reads (e.g. the version /admin/reload asked for)
    hashkey       the HMAC key, when FOLIO_USER_HASH_KEY is not set (generated once, shared by workers)

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

RedisState raises `StateUnavailable` for every Redis error; it connects lazily (use `RedisState.connect` to
fail fast at start-up). Its connection pool blocks for a free connection (up to the socket timeout)
instead of failing at once when all are busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EVENTS = ("view", "click", "add_to_cart", "purchase", "rate")
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
    event: str
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


class StateStore(Protocol):
    kind: str

    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None: ...
    async def history(self, user_id: str) -> list[Event]: ...
    async def generation(self, user_id: str) -> int: ...
    async def cache_get(self, user_id: str, field: str) -> str | None: ...
    async def cache_put(self, user_id: str, field: str, value: str, ttl_s: float) -> None: ...
    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]: ...
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


def _gen_base() -> int:
    return time.time_ns() // 1000


def _check(events: Sequence[Event], weights: Sequence[float]) -> None:
    if len(events) != len(weights):
        raise ValueError(f"{len(events)} events but {len(weights)} weights")
    for w in weights:
        if not 0 < w <= MAX_WEIGHT:
            raise ValueError(f"weights must be in (0, {MAX_WEIGHT:g}], got {w!r}")


def _check_bucket(costs: Mapping[str, int], rate_per_s: float, burst: int) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
    if any(not 1 <= c <= burst for c in costs.values()):
        raise ValueError(f"each cost must be in 1..burst ({burst}), got {dict(costs)}")


def local_hash_key(directory: Path) -> bytes:
    """The HMAC key of an embedded store: 32 random bytes in ``directory/user-hash.key`` (mode 0600),
    made once."""
    path = directory / "user-hash.key"
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(directory)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable key: delete it to make a new one")
    return key.encode()


MAX_SEQ = 2**62


def journal_seq(rec: Mapping[str, Any]) -> int:
    """The sequence number of a journal line (0: written before lines had one); ValueError if malformed."""
    n = rec.get("n", 0)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < MAX_SEQ:
        raise ValueError(f"bad sequence number {n!r}")
    return n


def read_journal(path: Path) -> tuple[list[bytes], bool]:
    """The complete lines of an append-only journal (created, with its directory, when missing), and
    whether a torn last line was cut off the file: it was never acknowledged (no fsync returned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch()
        fsync_dir(path.parent)
        return [], False
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("journal %s: dropping a torn last line (%d B)", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    return data[:end].splitlines(), end < len(data)


class JournalFile:
    """An append-only journal open for appending. ``append`` returns once the payload is fsynced, or
    raises StateUnavailable with the file cut back to what it was (a refused write never comes back on
    replay)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = open(path, "ab")  # noqa: SIM115  (closed in close())

    def tell(self) -> int:
        return self._fh.tell()

    def append(self, payload: bytes) -> None:
        start = self._fh.tell()
        try:
            self._fh.write(payload)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._fh.close()  # drops what is still buffered
            try:
                os.truncate(self.path, start)
                self._fh = open(self.path, "ab")  # noqa: SIM115
            except OSError as again:
                log.error("journal %s could not be restored after a failed write: %s", self.path, again)
            raise StateUnavailable(f"journal {self.path}: write failed: {exc}") from exc

    def adopt(self, fh: BinaryIO) -> None:
        """Append through ``fh`` from now on (the journal was replaced); the old handle is closed."""
        old, self._fh = self._fh, fh
        old.close()

    def close(self) -> None:
        self._fh.close()


@contextlib.contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Every Redis (or socket) error inside, as StateUnavailable naming the (redacted) URL."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"redis at {url}: {type(exc).__name__}: {exc}") from exc


@dataclass
class _Filtered:
    """A journal range with the purged users' lines removed."""

    kept: list[bytes]
    removed: dict[str, float]  # item -> log2 sum of the removed trending contributions
    forgotten_again: set[str]  # purged users with a tombstone in this range
    kept_users: set[str]  # purged users with event lines kept (sent after their tombstone)


class LocalState:
    """One process: dicts in memory, acknowledged feedback and forget records in an fsynced journal."""

    kind = "local"

    def __init__(
        self,
        journal_path: Path,
        *,
        max_history: int = 500,
        half_life_s: float = 86400.0,
        max_cached_users: int = 10_000,
        max_buckets: int = 100_000,
        cache_fields: int = 32,
        hash_key: bytes | None = None,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.max_history, self.half_life_s = max_history, half_life_s
        self.max_cached_users, self.max_buckets, self.cache_fields = (
            max_cached_users,
            max_buckets,
            cache_fields,
        )
        self._key = hash_key or local_hash_key(self.journal_path.parent)
        self._hist: dict[str, deque[Event]] = {}
        self._gen: dict[str, int] = {}
        self._cache: OrderedDict[str, dict[str, tuple[str, float]]] = OrderedDict()
        self._trend: dict[str, float] = {}  # item -> log2 sum (module doc)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._forgotten: set[str] = set()
        self._legacy_forgotten: set[str] = set()
        self._shared: dict[str, str] = {}
        self._journal_users: set[str] = set()  # users with event lines in the journal file
        self._purge: set[str] = set()  # forgotten users whose older lines compaction must remove
        self._compactor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._seq = 0  # the highest sequence number "n" in the journal (training/feedback.py's checkpoint)
        self.journal_skipped = 0  # unreadable journal lines skipped on replay (e.g. torn by a crash)
        self._replay()
        self._journal = JournalFile(self.journal_path)
        if self._purge:  # a forget whose compaction did not run before the process stopped
            self._compact_now()

    def user_key(self, user_id: str) -> str:
        return keyed_user_hash(self._key, user_id)

    # ----------------------------------------------------------- journal replay
    def _replay(self) -> None:
        lines, torn = read_journal(self.journal_path)
        self.journal_skipped += torn
        by_key: dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            try:
                self._replay_line(json.loads(line), by_key)
            except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError) as exc:
                self.journal_skipped += 1
                log.warning("journal %s line %d unreadable, skipped: %s", self.journal_path, n, exc)
        if self.journal_skipped:
            log.warning("journal %s: %d line(s) skipped on replay", self.journal_path, self.journal_skipped)

    def _replay_line(self, rec: dict[str, Any], by_key: dict[str, str]) -> None:
        op = rec["op"]
        if "n" in rec:
            self._seq = max(self._seq, journal_seq(rec))
        if op == "ev":
            ev, w = Event(**rec["e"]), float(rec["w"])
            _check([ev], [w])
            by_key.setdefault(self.user_key(ev.user_id), ev.user_id)
            self._apply(ev, log2_weight(w, ev.ts, self.half_life_s))
        elif op == "forget" and "k" in rec:
            key = str(rec["k"])
            if (user := by_key.get(key)) is not None:
                self._drop_user(user)
                if user in self._journal_users:
                    self._purge.add(user)
            self._forgotten.add(key)
        elif op == "forget":  # written before keyed hashes
            self._legacy_forgotten.add(str(rec["h"]))
        elif op in ("tr", "trl"):  # anonymous trending sums of purged lines ("tr": linear, older journals)
            if float(rec.get("hl", self.half_life_s)) != self.half_life_s:
                log.warning("journal: trending sums kept for another half-life (%s s) are dropped", rec["hl"])
                return  # they cannot be rescaled without the events' timestamps
            for item, s in rec["s"].items():
                if op == "tr" and not float(s) > 0:
                    continue
                x = float(s) if op == "trl" else math.log2(float(s))
                if not math.isfinite(x) or not isinstance(item, str) or len(item) > MAX_ID_CHARS:
                    raise ValueError(f"bad trending sum {item!r}: {s!r}")
                self._trend[item] = log2_add(self._trend.get(item), x)
        else:
            raise ValueError(f"unknown op {op!r}")

    def _apply(self, ev: Event, log2_w: float) -> None:
        u = ev.user_id
        self._hist.setdefault(u, deque(maxlen=self.max_history)).append(ev)
        self._trend[ev.item_id] = log2_add(self._trend.get(ev.item_id), log2_w)
        self._gen[u] = self._gen.get(u, _gen_base()) + 1
        self._cache.pop(u, None)
        self._journal_users.add(u)
        self._forgotten.discard(self.user_key(u))
        self._legacy_forgotten.discard(legacy_user_hash(u))

    def _drop_user(self, user_id: str) -> None:
        for d in (self._hist, self._gen, self._cache):
            d.pop(user_id, None)
        self._buckets.pop(f"user:{user_id}", None)

    # ---------------------------------------------------------------- writes
    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None:
        _check(events, weights)
        if not events:
            return
        contributions = [
            log2_weight(float(w), e.ts, self.half_life_s) for e, w in zip(events, weights, strict=True)
        ]
        async with self._lock:  # sequence numbers in file order
            payload = "".join(
                json.dumps({"op": "ev", "n": self._seq + i, "w": float(w), "e": asdict(e)}) + "\n"
                for i, (e, w) in enumerate(zip(events, weights, strict=True), 1)
            ).encode()
            await asyncio.to_thread(self._journal.append, payload)
            self._seq += len(events)
            for e, x in zip(events, contributions, strict=True):
                self._apply(e, x)

    async def forget(self, user_id: str) -> None:
        key = self.user_key(user_id)
        async with self._lock:
            record = (json.dumps({"op": "forget", "n": self._seq + 1, "k": key}) + "\n").encode()
            await asyncio.to_thread(self._journal.append, record)
            self._seq += 1
            self._drop_user(user_id)
            self._forgotten.add(key)
            if user_id in self._journal_users:
                self._purge.add(user_id)
        if self._purge and (self._compactor is None or self._compactor.done()):
            self._compactor = asyncio.create_task(self._compact_pending())

    # ------------------------------------------------------------ compaction
    def _filter(self, data: bytes, purge: set[str]) -> _Filtered:
        """Drop the lines of `purge` users that precede their last tombstone in `data`."""
        keys = {self.user_key(u): u for u in purge}
        lines = data.splitlines()
        last_tomb: dict[str, int] = {}
        for n, line in enumerate(lines):
            if b'"forget"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    user = keys.get(json.loads(line).get("k"))
                    if user is not None:
                        last_tomb[user] = n
        out = _Filtered([], {}, set(last_tomb), set())
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
                user = rec["e"]["user_id"] if rec.get("op") == "ev" else None
                if user in purge and n < last_tomb.get(user, -1):
                    e, w = Event(**rec["e"]), float(rec["w"])
                    _check([e], [w])
                    out.removed[e.item_id] = log2_add(
                        out.removed.get(e.item_id), log2_weight(w, e.ts, self.half_life_s)
                    )
                    continue
            except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError):
                continue  # unreadable lines may hold anything (replay skipped them): drop them
            if user in purge:
                out.kept_users.add(user)
            out.kept.append(line + b"\n")
        return out

    async def compact(self) -> None:
        """Rewrite the journal without the lines of forgotten users. Reads and filters what is on disk
        without the lock; holds it only to copy the lines appended meanwhile and swap the files."""
        async with self._lock:
            purge, end = set(self._purge), self._journal.tell()
        if not purge:
            return
        head = await asyncio.to_thread(self._filter, _read_range(self.journal_path, 0, end), purge)
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        await asyncio.to_thread(write_synced, tmp, head.kept, "wb")
        async with self._lock:
            tail_bytes = _read_range(self.journal_path, end, self._journal.tell())
            tail = await asyncio.to_thread(self._filter, tail_bytes, purge)
            removed = head.removed
            for item, x in tail.removed.items():
                removed[item] = log2_add(removed.get(item), x)
            await asyncio.to_thread(
                self._swap, tmp, [*tail.kept, *_trending_record(removed, self.half_life_s)]
            )
            for user in purge:
                if user not in tail.forgotten_again:  # forgotten again meanwhile: the next run handles it
                    self._purge.discard(user)
                if user not in head.kept_users | tail.kept_users:
                    self._journal_users.discard(user)

    def _swap(self, tmp: Path, extra: list[bytes]) -> None:
        write_synced(tmp, extra, "ab")
        new = open(tmp, "ab")  # noqa: SIM115  (opened before the rename: no failure after it)
        os.replace(tmp, self.journal_path)
        self._journal.adopt(new)
        fsync_dir(self.journal_path.parent)

    async def _compact_pending(self) -> None:
        while self._purge:
            try:
                await self.compact()
            except OSError:
                log.exception("journal compaction failed; forgotten users' lines stay until the next one")
                return

    def _compact_now(self) -> None:
        """compact() at construction, when nothing else can write."""
        purge = set(self._purge)
        done = self._filter(self.journal_path.read_bytes(), purge)
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        write_synced(tmp, [*done.kept, *_trending_record(done.removed, self.half_life_s)], "wb")
        self._swap(tmp, [])
        self._purge.clear()
        self._journal_users -= purge - done.kept_users

    async def settle(self) -> None:
        """Wait for a compaction in progress (tests; close() does it too)."""
        if self._compactor is not None:
            await self._compactor

    # ----------------------------------------------------------------- reads
    async def history(self, user_id: str) -> list[Event]:
        return list(self._hist.get(user_id, ()))

    async def generation(self, user_id: str) -> int:
        if user_id not in self._gen and await self.is_forgotten(user_id):
            return -1
        return self._gen.get(user_id, 0)

    async def cache_get(self, user_id: str, field: str) -> str | None:
        fields = self._cache.get(user_id)
        if fields is None or field not in fields:
            return None
        value, exp = fields[field]
        if exp <= time.time():
            del fields[field]
            return None
        self._cache.move_to_end(user_id)
        return value

    async def cache_put(self, user_id: str, field: str, value: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        fields = self._cache.setdefault(user_id, {})
        if field not in fields and len(fields) >= self.cache_fields:
            now = time.time()
            for f in [f for f, (_, exp) in fields.items() if exp <= now]:
                del fields[f]
            if len(fields) >= self.cache_fields:
                return  # bounded per user: the result is computed again next time
        fields[field] = (value, time.time() + ttl_s)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self.max_cached_users:
            self._cache.popitem(last=False)

    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        items = sorted(self._trend.items(), key=lambda kv: -kv[1])[:top]
        return {item: decayed(x, now, self.half_life_s) for item, x in items}

    async def take_tokens(
        self, costs: Mapping[str, int], rate_per_s: float, burst: int, now: float | None = None
    ) -> float:
        _check_bucket(costs, rate_per_s, burst)
        now = time.time() if now is None else now
        state = {}
        for bucket in costs:
            tokens, ts = self._buckets.get(bucket, (float(burst), now))
            if now > ts:
                tokens, ts = min(float(burst), tokens + (now - ts) * rate_per_s), now
            state[bucket] = (tokens, ts)
        wait = max(max(0.0, (costs[b] - tokens) / rate_per_s) for b, (tokens, _) in state.items())
        for bucket, (tokens, ts) in state.items():  # all or nothing
            self._buckets[bucket] = (tokens - costs[bucket] if wait == 0 else tokens, ts)
            self._buckets.move_to_end(bucket)
        while len(self._buckets) > self.max_buckets:  # evicting a bucket only refills it: lenient, bounded
            self._buckets.popitem(last=False)
        return wait

    async def take_token(self, bucket: str, rate_per_s: float, burst: int, now: float | None = None) -> float:
        return await self.take_tokens({bucket: 1}, rate_per_s, burst, now)

    async def is_forgotten(self, user_id: str) -> bool:
        return self.user_key(user_id) in self._forgotten or (
            bool(self._legacy_forgotten) and legacy_user_hash(user_id) in self._legacy_forgotten
        )

    async def get_shared(self, name: str) -> str | None:
        return self._shared.get(name)

    async def set_shared(self, name: str, value: str) -> None:
        self._shared[name] = value

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.settle()
        self._journal.close()


def _trending_record(removed: dict[str, float], half_life_s: float) -> list[bytes]:
    """The journal line that keeps purged lines' trending contributions as anonymous per-item sums."""
    return [json.dumps({"op": "trl", "hl": half_life_s, "s": removed}).encode() + b"\n"] if removed else []


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def write_synced(path: Path, lines: list[bytes], mode: str) -> None:
    with open(path, mode) as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# KEYS: stream, fids:<user>, trendlog:<hl>. ARGV: maxlen, event JSON, item, log2 contribution.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('RPUSH', KEYS[2], id)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[1]), -1)
local x = tonumber(ARGV[4])
local cur = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[3]))
if cur then
  local hi, lo = math.max(cur, x), math.min(cur, x)
  x = hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
end
redis.call('ZADD', KEYS[3], string.format('%.17g', x), ARGV[3])
return id
"""
# KEYS: cache:<user>. ARGV: field, value, max fields, ttl ms. A new field past the bound is not stored.
_CACHE_PUT = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
# KEYS: the buckets. ARGV: rate, burst, now ('' = Redis's clock), then one cost per bucket. All or nothing.
_TOKENS = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local tokens, stamps, wait = {}, {}, 0
for i, key in ipairs(KEYS) do
  local s = redis.call('HMGET', key, 'tokens', 'ts')
  local t, ts = tonumber(s[1]) or burst, tonumber(s[2]) or now
  if now > ts then t = math.min(burst, t + (now - ts) * rate); ts = now end
  tokens[i], stamps[i] = t, ts
  wait = math.max(wait, (tonumber(ARGV[3 + i]) - t) / rate)
end
for i, key in ipairs(KEYS) do
  local t = tokens[i]
  if wait <= 0 then t = t - tonumber(ARGV[3 + i]) end
  redis.call('HSET', key, 'tokens', string.format('%.17g', t), 'ts', string.format('%.17g', stamps[i]))
  redis.call('PEXPIRE', key, math.ceil((burst - t) / rate * 1000) + 1)
end
return string.format('%.17g', math.max(wait, 0))
"""
# KEYS: fids, hist, gen, cache, rl, forgotten, purge set, purge list, stream. ARGV: keyed hash, maxlen.
_FORGET = """
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('XADD', KEYS[9], 'MAXLEN', '~', ARGV[2], '*', 'f', ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[8])
  redis.call('SADD', KEYS[7], KEYS[8])
end
"""
# KEYS: purge list, stream, purge set. Deletes up to 500 stream entries; returns how many ids are left.
_PURGE_CHUNK = """
local ids = redis.call('LRANGE', KEYS[1], 0, 499)
if #ids > 0 then
  redis.call('XDEL', KEYS[2], unpack(ids))
  redis.call('LTRIM', KEYS[1], #ids, -1)
end
local left = redis.call('LLEN', KEYS[1])
if left == 0 then redis.call('SREM', KEYS[3], KEYS[1]) end
return left
"""


def redact_url(url: str) -> str:
    p = urlsplit(url)
    if p.password is None:
        return url
    netloc = f"{p.username or ''}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
    return urlunsplit(p._replace(netloc=netloc))


class RedisState:
    """Shared state in Redis (`redis.asyncio`), lazily connected; every Redis error -> StateUnavailable."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "folio:",
        max_history: int = 500,
        half_life_s: float = 86400.0,
        stream_maxlen: int = 1_000_000,
        socket_timeout_s: float = 0.5,
        cache_fields: int = 32,
        max_connections: int = 200,
        hash_key: bytes | None = None,
    ) -> None:
        self.url, self.prefix = redact_url(url), prefix
        self.max_history, self.half_life_s, self.stream_maxlen = max_history, half_life_s, stream_maxlen
        self.socket_timeout_s, self.cache_fields = socket_timeout_s, cache_fields
        self._key = hash_key
        # per half-life: sums made with another one cannot be rescaled (a changed setting starts afresh)
        self._trend_key = self._k("trendlog", f"{half_life_s:g}")
        # One immediate retry on ConnectionError only: it reopens a pooled connection that went stale when
        # Redis restarted. Timeouts are not retried (a retried MULTI/EXEC whose reply was late would apply
        # twice; only a connection cut between EXEC and its reply still can), so a slow or unreachable
        # Redis fails within about 2 * socket_timeout_s. The pool waits (up to the socket timeout) for a
        # free connection: a busy Redis is not a down Redis.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=True,
        )
        self._r = aioredis.Redis.from_pool(pool)  # closes the pool with the client
        self._append = self._r.register_script(_APPEND)
        self._tokens = self._r.register_script(_TOKENS)
        self._cache_put = self._r.register_script(_CACHE_PUT)
        self._forget = self._r.register_script(_FORGET)
        self._purge_chunk = self._r.register_script(_PURGE_CHUNK)

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool's client, for other stores sharing this Redis (runners/state/catalog.py)."""
        return self._r

    @classmethod
    async def connect(cls, url: str, **kw: Any) -> RedisState:
        state = cls(url, **kw)
        if not await state.ping():
            await state.close()
            raise StateUnavailable(f"redis at {state.url} did not answer PING in {state.socket_timeout_s}s")
        return state

    def _k(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.url)

    async def user_key(self, user_id: str) -> str:
        if self._key is None:  # shared by every worker: made once by whoever comes first
            with self._guard():
                await self._r.set(self._k("hashkey"), secrets.token_hex(32), nx=True)
                self._key = str(await self._r.get(self._k("hashkey"))).encode()
        return keyed_user_hash(self._key, user_id)

    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None:
        _check(events, weights)
        if not events:
            return
        users = list(dict.fromkeys(e.user_id for e in events))
        keys = {u: await self.user_key(u) for u in users}
        rows = [
            (e.to_json(), repr(log2_weight(float(w), e.ts, self.half_life_s)))
            for e, w in zip(events, weights, strict=True)
        ]
        with self._guard():
            async with self._r.pipeline(transaction=True) as p:
                for e, (js, x) in zip(events, rows, strict=True):
                    p.rpush(self._k("hist", e.user_id), js)
                    script_keys = [self._k("feedback"), self._k("fids", e.user_id), self._trend_key]
                    await self._append(
                        keys=script_keys, args=[self.stream_maxlen, js, e.item_id, x], client=p
                    )
                base = _gen_base()
                for u in users:
                    p.ltrim(self._k("hist", u), -self.max_history, -1)
                    p.setnx(self._k("gen", u), base)
                    p.incr(self._k("gen", u))
                    p.delete(self._k("cache", u))
                    p.srem(self._k("forgotten", "k"), keys[u])
                await p.execute()

    async def history(self, user_id: str) -> list[Event]:
        with self._guard():
            rows = await self._r.lrange(self._k("hist", user_id), 0, -1)
        return [Event.from_json(r) for r in rows]

    async def generation(self, user_id: str) -> int:
        key = await self.user_key(user_id)
        with self._guard():
            async with self._r.pipeline(transaction=False) as p:
                p.get(self._k("gen", user_id))
                p.sismember(self._k("forgotten", "k"), key)
                g, forgotten = await p.execute()
        if g is None:
            return -1 if forgotten else 0
        return int(g)

    async def cache_get(self, user_id: str, field: str) -> str | None:
        with self._guard():
            raw = await self._r.hget(self._k("cache", user_id), field)
        if raw is None:
            return None
        rec = json.loads(raw)
        return str(rec["v"]) if float(rec["exp"]) > time.time() else None

    async def cache_put(self, user_id: str, field: str, value: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        record = json.dumps({"v": value, "exp": time.time() + ttl_s})
        args: list[str | int] = [field, record, self.cache_fields, math.ceil(ttl_s * 1000)]
        with self._guard():  # bounded per user: fields of older generations expire with the key
            await self._cache_put(keys=[self._k("cache", user_id)], args=args)

    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        with self._guard():
            rows = await self._r.zrevrange(
                self._trend_key, 0, -1 if top is None else top - 1, withscores=True
            )
        scored = cast(list[tuple[str, float]], rows)
        return {str(item): decayed(float(x), now, self.half_life_s) for item, x in scored}

    async def take_tokens(
        self, costs: Mapping[str, int], rate_per_s: float, burst: int, now: float | None = None
    ) -> float:
        _check_bucket(costs, rate_per_s, burst)
        args: list[str | int] = [repr(float(rate_per_s)), burst, "" if now is None else repr(float(now))]
        with self._guard():
            keys = [self._k("rl", b) for b in costs]
            return float(await self._tokens(keys=keys, args=[*args, *costs.values()]))

    async def take_token(self, bucket: str, rate_per_s: float, burst: int, now: float | None = None) -> float:
        return await self.take_tokens({bucket: 1}, rate_per_s, burst, now)

    async def forget(self, user_id: str) -> None:
        key = await self.user_key(user_id)
        purge_list = self._k("purge", uuid.uuid4().hex)
        keys = [self._k(k, user_id) for k in ("fids", "hist", "gen", "cache")]
        keys += [self._k("rl", f"user:{user_id}"), self._k("forgotten", "k"), self._k("purge"), purge_list]
        keys.append(self._k("feedback"))
        with self._guard():
            await self._forget(keys=keys, args=[key, self.stream_maxlen])
            # this forget's entries, then any a crashed forget left behind
            for pending in [purge_list, *await self._r.smembers(self._k("purge"))]:
                while await self._purge_chunk(keys=[pending, self._k("feedback"), self._k("purge")]):
                    pass

    async def is_forgotten(self, user_id: str) -> bool:
        key = await self.user_key(user_id)
        with self._guard():
            return bool(await self._r.sismember(self._k("forgotten", "k"), key))

    async def get_shared(self, name: str) -> str | None:
        with self._guard():
            value = await self._r.get(self._k("shared", name))
        return None if value is None else str(value)

    async def set_shared(self, name: str, value: str) -> None:
        with self._guard():
            await self._r.set(self._k("shared", name), value)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._r.ping(), timeout=self.socket_timeout_s))
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._r.aclose()


def open_state(redis_url: str | None, journal_path: Path, **kw: Any) -> StateStore:
    """RedisState when a URL is given (lazy: see RedisState.connect), else LocalState on `journal_path`."""
    return RedisState(redis_url, **kw) if redis_url else LocalState(journal_path, **kw)
