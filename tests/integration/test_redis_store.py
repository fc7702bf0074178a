"""RedisState against a real redis-server: the shared StoreContract plus what only Redis has to show
(several clients sharing one token bucket, nothing left in any key after forget, outage -> StateUnavailable).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from runners.platform.redis_server import RedisServer, dump_all, free_port
from runners.state.protocol import StateStore, StateUnavailable
from runners.state.redis_state import RedisState
from tests.contracts.state_store import ALICE, BOB, T0, Backend, StoreContract, ev

pytestmark = pytest.mark.integration


class RedisBackend:
    def __init__(self, server: RedisServer) -> None:
        self.server = server

    async def make(self, **kw: Any) -> StateStore:
        return await RedisState.connect(self.server.url, **kw)

    async def dump(self, store: StateStore) -> bytes:
        with self.server.client() as c:
            return dump_all(c)


class TestRedisContract(StoreContract):
    @pytest.fixture()
    def backend(self, live_redis: RedisServer) -> Backend:
        return RedisBackend(live_redis)


def test_two_clients_share_one_bucket_atomically(live_redis: RedisServer) -> None:
    async def main() -> list[float]:
        a, b = RedisState(live_redis.url), RedisState(live_redis.url)
        try:
            calls = [c.take_token("user:shared", 0.001, 10) for c in (a, b) for _ in range(40)]
            return list(await asyncio.gather(*calls))
        finally:
            await a.close()
            await b.close()

    waits = asyncio.run(main())
    assert waits.count(0.0) == 10 and all(w > 0 for w in waits if w != 0.0)
    with live_redis.client() as c:
        ttl = c.pttl("folio:rl:user:shared")
        assert 0 < ttl <= 10_000_001  # expires once the bucket would be full again (10 tokens / 0.001 per s)


def test_bucket_key_expires_when_full_again(live_redis: RedisServer) -> None:
    async def main() -> None:
        s = RedisState(live_redis.url)
        assert await s.take_token("ip:1", 20.0, 2) == 0.0
        await s.close()

    asyncio.run(main())
    with live_redis.client() as c:
        assert 0 < c.pttl("folio:rl:ip:1") <= 51
        time.sleep(0.12)
        assert not c.exists("folio:rl:ip:1")


def test_append_uses_keys_under_prefix_and_the_stream(live_redis: RedisServer) -> None:
    async def main() -> None:
        s = RedisState(live_redis.url, prefix="t1:", stream_maxlen=1000)
        await s.append_events([ev(ALICE, "b1", T0), ev(BOB, "b2", T0), ev(ALICE, "b3", T0)], [1.0] * 3)
        await s.close()

    asyncio.run(main())
    with live_redis.client() as c:
        keys = {k.decode() for k in c.scan_iter()}
        per_user = {f"t1:{k}:{u}" for k in ("hist", "gen", "fids") for u in (ALICE, BOB)}
        assert keys == per_user | {"t1:trendlog:86400", "t1:feedback", "t1:hashkey"}
        entries = c.xrange("t1:feedback")
        ids = [entry_id for entry_id, _ in entries]
        assert c.lrange(f"t1:fids:{ALICE}", 0, -1) == [ids[0], ids[2]]
        assert c.lrange(f"t1:fids:{BOB}", 0, -1) == [ids[1]]
        assert ALICE.encode() in entries[0][1][b"e"]


def test_outage_raises_state_unavailable_fast_and_recovers(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:

        async def main() -> None:
            s = RedisState(server.url, breaker_failures=3, breaker_reset_s=0.3)
            await s.append_events([ev(ALICE, "b1", T0)], [1.0])
            server.stop()
            for call in (
                lambda: s.history(ALICE),
                lambda: s.append_events([ev(ALICE, "b2", T0)], [1.0]),
                lambda: s.take_token("user:x", 1.0, 1),
                lambda: s.forget(ALICE),
            ):
                started = time.monotonic()
                with pytest.raises(StateUnavailable, match=f"127.0.0.1:{server.port}"):
                    await call()
                assert time.monotonic() - started < 2.0
            assert s.breaker_state == "open"  # the 3 refused connections opened it; forget failed at once
            assert await s.ping() is False

            server.start()  # same port, empty (no persistence)
            assert await s.ping() is False  # the breaker is still open: no round trip yet
            await asyncio.sleep(0.3)
            assert await s.ping() is True  # the half-open probe
            assert s.breaker_state == "closed"
            await s.append_events([ev(ALICE, "b3", T0)], [1.0])
            assert [e.item_id for e in await s.history(ALICE)] == ["b3"]
            assert await s.take_token("user:x", 1.0, 1) == 0.0

            server.stop()  # restarted while idle: pooled connections are stale, the next call must work
            server.start()
            assert await s.history(ALICE) == []
            await s.close()

        asyncio.run(main())


def test_connect_fails_fast_without_leaking_the_password() -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(StateUnavailable) as info:
        asyncio.run(RedisState.connect(url, socket_timeout_s=0.3))
    assert time.monotonic() - started < 2.0
    assert "127.0.0.1" in str(info.value) and "s3cret-pw" not in str(info.value)

    async def lazy() -> None:
        s = RedisState(url)  # construction never connects; the first call raises
        with pytest.raises(StateUnavailable) as err:
            await s.history(ALICE)
        assert "s3cret-pw" not in str(err.value) and "***" in str(err.value)
        await s.close()

    asyncio.run(lazy())


def test_forget_purges_in_chunks_and_finishes_an_interrupted_purge(live_redis: RedisServer) -> None:
    """Regression: forget XDELed every stream entry of the user in one Lua call (150,000 events blocked
    Redis for 170 ms). Now one script per 500 entries; a purge cut short is finished by the next forget."""

    async def main() -> None:
        s = RedisState(live_redis.url)
        for n in range(3):
            await s.append_events(
                [ev(ALICE, f"b{i}", T0 + i) for i in range(n * 500, n * 500 + 500)], [1.0] * 500
            )
        await s.append_events([ev(BOB, "b1", T0)], [1.0])
        with live_redis.client() as c:  # a forget of BOB that died after its first script
            c.rename("folio:fids:" + BOB, "folio:purge:crashed")
            c.sadd("folio:purge", "folio:purge:crashed")
        await s.forget(ALICE)
        await s.close()

    asyncio.run(main())
    with live_redis.client() as c:
        entries = c.xrange("folio:feedback")  # only the two forgets' tombstones (keyed hashes)
        assert len(entries) == 1 and all(set(fields) == {b"f"} for _, fields in entries)
        assert not c.exists("folio:purge") and not c.exists("folio:purge:crashed")
        assert ALICE.encode() not in dump_all(c)
