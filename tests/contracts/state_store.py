"""The state-store contract: the behaviour every StateStore backend must show, in one place.

`StoreContract` is inherited by each backend's tests (tests/unit/runners/state/test_local.py,
tests/integration/test_redis_store.py); a subclass provides the `backend` fixture (how to build a store,
and how to dump everything it holds as bytes for the forget checks).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pytest

from runners.state.protocol import (
    EPOCH,
    TS_MAX,
    Event,
    StateStore,
    keyed_user_hash,
    legacy_user_hash,
)

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

    def test_snapshot_is_generation_forgotten_and_history_in_one_read(self, backend: Backend) -> None:
        async def expect_consistent(s: StateStore, user: str) -> None:
            snap = await s.snapshot(user)
            want = (await s.generation(user), await s.is_forgotten(user), await s.history(user))
            assert (snap.generation, snap.forgotten, snap.events) == want

        async def body(s: StateStore) -> None:
            await expect_consistent(s, ALICE)  # never seen: 0, not forgotten, no history
            await s.append_events([ev(ALICE, "book-1", T0), ev(ALICE, "book-2", T0 + 1)], [1.0, 1.0])
            await expect_consistent(s, ALICE)
            assert [e.item_id for e in (await s.snapshot(ALICE)).events] == ["book-1", "book-2"]
            await s.forget(ALICE)
            snap = await s.snapshot(ALICE)
            assert (snap.generation, snap.forgotten, snap.events) == (-1, True, [])
            await s.append_events([ev(ALICE, "book-3", T0 + 2)], [1.0])
            await expect_consistent(s, ALICE)

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

    @pytest.mark.parametrize("half_life", [60.0, 3600.0, 86400.0])
    def test_decay_is_finite_over_the_accepted_range(self, backend: Backend, half_life: float) -> None:
        """Regression: decay exponentiated absolute time, so a ts after 2028-10 (or any ts with a half-life
        under ~28,000 s) overflowed: 500s, and a journal that crashed every start-up."""

        async def body(s: StateStore) -> None:
            for ts in (1.0, T0, 2e9, 3e9, TS_MAX):  # the whole range Event accepts, up to 2100
                await s.append_events(
                    [ev(ALICE, f"at-{ts:.0f}", ts), ev(BOB, f"at-{ts:.0f}", ts)], [5.0, 5.0]
                )
                got = await s.trending(now=ts)
                assert got[f"at-{ts:.0f}"] == pytest.approx(10.0, rel=1e-6)
                assert all(math.isfinite(v) and v >= 0 for v in got.values())
            assert await s.trending(now=TS_MAX + 300) == pytest.approx(
                {
                    **{k: 0.0 for k in await s.trending(now=TS_MAX)},
                    f"at-{TS_MAX:.0f}": 10.0 * 2 ** (-300 / half_life),
                },
                abs=1e-9,
            )
            assert list(await s.trending(now=TS_MAX, top=1)) == [f"at-{TS_MAX:.0f}"]

        use(backend, body, half_life_s=half_life)

    def test_events_are_validated_before_anything_is_written(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            before = await backend.dump(s)
            for weight in (0.0, -1.0, float("inf"), float("nan"), 1e9):
                with pytest.raises(ValueError):
                    await s.append_events([ev(ALICE, "a", T0), ev(BOB, "b", T0)], [1.0, weight])
            assert await backend.dump(s) == before and await s.history(ALICE) == []

        use(backend, body)

    def test_token_costs_are_all_or_nothing(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            assert await s.take_tokens({"user:a": 3, "user:b": 1}, 1.0, 4, now=T0) == 0.0
            assert await s.take_tokens({"user:a": 2, "user:b": 1}, 1.0, 4, now=T0) == pytest.approx(1.0)
            assert await s.take_tokens({"user:b": 3}, 1.0, 4, now=T0) == 0.0  # b was not charged above
            assert await s.take_tokens({"user:a": 1}, 1.0, 4, now=T0) == 0.0
            with pytest.raises(ValueError):
                await s.take_tokens({"user:a": 5}, 1.0, 4, now=T0)  # more than the bucket holds

        use(backend, body)

    def test_cached_fields_per_user_are_bounded(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            for i in range(10):
                await s.cache_put(ALICE, f"params-{i}", "x" * 100, ttl_s=60)
            assert [await s.cache_get(ALICE, f"params-{i}") for i in (0, 3, 4, 9)] == ["x" * 100] * 2 + [
                None
            ] * 2
            await s.cache_put(ALICE, "params-0", "updated", ttl_s=60)  # an existing field may be replaced
            assert await s.cache_get(ALICE, "params-0") == "updated"

        use(backend, body, cache_fields=4)

    def test_forgotten_ids_are_stored_as_keyed_hashes(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            await s.append_events([ev("12345", "a", T0)], [1.0])
            await s.forget("12345")
            await s.forget("67890")  # never seen
            dump = await backend.dump(s)
            assert await s.is_forgotten("12345") and await s.is_forgotten("67890")
            assert b"12345" not in dump and b"67890" not in dump
            assert legacy_user_hash("12345").encode() not in dump  # unsalted sha256 is reversible
            assert keyed_user_hash(b"k" * 32, "12345").encode() in dump

        use(backend, body, hash_key=b"k" * 32)

    def test_active_users_are_the_senders_of_the_newest_events(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            assert await s.active_users(10) == {}
            await s.append_events([ev(BOB, "book-1", T0)], [1.0])
            await s.append_events([ev(ALICE, f"book-{i}", T0 + 1 + i) for i in range(3)], [1.0] * 3)
            await s.append_events([ev("carol-5d2e", "book-9", T0 + 10)], [1.0])
            assert await s.active_users(10) == {ALICE: 3, BOB: 1, "carol-5d2e": 1}
            assert await s.active_users(2) == {ALICE: 1, "carol-5d2e": 1}  # the newest two events
            await s.forget(ALICE)
            assert await s.active_users(10) == {BOB: 1, "carol-5d2e": 1}
            with pytest.raises(ValueError):
                await s.active_users(0)

        use(backend, body)

    def test_shared_values(self, backend: Backend) -> None:
        async def body(s: StateStore) -> None:
            assert await s.get_shared("admin_reload") is None
            await s.set_shared("admin_reload", '{"tag": "folio:x"}')
            assert await s.get_shared("admin_reload") == '{"tag": "folio:x"}'

        use(backend, body)

    def test_ping(self, backend: Backend) -> None:
        async def body(s: StateStore) -> bool:
            return await s.ping()

        assert use(backend, body) is True
