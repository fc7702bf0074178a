"""runners/store.py: the StateStore contract (shared with tests/integration/test_redis_store.py) + LocalState.

`StoreContract` holds the behaviour every implementation must show; a subclass provides the `backend`
fixture (how to build a store, and how to dump everything it holds as bytes for the forget checks).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from runners.store import EPOCH, Event, LocalState, StateStore, open_state

T = TypeVar("T")
HL = 3600.0  # half-life used in the decay tests
T0 = EPOCH + 10 * 86400.0
ALICE, BOB = "alice-7f3e91", "bob-19ac42"


def ev(user: str, item: str, ts: float, event: str = "click", value: float | None = None) -> Event:
    return Event(user_id=user, item_id=item, event=event, value=value, ts=ts, variant="B")


class Backend(Protocol):
    async def make(self, **kw: Any) -> StateStore: ...
    async def dump(self, store: StateStore) -> bytes: ...


def use(backend: Backend, body: Callable[[StateStore], Awaitable[T]], **kw: Any) -> T:
    """Run `body(store)` in one event loop on a fresh store, closing it afterwards."""

    async def main() -> T:
        store = await backend.make(**kw)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


class StoreContract:
    """Behaviour shared by LocalState and RedisState. Subclasses define the `backend` fixture."""

    def test_history_is_chronological_and_bounded(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            events = [ev(ALICE, f"book-{i}", T0 + i, "rate", float(i)) for i in range(5)]
            await s.append_events(events[:2], [1.0, 1.0])
            await s.append_events(events[2:], [1.0] * 3)
            await s.append_events([ev(BOB, "book-9", T0)], [1.0])
            assert await s.history(ALICE) == events[2:]  # newest 3, oldest first, fields round-trip
            assert await s.history(BOB) == [ev(BOB, "book-9", T0)]
            assert await s.history("nobody") == []
            with pytest.raises(ValueError):
                await s.append_events(events, [1.0])

        use(backend, body, max_history=3)

    def test_generation_changes_on_every_write_and_never_repeats(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            assert await s.generation(ALICE) == 0
            seen = []
            for i in range(3):
                await s.append_events([ev(ALICE, "book-1", T0 + i)], [1.0])
                seen.append(await s.generation(ALICE))
            assert len(set(seen)) == 3 and seen == sorted(seen) and seen[0] > 0
            assert await s.generation(BOB) == 0
            await s.forget(ALICE)
            assert await s.generation(ALICE) == -1  # forgotten: differs from the never-seen 0
            await s.append_events([ev(ALICE, "book-1", T0)], [1.0])
            assert await s.generation(ALICE) > seen[-1]  # no reuse of a pre-forget generation

        use(backend, body)

    def test_cache_put_get_expiry_and_invalidation(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            assert await s.cache_get(ALICE, "top10") is None
            await s.cache_put(ALICE, "top10", '["b1","b2"]', ttl_s=60)
            await s.cache_put(ALICE, "short", "x", ttl_s=0.05)
            await s.cache_put(BOB, "top10", "bob's", ttl_s=60)
            assert await s.cache_get(ALICE, "top10") == '["b1","b2"]'
            assert await s.cache_get(ALICE, "short") == "x"
            await asyncio.sleep(0.12)
            assert await s.cache_get(ALICE, "short") is None
            await s.append_events([ev(ALICE, "book-1", T0)], [1.0])  # new feedback drops the user's cache
            assert await s.cache_get(ALICE, "top10") is None
            assert await s.cache_get(BOB, "top10") == "bob's"
            with pytest.raises(ValueError):
                await s.cache_put(ALICE, "f", "v", ttl_s=0)

        use(backend, body)

    def test_trending_decays_by_half_life(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            await s.append_events([ev(ALICE, "old", T0), ev(BOB, "new", T0 + HL)], [2.0, 1.0])
            await s.append_events([ev(BOB, "old", T0 + HL)], [0.5])
            got = await s.trending(now=T0 + HL)
            assert got == pytest.approx({"old": 2.0 / 2 + 0.5, "new": 1.0})
            assert await s.trending(now=T0 + 3 * HL) == pytest.approx({"old": 1.5 / 4, "new": 0.25})
            assert list(await s.trending(now=T0 + HL, top=1)) == ["old"]

        use(backend, body, half_life_s=HL)

    def test_token_bucket_burst_refusal_and_refill(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            t = T0
            assert [await s.take_token("user:x", 2.0, 3, now=t) for _ in range(3)] == [0.0] * 3
            assert await s.take_token("user:x", 2.0, 3, now=t) == pytest.approx(0.5)
            assert await s.take_token("user:x", 2.0, 3, now=t + 0.25) == pytest.approx(0.25)
            assert await s.take_token("user:x", 2.0, 3, now=t + 0.5) == 0.0
            assert await s.take_token("user:x", 2.0, 3, now=t + 0.5) > 0
            assert await s.take_token("user:y", 2.0, 3, now=t) == 0.0  # buckets are independent
            assert await s.take_token("user:x", 2.0, 3, now=t + 100) == 0.0  # refilled (capped at burst)
            assert [await s.take_token("user:x", 2.0, 3, now=t + 100) for _ in range(3)][-1] > 0
            assert await s.take_token("wall-clock", 1.0, 1) == 0.0  # now=None uses the store's clock
            assert await s.take_token("wall-clock", 1.0, 1) > 0
            with pytest.raises(ValueError):
                await s.take_token("user:x", 0.0, 3)

        use(backend, body)

    def test_forget_leaves_nothing_and_is_forgotten(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            await s.append_events([ev(ALICE, "book-1", T0), ev(BOB, "book-1", T0)], [1.0, 1.0])
            await s.append_events([ev(ALICE, "book-2", T0 + 1, "purchase")], [3.0])
            await s.cache_put(ALICE, "top10", "alice's", ttl_s=60)
            assert await s.take_token(f"user:{ALICE}", 1.0, 1, now=T0) == 0.0
            assert await s.take_token(f"user:{ALICE}", 1.0, 1, now=T0) > 0
            trend = await s.trending(now=T0)
            assert ALICE.encode() in await backend.dump(s)  # the dump really sees the user's data
            assert not await s.is_forgotten(ALICE)

            await s.forget(ALICE)
            assert ALICE.encode() not in await backend.dump(s)
            assert await s.history(ALICE) == []
            assert await s.cache_get(ALICE, "top10") is None
            assert await s.is_forgotten(ALICE) and not await s.is_forgotten(BOB)
            assert await s.take_token(f"user:{ALICE}", 1.0, 1, now=T0) == 0.0  # bucket gone
            assert await s.history(BOB) == [ev(BOB, "book-1", T0)]
            assert await s.trending(now=T0) == pytest.approx(trend)  # anonymous aggregate kept
            await s.forget("never-seen-user")  # no error for an unknown user

            await s.append_events([ev(ALICE, "book-3", T0 + 2)], [1.0])  # comes back: not forgotten
            assert not await s.is_forgotten(ALICE)
            assert await s.history(ALICE) == [ev(ALICE, "book-3", T0 + 2)]

        use(backend, body)

    def test_ping(self, backend: Backend) -> None:
        async def body(s: StateStore) -> bool:
            return await s.ping()

        assert use(backend, body) is True


class LocalBackend:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def make(self, **kw: Any) -> StateStore:
        return LocalState(self.path, **kw)

    async def dump(self, store: StateStore) -> bytes:
        return self.path.read_bytes() + repr(vars(store)).encode()


@pytest.fixture()
def journal(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.jsonl"


class TestLocalContract(StoreContract):
    @pytest.fixture()
    def backend(self, journal: Path) -> Backend:
        return LocalBackend(journal)


# ---- LocalState only ---------------------------------------------------------------------------


def test_event_json_round_trip_and_validation() -> None:
    e = ev(ALICE, "book-1", T0, "rate", 4.5)
    assert Event.from_json(e.to_json()) == e
    assert Event.from_json(e.to_json().encode()) == e
    assert Event.from_json(json.dumps({**json.loads(e.to_json()), "variant": None})).variant is None
    with pytest.raises(ValueError):
        ev(ALICE, "book-1", T0, "like")
    with pytest.raises(ValueError):
        ev("", "book-1", T0)


def test_open_state_picks_the_implementation(journal: Path) -> None:
    local = open_state(None, journal)
    assert local.kind == "local" and isinstance(local, LocalState)
    asyncio.run(local.close())
    remote = open_state("redis://:hunter2@127.0.0.1:1/0", journal)  # lazy: no connection yet
    assert remote.kind == "redis" and "hunter2" not in getattr(remote, "url", "")
    asyncio.run(remote.close())


def test_journal_replay_restores_acknowledged_state(journal: Path) -> None:
    async def main() -> None:
        s = LocalState(journal, half_life_s=HL, max_history=2)
        await s.append_events([ev(ALICE, "a", T0), ev(ALICE, "b", T0 + 1), ev(BOB, "a", T0)], [1.0, 2.0, 1.0])
        await s.append_events([ev(ALICE, "c", T0 + 2)], [4.0])
        await s.append_events([ev("carol-55", "a", T0)], [1.0])
        await s.forget("carol-55")
        before = (await s.history(ALICE), await s.history(BOB), await s.trending(now=T0 + HL))
        await s.close()

        r = LocalState(journal, half_life_s=HL, max_history=2)  # "restart"
        after = (await r.history(ALICE), await r.history(BOB), await r.trending(now=T0 + HL))
        assert after == before and before[0] == [ev(ALICE, "b", T0 + 1), ev(ALICE, "c", T0 + 2)]
        assert after[2] == pytest.approx({"a": 1.5, "b": 1.0, "c": 2.0}, rel=1e-2)
        assert await r.generation(ALICE) > 0 and await r.generation("carol-55") == -1
        assert await r.is_forgotten("carol-55") and not await r.is_forgotten(ALICE)
        assert b"carol-55" not in journal.read_bytes()
        assert r.journal_skipped == 0
        await r.close()

    asyncio.run(main())


def test_torn_last_line_is_skipped_and_the_journal_stays_usable(journal: Path) -> None:
    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(ALICE, "a", T0)], [1.0])
        await s.close()
        with open(journal, "ab") as f:  # a crash in the middle of the next write
            f.write(b'{"op": "ev", "w": 1.0, "e": {"user_id": "alice-7f3e91", "item_')

        r = LocalState(journal)
        assert r.journal_skipped == 1
        assert await r.history(ALICE) == [ev(ALICE, "a", T0)]
        await r.append_events([ev(ALICE, "b", T0 + 1)], [1.0])
        await r.close()

        again = LocalState(journal)
        assert again.journal_skipped == 0
        assert [e.item_id for e in await again.history(ALICE)] == ["a", "b"]
        await again.close()

    asyncio.run(main())


def test_append_is_fsynced_before_returning(journal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    async def main() -> None:
        s = LocalState(journal)
        monkeypatch.setattr(os, "fsync", fsync)
        await s.append_events([ev(ALICE, "a", T0)], [1.0])
        assert synced, "append_events returned without fsync"
        assert b'"alice-7f3e91"' in journal.read_bytes()
        await s.close()

    asyncio.run(main())


def test_cache_is_bounded_lru(journal: Path) -> None:
    async def main() -> None:
        s = LocalState(journal, max_cached_users=2)
        for u in ("u1", "u2"):
            await s.cache_put(u, "f", u, ttl_s=60)
        assert await s.cache_get("u1", "f") == "u1"  # u1 is now the most recently used
        await s.cache_put("u3", "f", "u3", ttl_s=60)
        assert [await s.cache_get(u, "f") for u in ("u1", "u2", "u3")] == ["u1", None, "u3"]
        await s.close()

    asyncio.run(main())
