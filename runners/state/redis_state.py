"""The Redis backend of the state store (runners/state/protocol.py), shared by every worker.

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

RedisState raises `StateUnavailable` for every Redis error; it connects lazily (use `RedisState.connect` to
fail fast at start-up). Failures, by kind:
    busy         all `max_connections` pooled connections stayed in use for `socket_timeout_s` (a caller
                 waits that long for one): `StateBusy` (a StateUnavailable), counted in `busy_errors` and
                 folio_state_busy{op}; never retried, never counted by the breaker. Size the pool for the
                 worker's concurrency.
    unreachable  connection refused / reset / timed out (`socket_timeout_s`): `StateUnavailable`; one
                 immediate retry on a connection error only (a pooled connection gone stale when Redis
                 restarted). `breaker_failures` of these in a row open the circuit breaker
                 (runners/stages/breaker.py): every call then fails at once for `breaker_reset_s`, then
                 one call (or `ping`) is the half-open probe; a success closes it. A hung Redis thus costs
                 one timeout per breaker period, not one per call. `breaker_state` says where it is.
    error reply  Redis answered with an error: `StateUnavailable`; counts as reachable for the breaker.
`durability()` reports Redis's persistence (AOF on, appendfsync) and the window of acknowledged writes a
crash can lose (deploy/README.md, "Durability").

The Lua scripts it runs atomically are files in runners/state/lua/.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runners.platform.metrics import STATE_BREAKER, STATE_BUSY
from runners.stages.breaker import CircuitBreaker
from runners.state.protocol import (
    Event,
    StateBusy,
    StateUnavailable,
    UserSnapshot,
    check_bucket,
    check_events,
    decayed,
    generation_base,
    keyed_user_hash,
    log2_weight,
)

log = logging.getLogger(__name__)
LUA_DIR = Path(__file__).resolve().parent / "lua"


def lua_script(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


# Errors that mean Redis did not answer (what the breaker counts); an error reply means it did.
UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


class PoolExhausted(RedisError):
    """No pooled connection came free before the pool's deadline. Not a ConnectionError, so redis-py's
    retry never repeats it and nothing here mistakes it for an unreachable Redis."""


class WaitingPool(aioredis.BlockingConnectionPool):
    """redis-py's BlockingConnectionPool (a caller waits up to `timeout` for a free connection), whose
    wait past the deadline raises PoolExhausted instead of ConnectionError("No connection available.")."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:  # the wait's timeout is its only error chained from a timeout
            if isinstance(exc.__cause__, TimeoutError) and "No connection available" in str(exc):
                raise PoolExhausted(
                    f"no pooled connection came free within {self.timeout}s "
                    f"(max_connections={self.max_connections})"
                ) from exc
            raise


@contextlib.contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Every Redis (or socket) error inside, as StateUnavailable naming the (redacted) URL; a pool wait
    past its deadline as StateBusy."""
    try:
        yield
    except PoolExhausted as exc:
        raise StateBusy(f"redis at {url}: busy: {exc}") from exc
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"redis at {url}: {type(exc).__name__}: {exc}") from exc


def redact_url(url: str) -> str:
    p = urlsplit(url)
    if p.password is None:
        return url
    netloc = f"{p.username or ''}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
    return urlunsplit(p._replace(netloc=netloc))


def loss_window(aof: bool, appendfsync: str | None, rdb_save: str | None) -> str:
    """What a crash can lose of acknowledged writes, given Redis's persistence settings."""
    if not aof:
        if rdb_save == "":
            return "everything: not persisted (no AOF, no RDB snapshots)"
        return "everything since the last RDB snapshot (AOF off)"
    return {
        "always": "none: each write is fsynced before Redis acknowledges it",
        "everysec": "about 1 s of writes (up to 2 s while fsync is slow) on a host crash or power loss; "
        "a crash of redis-server alone loses only writes held back by a slow fsync",
        "no": "writes the OS has not flushed yet (about 30 s on Linux) on a host crash or power loss",
    }.get(str(appendfsync), f"unknown (appendfsync {appendfsync!r} not readable)")


