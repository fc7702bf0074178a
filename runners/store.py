"""Serving state store: per-user history, result cache, trending, rate limits, feedback stream, forget.

Two implementations of one async interface (`StateStore`): `LocalState` (in-process dicts + a JSON-lines
journal, one worker) and `RedisState` (shared by every worker). Build one with `open_state(url, journal)`.

Redis keys (all under `prefix`, default "folio:"):
    hist:<user>   list of Event JSON, oldest first, LTRIMmed to the newest `max_history`
    gen:<user>    cache generation; SETNX to a time-derived base (microseconds) then INCR, so it is never
                  reused for a user even after forget deleted it (`generation()`: 0 = unknown user,
                  -1 = forgotten and nothing written since)
    cache:<user>  hash field -> {"v": value, "exp": unix time}; EXPIRE refreshed on put; expired fields
                  are ignored
    fids:<user>   list of the user's entry ids in `feedback` (so forget can XDEL them)
    rl:<bucket>   hash tokens/ts of a token bucket (atomic Lua); PEXPIREs when the bucket would be full again
    trending      zset item -> sum of w * 2**((ts - EPOCH) / half_life_s)
    feedback      stream, field "e" = Event JSON, XADD MAXLEN ~ stream_maxlen
    forgotten     set of sha256 hex of forgotten user ids (never the raw id)

Durability: `append_events` returns after the data is durable as far as the backend goes: LocalState writes,
flushes and fsyncs its journal (and replays it on construction; a torn last line is dropped and counted);
RedisState applies everything in one MULTI/EXEC (persistence is then Redis's own AOF/RDB configuration).

Trending decay: an event of weight w at ts counts w * 2**(-(now - ts) / half_life_s) at `now`. We store
w * 2**((ts - EPOCH) / half_life_s) and divide by 2**((now - EPOCH) / half_life_s) when reading, so nothing
is rewritten as time passes. Floats stay finite while (ts - EPOCH) / half_life_s < ~1000, i.e. until about
2028-09 with the default one-day half-life; past that move EPOCH (rescale the zset once with
ZUNIONSTORE trending 1 trending WEIGHTS 2**-k). Much older events underflow harmlessly to 0.

Forget (right to be forgotten) deletes the user's history, cache, generation, fids, the bucket
f"user:{user_id}" and their feedback entries (Redis: XDEL; local: journal rewritten via temp file + fsync +
os.replace, the user's trending contributions kept only as anonymous per-item sums), then records
sha256(user_id) so `is_forgotten` is True until the user sends feedback again. Note: Redis's own AOF/RDB
files may still hold the deleted bytes until Redis rewrites them.

RedisState raises `StateUnavailable` for every Redis error; it connects lazily (use `RedisState.connect` to
fail fast at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EVENTS = ("view", "click", "add_to_cart", "purchase", "rate")
EPOCH = 1767225600.0  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Event:
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
        if not self.user_id or not self.item_id:
            raise ValueError("user_id and item_id must be non-empty")
        if not math.isfinite(self.ts):
            raise ValueError(f"ts must be finite unix seconds, got {self.ts!r}")

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
    async def take_token(
        self, bucket: str, rate_per_s: float, burst: int, now: float | None = None
    ) -> float: ...
    async def forget(self, user_id: str) -> None: ...
    async def is_forgotten(self, user_id: str) -> bool: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def user_hash(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


def _scale(ts: float, half_life_s: float) -> float:
    return 2.0 ** ((ts - EPOCH) / half_life_s)


def _gen_base() -> int:
    return time.time_ns() // 1000


def _check(events: Sequence[Event], weights: Sequence[float]) -> None:
    if len(events) != len(weights):
        raise ValueError(f"{len(events)} events but {len(weights)} weights")


def _check_bucket(rate_per_s: float, burst: int) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")


class LocalState:
    """One process: dicts in memory, acknowledged feedback and forget records in an fsynced journal."""

    kind = "local"

    def __init__(
        self,
        journal_path: Path,
        *,
        max_history: int = 500,
        half_life_s: float = 86400.0,
        stream_maxlen: int = 100_000,
        max_cached_users: int = 10_000,
        max_buckets: int = 100_000,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.max_history, self.half_life_s = max_history, half_life_s
        self.max_cached_users, self.max_buckets = max_cached_users, max_buckets
        self._hist: dict[str, deque[Event]] = {}
        self._gen: dict[str, int] = {}
        self._cache: OrderedDict[str, dict[str, tuple[str, float]]] = OrderedDict()
        self._trend: dict[str, float] = {}
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._forgotten: set[str] = set()
        self._feedback: deque[Event] = deque(maxlen=stream_maxlen)
        self._lock = asyncio.Lock()
        self.journal_skipped = 0  # unreadable journal lines skipped on replay (e.g. torn by a crash)
        self._replay()
        self._fh = open(self.journal_path, "ab")  # noqa: SIM115  (closed in close())

    def _replay(self) -> None:
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.journal_path.exists():
            self.journal_path.touch()
            _fsync_dir(self.journal_path.parent)
            return
        data = self.journal_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # torn last line: never acknowledged (no fsync returned); cut it off
            self.journal_skipped += 1
            log.warning("journal %s: dropping a torn last line (%d B)", self.journal_path, len(data) - end)
            with open(self.journal_path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                rec = json.loads(line)
                if rec["op"] == "ev":
                    self._apply(Event(**rec["e"]), float(rec["w"]))
                elif rec["op"] == "forget":
                    self._forgotten.add(rec["h"])
                elif rec["op"] == "tr":
                    for item, s in rec["s"].items():
                        self._trend[item] = self._trend.get(item, 0.0) + s
            except (ValueError, KeyError, TypeError) as exc:
                self.journal_skipped += 1
                log.warning("journal %s line %d unreadable, skipped: %s", self.journal_path, n, exc)

    def _apply(self, ev: Event, w: float) -> None:
        u = ev.user_id
        self._hist.setdefault(u, deque(maxlen=self.max_history)).append(ev)
        self._trend[ev.item_id] = self._trend.get(ev.item_id, 0.0) + w * _scale(ev.ts, self.half_life_s)
        self._feedback.append(ev)
        self._gen[u] = self._gen.get(u, _gen_base()) + 1
        self._cache.pop(u, None)
        self._forgotten.discard(user_hash(u))

    def _write(self, payload: bytes) -> None:
        self._fh.write(payload)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None:
        _check(events, weights)
        if not events:
            return
        lines = [
            json.dumps({"op": "ev", "w": float(w), "e": asdict(e)})
            for e, w in zip(events, weights, strict=True)
        ]
        async with self._lock:
            await asyncio.to_thread(self._write, ("\n".join(lines) + "\n").encode())
            for e, w in zip(events, weights, strict=True):
                self._apply(e, float(w))

    async def history(self, user_id: str) -> list[Event]:
        return list(self._hist.get(user_id, ()))

    async def generation(self, user_id: str) -> int:
        if user_id not in self._gen and user_hash(user_id) in self._forgotten:
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
        self._cache.setdefault(user_id, {})[field] = (value, time.time() + ttl_s)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self.max_cached_users:
            self._cache.popitem(last=False)

    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]:
        d = _scale(time.time() if now is None else now, self.half_life_s)
        items = sorted(self._trend.items(), key=lambda kv: -kv[1])[:top]
        return {item: s / d for item, s in items}

    async def take_token(self, bucket: str, rate_per_s: float, burst: int, now: float | None = None) -> float:
        _check_bucket(rate_per_s, burst)
        now = time.time() if now is None else now
        tokens, ts = self._buckets.get(bucket, (float(burst), now))
        if now > ts:
            tokens, ts = min(float(burst), tokens + (now - ts) * rate_per_s), now
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / rate_per_s
        self._buckets[bucket] = (tokens, ts)
        self._buckets.move_to_end(bucket)
        while len(self._buckets) > self.max_buckets:  # evicting a bucket only refills it: lenient, bounded
            self._buckets.popitem(last=False)
        return wait

    def _rewrite_without(self, user_id: str, record: bytes) -> None:
        self._fh.close()
        kept: list[bytes] = []
        removed: dict[str, float] = {}
        for line in self.journal_path.read_bytes().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # unreadable lines may hold anything: drop them
            if rec.get("op") == "ev" and rec["e"]["user_id"] == user_id:
                s = float(rec["w"]) * _scale(float(rec["e"]["ts"]), self.half_life_s)
                removed[rec["e"]["item_id"]] = removed.get(rec["e"]["item_id"], 0.0) + s
            else:
                kept.append(line + b"\n")
        if removed:  # keep the anonymous trending sums so a replay matches the live state
            kept.append(json.dumps({"op": "tr", "s": removed}).encode() + b"\n")
        kept.append(record)
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal_path)
        _fsync_dir(self.journal_path.parent)
        self._fh = open(self.journal_path, "ab")  # noqa: SIM115

    async def forget(self, user_id: str) -> None:
        h = user_hash(user_id)
        async with self._lock:
            record = (json.dumps({"op": "forget", "h": h}) + "\n").encode()
            await asyncio.to_thread(self._rewrite_without, user_id, record)
            for d in (self._hist, self._gen, self._cache):
                d.pop(user_id, None)
            self._buckets.pop(f"user:{user_id}", None)
            self._feedback = deque((e for e in self._feedback if e.user_id != user_id), self._feedback.maxlen)
            self._forgotten.add(h)

    async def is_forgotten(self, user_id: str) -> bool:
        return user_hash(user_id) in self._forgotten

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._fh.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_XADD = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('RPUSH', KEYS[2], id)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[1]), -1)
return id
"""
_TOKEN = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(s[1]) or burst, tonumber(s[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate); ts = now end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1)
return string.format('%.17g', wait)
"""
_FORGET = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #ids, 500 do redis.call('XDEL', KEYS[2], unpack(ids, i, math.min(i + 499, #ids))) end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('SADD', KEYS[7], ARGV[1])
return #ids
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
    ) -> None:
        self.url, self.prefix = redact_url(url), prefix
        self.max_history, self.half_life_s, self.stream_maxlen = max_history, half_life_s, stream_maxlen
        self.socket_timeout_s = socket_timeout_s
        # One immediate retry on ConnectionError only: it reopens a pooled connection that went stale when
        # Redis restarted. Timeouts are not retried (a retried MULTI/EXEC whose reply was late would apply
        # twice; only a connection cut between EXEC and its reply still can), so a slow or unreachable
        # Redis fails within about 2 * socket_timeout_s.
        self._r = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=True,
        )
        self._xadd = self._r.register_script(_XADD)
        self._token = self._r.register_script(_TOKEN)
        self._forget = self._r.register_script(_FORGET)

    @classmethod
    async def connect(cls, url: str, **kw: Any) -> RedisState:
        state = cls(url, **kw)
        if not await state.ping():
            await state.close()
            raise StateUnavailable(f"redis at {state.url} did not answer PING in {state.socket_timeout_s}s")
        return state

    def _k(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis at {self.url}: {type(exc).__name__}: {exc}") from exc

    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None:
        _check(events, weights)
        if not events:
            return
        users = list(dict.fromkeys(e.user_id for e in events))
        with self._guard():
            async with self._r.pipeline(transaction=True) as p:
                for e, w in zip(events, weights, strict=True):
                    js = e.to_json()
                    p.rpush(self._k("hist", e.user_id), js)
                    p.zincrby(self._k("trending"), float(w) * _scale(e.ts, self.half_life_s), e.item_id)
                    keys = [self._k("feedback"), self._k("fids", e.user_id)]
                    await self._xadd(keys=keys, args=[self.stream_maxlen, js], client=p)
                base = _gen_base()
                for u in users:
                    p.ltrim(self._k("hist", u), -self.max_history, -1)
                    p.setnx(self._k("gen", u), base)
                    p.incr(self._k("gen", u))
                    p.delete(self._k("cache", u))
                    p.srem(self._k("forgotten"), user_hash(u))
                await p.execute()

    async def history(self, user_id: str) -> list[Event]:
        with self._guard():
            rows = await self._r.lrange(self._k("hist", user_id), 0, -1)
        return [Event.from_json(r) for r in rows]

    async def generation(self, user_id: str) -> int:
        with self._guard():
            async with self._r.pipeline(transaction=False) as p:
                p.get(self._k("gen", user_id))
                p.sismember(self._k("forgotten"), user_hash(user_id))
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
        key = self._k("cache", user_id)
        with self._guard():
            async with self._r.pipeline(transaction=True) as p:
                p.hset(key, field, json.dumps({"v": value, "exp": time.time() + ttl_s}))
                p.pexpire(key, math.ceil(ttl_s * 1000))
                await p.execute()

    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]:
        d = _scale(time.time() if now is None else now, self.half_life_s)
        with self._guard():
            rows = await self._r.zrevrange(
                self._k("trending"), 0, -1 if top is None else top - 1, withscores=True
            )
        return {str(item): float(s) / d for item, s in cast(list[tuple[str, float]], rows)}

    async def take_token(self, bucket: str, rate_per_s: float, burst: int, now: float | None = None) -> float:
        _check_bucket(rate_per_s, burst)
        args: list[str | int] = [repr(float(rate_per_s)), burst, "" if now is None else repr(float(now))]
        with self._guard():
            return float(await self._token(keys=[self._k("rl", bucket)], args=args))

    async def forget(self, user_id: str) -> None:
        keys = [self._k("fids", user_id), self._k("feedback")]
        keys += [self._k(k, user_id) for k in ("hist", "gen", "cache")]
        keys += [self._k("rl", f"user:{user_id}"), self._k("forgotten")]
        with self._guard():
            await self._forget(keys=keys, args=[user_hash(user_id)])

    async def is_forgotten(self, user_id: str) -> bool:
        with self._guard():
            return bool(await self._r.sismember(self._k("forgotten"), user_hash(user_id)))

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
