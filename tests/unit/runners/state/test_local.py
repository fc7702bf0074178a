"""runners/state/local.py: the state-store contract (tests/contracts/state_store.py) on LocalState, and what
only the local backend does (journal replay, compaction, fsync).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from runners.state.backends import open_state
from runners.state.local import LocalState
from runners.state.protocol import (
    TS_MAX,
    Event,
    StateStore,
    StateUnavailable,
    legacy_user_hash,
)
from tests.contracts.state_store import ALICE, BOB, HL, T0, Backend, StoreContract, ev


class LocalBackend:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def make(self, **kw: Any) -> StateStore:
        return LocalState(self.path, **kw)

    async def dump(self, store: StateStore) -> bytes:
        assert isinstance(store, LocalState)
        await store.settle()  # forget's journal compaction runs in the background
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


def test_replay_skips_and_counts_bad_lines_instead_of_crashing(journal: Path) -> None:
    """Regression: one accepted `"ts": 2e9` event made replay raise OverflowError on every start-up."""

    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(ALICE, "a", T0)], [1.0])
        await s.close()
        good = {"op": "ev", "w": 1.0, "e": json.loads(ev(BOB, "b", 2e9).to_json())}
        planted = [
            json.dumps(good),  # a far (but accepted) timestamp replays fine now
            json.dumps({**good, "e": {**good["e"], "ts": 1e309}}),  # written as Infinity
            json.dumps({**good, "e": {**good["e"], "ts": float("nan")}}),
            json.dumps({**good, "w": -3.0}),
            json.dumps({**good, "w": 1e308}),
            json.dumps({**good, "e": {**good["e"], "user_id": "x" * 10_000}}),
            json.dumps({**good, "e": {**good["e"], "value": 1e300}}),
            json.dumps({"op": "tr", "s": {"b": float("inf")}}),
            json.dumps({"op": "trl", "s": {"b": "NaN"}}),
            json.dumps({"op": "drop-table"}),
            json.dumps([1, 2, 3]),
            "not json at all",
        ]
        with open(journal, "a") as f:
            f.write("\n".join(planted) + "\n")

        r = LocalState(journal)
        assert r.journal_skipped == len(planted) - 1
        assert [e.item_id for e in await r.history(ALICE)] == ["a"]
        assert [e.ts for e in await r.history(BOB)] == [2e9]
        assert all(math.isfinite(v) for v in (await r.trending(now=2e9)).values())
        await r.append_events([ev(ALICE, "c", T0 + 1)], [1.0])
        await r.forget(BOB)
        await r.close()
        # the compaction removed every line of the forgotten user, bad ones too, and kept the rest as is
        data = journal.read_bytes()
        assert BOB.encode() not in data and b"x" * 10_000 in data and b"drop-table" in data
        again = LocalState(journal)
        assert again.journal_skipped == 4 and [e.item_id for e in await again.history(ALICE)] == ["a", "c"]
        await again.close()

    asyncio.run(main())


def test_forgetting_an_unknown_user_appends_one_line_and_rewrites_nothing(journal: Path) -> None:
    """Regression: every /forget rewrote the whole journal (635 ms at 22 MB), even for an unknown user."""

    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(f"user-{i}", "a", T0) for i in range(2000)], [1.0] * 2000)
        inode, size = journal.stat().st_ino, journal.stat().st_size
        await s.forget("never-seen")
        await s.settle()
        assert journal.stat().st_ino == inode  # not replaced
        assert journal.stat().st_size - size < 120  # one tombstone line
        assert await s.is_forgotten("never-seen")
        await s.close()

    asyncio.run(main())


def test_forget_compacts_in_the_background_while_writes_go_on(journal: Path) -> None:
    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(ALICE, f"a{i}", T0 + i) for i in range(500)], [1.0] * 500)
        await s.append_events([ev(BOB, "b", T0)], [1.0])
        before = await s.trending(now=T0)
        await s.forget(ALICE)
        writes = [s.append_events([ev(BOB, f"b{i}", T0 + i)], [1.0]) for i in range(20)]
        await asyncio.gather(*writes, s.forget(ALICE), s.append_events([ev(ALICE, "again", T0)], [1.0]))
        await s.settle()
        data = journal.read_bytes()
        assert data.count(ALICE.encode()) == 1 and b'"again"' in data  # only what came after the forget
        assert len(await s.history(BOB)) == 21
        await s.close()
        r = LocalState(journal)
        assert [e.item_id for e in await r.history(ALICE)] == ["again"]
        assert len(await r.history(BOB)) == 21
        assert (await r.trending(now=T0))["a7"] == pytest.approx(before["a7"])  # anonymous sums kept
        await r.close()

    asyncio.run(main())


def test_a_forget_interrupted_before_compaction_is_finished_at_start_up(journal: Path) -> None:
    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(ALICE, "a", T0), ev(BOB, "b", T0)], [1.0, 1.0])
        key = s.user_key(ALICE)
        await s.close()
        with open(journal, "a") as f:  # the tombstone was written, then the process died
            f.write(json.dumps({"op": "forget", "k": key}) + "\n")
        assert ALICE.encode() in journal.read_bytes()

        r = LocalState(journal)
        assert ALICE.encode() not in journal.read_bytes()
        assert await r.is_forgotten(ALICE) and await r.history(ALICE) == []
        assert [e.item_id for e in await r.history(BOB)] == ["b"]
        await r.close()

    asyncio.run(main())


def test_a_failed_compaction_leaves_the_journal_writable(journal: Path) -> None:
    """Regression: a /forget that failed midway left the journal file closed: every later feedback failed."""

    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(ALICE, "a", T0)], [1.0])
        journal.with_name(journal.name + ".tmp").mkdir()  # the rewrite cannot create its temp file
        await s.forget(ALICE)
        await s.settle()
        await s.append_events([ev(BOB, "b", T0)], [1.0])
        assert b'"b"' in journal.read_bytes()
        journal.with_name(journal.name + ".tmp").rmdir()
        await s.close()
        r = LocalState(journal)  # start-up finishes the purge
        assert ALICE.encode() not in journal.read_bytes() and await r.is_forgotten(ALICE)
        await r.close()

    asyncio.run(main())


def test_hash_key_is_made_once_private_and_reused(journal: Path) -> None:
    a = LocalState(journal)
    key_file = journal.parent / "user-hash.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    b = LocalState(journal.with_name("other.jsonl"))
    assert a.user_key(ALICE) == b.user_key(ALICE) != legacy_user_hash(ALICE)
    asyncio.run(a.close())
    asyncio.run(b.close())


def test_legacy_forget_records_are_still_honoured(journal: Path) -> None:
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"op": "forget", "h": legacy_user_hash(ALICE)}) + "\n")
    s = LocalState(journal)
    assert asyncio.run(s.is_forgotten(ALICE)) and s.journal_skipped == 0
    asyncio.run(s.close())


@pytest.mark.parametrize(
    "fields",
    [
        {"ts": 0.0},
        {"ts": TS_MAX + 1},
        {"ts": float("nan")},
        {"ts": float("inf")},
        {"value": float("nan")},
        {"value": 1e7},
        {"user_id": "u" * 129},
        {"item_id": ""},
        {"variant": "v" * 65},
    ],
)
def test_event_bounds(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Event(**{"user_id": ALICE, "item_id": "a", "event": "click", "value": None, "ts": T0, **fields})


def test_a_failed_write_is_refused_and_cut_off_again(journal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error mid-append answers StateUnavailable (503), and the refused payload never comes back."""

    async def main() -> None:
        s = LocalState(journal)
        await s.append_events([ev(ALICE, "a", T0)], [1.0])
        real_fsync = os.fsync

        def failing_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(StateUnavailable, match="No space left"):
            await s.append_events([ev(ALICE, "refused", T0 + 1)], [1.0])
        monkeypatch.setattr(os, "fsync", real_fsync)
        await s.append_events([ev(ALICE, "b", T0 + 2)], [1.0])
        await s.close()
        r = LocalState(journal)
        assert [e.item_id for e in await r.history(ALICE)] == ["a", "b"] and r.journal_skipped == 0
        await r.close()

    asyncio.run(main())


def test_trending_sums_of_another_half_life_are_dropped_not_overflowed(journal: Path) -> None:
    async def main() -> None:
        s = LocalState(journal, half_life_s=60.0)
        await s.append_events([ev(ALICE, "a", 3e9), ev(BOB, "b", 3e9)], [1.0, 1.0])
        await s.forget(ALICE)  # compaction keeps ALICE's contribution as a trl record (half-life 60 s)
        await s.close()
        r = LocalState(journal, half_life_s=86400.0)
        got = await r.trending(now=3e9)
        assert got == pytest.approx({"b": 1.0}) and r.journal_skipped == 0
        await r.close()

    asyncio.run(main())