class RedisState:
    """Shared state in Redis (`redis.asyncio`), lazily connected; every Redis error -> StateUnavailable
    (StateBusy when the pool stayed full), behind a circuit breaker (see the module docstring)."""

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
        breaker_failures: int = 3,
        breaker_reset_s: float = 2.0,
        hash_key: bytes | None = None,
    ) -> None:
        if max_connections < 1 or not socket_timeout_s > 0:
            raise ValueError(
                f"need max_connections >= 1 and socket_timeout_s > 0, got {max_connections}, "
                f"{socket_timeout_s}"
            )
        self._breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self.busy_errors = 0  # calls that found the pool full past the deadline (StateBusy)
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
        # free connection, then raises PoolExhausted (not retried): a busy Redis is not a down Redis.
        pool = WaitingPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=True,
        )
        self._r = aioredis.Redis.from_pool(pool)  # closes the pool with the client
        self._append = self._r.register_script(lua_script("append"))
        self._tokens = self._r.register_script(lua_script("tokens"))
        self._cache_put = self._r.register_script(lua_script("cache_put"))
        self._forget = self._r.register_script(lua_script("forget"))
        self._purge_chunk = self._r.register_script(lua_script("purge_chunk"))

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

    @property
    def breaker_state(self) -> str:
        """The state-store breaker: "closed", "open" (calls fail at once) or "half_open" (one probe)."""
        return self._breaker.state

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        """Run Redis calls through the breaker; their errors as StateUnavailable / StateBusy."""
        if not self._breaker.allow():
            STATE_BREAKER.labels(event="refused").inc()
            raise StateUnavailable(
                f"redis at {self.url}: unreachable, circuit open after {self._breaker.failures} "
                f"consecutive failures (a probe every {self._breaker.reset_s:g}s)"
            )
        try:
            with redis_errors(self.url):
                yield
        except StateBusy:  # reachable but saturated: the breaker learns nothing from it
            self.busy_errors += 1
            STATE_BUSY.labels(op=op).inc()
            raise
        except StateUnavailable as exc:
            if isinstance(exc.__cause__, UNREACHABLE):
                self._failed(op, exc)
            else:
                self._succeeded()  # an error reply: Redis answered
            raise
        else:
            self._succeeded()

    def _succeeded(self) -> None:
        if self._breaker.state != "closed":
            STATE_BREAKER.labels(event="closed").inc()
            log.info("state store %s answers again: breaker closed", self.url)
        self._breaker.record_success()

    def _failed(self, op: str, exc: StateUnavailable) -> None:
        opens, probing = self._breaker.opens, self._breaker.state == "half_open"
        self._breaker.record_failure()
        if self._breaker.opens != opens:
            STATE_BREAKER.labels(event="opened").inc()
            log.log(  # a failed probe re-opens it once a period: a warning only for the first opening
                logging.DEBUG if probing else logging.WARNING,
                "state store breaker opened (%s, %s): calls fail at once for %gs, then one probe",
                op,
                exc,
                self._breaker.reset_s,
            )

    async def user_key(self, user_id: str) -> str:
        if self._key is None:  # shared by every worker: made once by whoever comes first
            with self._guard("user_key"):
                await self._r.set(self._k("hashkey"), secrets.token_hex(32), nx=True)
                self._key = str(await self._r.get(self._k("hashkey"))).encode()
        return keyed_user_hash(self._key, user_id)

    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None:
        check_events(events, weights)
        if not events:
            return
        users = list(dict.fromkeys(e.user_id for e in events))
        keys = {u: await self.user_key(u) for u in users}
        rows = [
            (e.to_json(), repr(log2_weight(float(w), e.ts, self.half_life_s)))
            for e, w in zip(events, weights, strict=True)
        ]
        with self._guard("append_events"):
            async with self._r.pipeline(transaction=True) as p:
                for e, (js, x) in zip(events, rows, strict=True):
                    p.rpush(self._k("hist", e.user_id), js)
                    script_keys = [self._k("feedback"), self._k("fids", e.user_id), self._trend_key]
                    await self._append(
                        keys=script_keys, args=[self.stream_maxlen, js, e.item_id, x], client=p
                    )
                base = generation_base()
                for u in users:
                    p.ltrim(self._k("hist", u), -self.max_history, -1)
                    p.setnx(self._k("gen", u), base)
                    p.incr(self._k("gen", u))
                    p.delete(self._k("cache", u))
                    p.srem(self._k("forgotten", "k"), keys[u])
                await p.execute()

    async def snapshot(self, user_id: str) -> UserSnapshot:
        return await self._read_user(user_id, with_history=True)

    async def history(self, user_id: str) -> list[Event]:
        with self._guard("history"):
            rows = await self._r.lrange(self._k("hist", user_id), 0, -1)
        return [Event.from_json(r) for r in rows]

    async def active_users(self, events: int) -> dict[str, int]:
        """The senders of the newest ``events`` entries of the feedback stream, with how many of them each
        sent (cache warming: runners/serving/warmup.py). A forgotten user's entries are deleted with them."""
        if events < 1:
            raise ValueError(f"events must be >= 1, got {events}")
        with self._guard("active_users"):
            rows = cast(
                list[tuple[str, dict[str, str]]], await self._r.xrevrange(self._k("feedback"), count=events)
            )
        counts: dict[str, int] = {}
        for _, fields in rows:
            try:
                user = json.loads(fields["e"])["user_id"]
            except (KeyError, ValueError, TypeError):  # a forget tombstone ("f"), or an unreadable entry
                continue
            if isinstance(user, str):
                counts[user] = counts.get(user, 0) + 1
        return counts

    async def generation(self, user_id: str) -> int:
        return (await self._read_user(user_id, with_history=False)).generation

    async def _read_user(self, user_id: str, *, with_history: bool) -> UserSnapshot:
        """One pipelined round trip: the generation, the forgotten flag and, if asked, the history."""
        key = await self.user_key(user_id)
        with self._guard("snapshot"):
            async with self._r.pipeline(transaction=False) as p:
                p.get(self._k("gen", user_id))
                p.sismember(self._k("forgotten", "k"), key)
                if with_history:
                    p.lrange(self._k("hist", user_id), 0, -1)
                g, forgotten, *rows = await p.execute()
        generation = int(g) if g is not None else (-1 if forgotten else 0)
        return UserSnapshot(generation, bool(forgotten), rows[0] if rows else [], Event.from_json)

    async def cache_get(self, user_id: str, field: str) -> str | None:
        with self._guard("cache_get"):
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
        with self._guard("cache_put"):  # bounded per user: fields of older generations expire with the key
            await self._cache_put(keys=[self._k("cache", user_id)], args=args)

    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        with self._guard("trending"):
            rows = await self._r.zrevrange(
                self._trend_key, 0, -1 if top is None else top - 1, withscores=True
            )
        scored = cast(list[tuple[str, float]], rows)
        return {str(item): decayed(float(x), now, self.half_life_s) for item, x in scored}

    async def take_tokens(
        self, costs: Mapping[str, int], rate_per_s: float, burst: int, now: float | None = None
    ) -> float:
        check_bucket(costs, rate_per_s, burst)
        args: list[str | int] = [repr(float(rate_per_s)), burst, "" if now is None else repr(float(now))]
        with self._guard("take_tokens"):
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
        with self._guard("forget"):
            await self._forget(keys=keys, args=[key, self.stream_maxlen])
            # this forget's entries, then any a crashed forget left behind
            for pending in [purge_list, *await self._r.smembers(self._k("purge"))]:
                while await self._purge_chunk(keys=[pending, self._k("feedback"), self._k("purge")]):
                    pass

    async def is_forgotten(self, user_id: str) -> bool:
        key = await self.user_key(user_id)
        with self._guard("is_forgotten"):
            return bool(await self._r.sismember(self._k("forgotten", "k"), key))

    async def get_shared(self, name: str) -> str | None:
        with self._guard("get_shared"):
            value = await self._r.get(self._k("shared", name))
        return None if value is None else str(value)

    async def set_shared(self, name: str, value: str) -> None:
        with self._guard("set_shared"):
            await self._r.set(self._k("shared", name), value)

    async def ping(self) -> bool:
        """Whether Redis answers: False at once (no round trip) while the breaker is open; otherwise a
        PING (the probe when half-open), bounded by the pool wait and the socket timeouts. A pool that
        stayed full answers with the breaker after that wait: True unless the calls holding its
        connections failed meanwhile (a busy Redis is up; a hung one fills the pool too)."""
        try:
            with self._guard("ping"):
                return bool(await self._r.ping())
        except StateBusy:
            return self._breaker.state == "closed"
        except StateUnavailable:
            return False

    async def durability(self) -> dict[str, Any]:
        """Redis's persistence as an operator needs it: `aof_enabled` (INFO persistence), `appendfsync`
        and `rdb_save` (CONFIG GET; None where CONFIG is not allowed) and `window`, the acknowledged
        writes a crash can lose. Raises StateUnavailable."""
        with self._guard("durability"):
            info = await self._r.info("persistence")
            config: dict[str, Any] = {}
            with contextlib.suppress(ResponseError):  # CONFIG may be renamed or denied (managed Redis)
                for name in ("appendfsync", "save"):
                    config[name] = (await self._r.config_get(name)).get(name)
        aof, fsync, save = (
            bool(int(info.get("aof_enabled", 0))),
            config.get("appendfsync"),
            config.get("save"),
        )
        return {
            "aof_enabled": aof,
            "appendfsync": fsync,
            "rdb_save": save,
            "window": loss_window(aof, fsync, save),
        }

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._r.aclose()
