"""runners/state/compaction.py: a compacted journal replays to the state the uncompacted one gives (checked
against a model of the semantics, on random event sequences with forgets), exports the same rows after
the export's checkpoint, and is written atomically; LocalState compacts it by size, at start-up and
in the background; the offline compaction and a running store keep off each other's journal."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from collections import deque
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runners.state.catalog import Book, CatalogChange, CatalogState, LocalCatalog
from runners.state.compaction import plan, plan_catalog
from runners.state.feedback_log import JournalLog
from runners.state.journal import JournalBusy, lock_journal
from runners.state.local import LocalState, compact_offline
from runners.state.protocol import EPOCH, Event, keyed_user_hash
from training.feedback import export_feedback, exported_files

KEY = b"c" * 32
HL = 3600.0
T0 = EPOCH + 30 * 86400.0
USERS = ("ann", "bob", "cy", "dee")
ITEMS = tuple(f"b{i}" for i in range(6))
BIG = 2**40  # compact_bytes: no compaction by size


def ev_line(n: int, user: str, item: str, ts: float, w: float) -> bytes:
    e = Event(user, item, "click", None, ts)
    return json.dumps({"op": "ev", "n": n, "w": w, "e": asdict(e)}).encode()


def forget_line(n: int, user: str) -> bytes:
    return json.dumps({"op": "forget", "n": n, "k": keyed_user_hash(KEY, user)}).encode()


op = st.one_of(
    st.tuples(
        st.just("ev"),
        st.sampled_from(USERS),
        st.sampled_from(ITEMS),
        st.integers(0, 7200),
        st.sampled_from([0.5, 1.0, 3.0]),
    ),
    st.tuples(st.just("forget"), st.sampled_from(USERS)),
)


class Model:
    """What replaying the whole journal must give: the semantics, written out plainly."""

    def __init__(self, max_history: int) -> None:
        self.hist: dict[str, deque[tuple[str, float]]] = {}
        self.forgotten: set[str] = set()
        self.trend: dict[str, float] = {}
        self.max_history = max_history

    def apply(self, o: tuple) -> None:
        if o[0] == "ev":
            _, user, item, dt, w = o
            self.hist.setdefault(user, deque(maxlen=self.max_history)).append((item, T0 + dt))
            self.forgotten.discard(user)
            self.trend[item] = self.trend.get(item, 0.0) + w * 2 ** ((T0 + dt - T0 - 7200) / HL)
        else:
            self.hist.pop(o[1], None)
            self.forgotten.add(o[1])


def journal_of(ops: list[tuple]) -> list[bytes]:
    return [
        ev_line(n, o[1], o[2], T0 + o[3], o[4]) if o[0] == "ev" else forget_line(n, o[1])
        for n, o in enumerate(ops, 1)
    ]


async def served(path: Path, max_history: int) -> tuple[dict, dict, dict, int]:
    s = LocalState(path, hash_key=KEY, max_history=max_history, half_life_s=HL, compact_bytes=BIG)
    try:
        hist = {u: [(e.item_id, e.ts) for e in await s.history(u)] for u in USERS}
        forgotten = {u: await s.is_forgotten(u) for u in USERS}
        generation = {u: (await s.generation(u) > 0) - (await s.generation(u) < 0) for u in USERS}
        assert s.journal_skipped == 0
        return hist, forgotten | {"gen": generation}, await s.trending(now=T0 + 7200), s._seq
    finally:
        await s.close()


def export_all(journal: Path, out: Path) -> list[tuple[str, str]]:
    export_feedback(JournalLog(journal, KEY), out)
    return [(p.name, p.read_text()) for _, _, p in exported_files(out)]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(op, min_size=1, max_size=40),
    max_history=st.integers(1, 4),
    exported_share=st.one_of(st.none(), st.floats(0, 1)),
)
def test_a_compacted_journal_serves_and_exports_what_the_whole_one_does(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple],
    max_history: int,
    exported_share: float | None,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    lines = journal_of(ops)
    model = Model(max_history)
    for o in ops:
        model.apply(o)
    exported = None if exported_share is None else int(exported_share * len(lines))
    whole, compacted = tmp / "whole" / "journal.jsonl", tmp / "compact" / "journal.jsonl"
    for path in (whole, compacted):
        path.parent.mkdir()
    whole.write_bytes(b"".join(line + b"\n" for line in lines))
    done = plan(
        lines,
        user_key=lambda u: keyed_user_hash(KEY, u),
        max_history=max_history,
        half_life_s=HL,
        exported=exported,
        keep_unexported=10_000,
    )
    compacted.write_bytes(b"".join(done.lines))
    assert len(done.lines) <= len(lines) + 1  # at most one trending line more
    assert done.dropped_unexported == 0
    if exported is not None:  # what an export has read stays only where a history or a forget needs it
        read = [r for r in map(json.loads, done.lines) if r.get("n", 0) <= exported and r["op"] != "trl"]
        assert len([r for r in read if r["op"] == "forget"]) <= len(model.forgotten)
        for user in USERS:
            assert len([r for r in read if r["op"] == "ev" and r["e"]["user_id"] == user]) <= max_history

    # served state: what the model says, from both files (copies: a store may compact what it opens)
    for path in (compacted, whole):
        copy = tmp / f"served-{path.parent.name}" / "journal.jsonl"
        copy.parent.mkdir()
        shutil.copy(path, copy)
        hist, flags, trend, seq = asyncio.run(served(copy, max_history))
        assert hist == {u: list(model.hist.get(u, ())) for u in USERS}
        assert {u for u in USERS if flags[u]} == model.forgotten  # a forget stays forgotten
        assert trend == pytest.approx({i: x for i, x in model.trend.items()}, rel=1e-9)
        assert seq == len(lines)  # the next line still gets the next number
    for user in model.forgotten:  # no line of a forgotten user survives a compaction
        assert f'"{user}"'.encode() not in compacted.read_bytes()

    # feedback export: the same files, from the same checkpoint
    if exported is not None:
        first = tmp / "exp-a"
        prefix = tmp / "prefix" / "journal.jsonl"
        prefix.parent.mkdir()
        prefix.write_bytes(b"".join(line + b"\n" for line in lines[:exported]))
        export_all(prefix, first)
        if exported and not exported_files(first):
            return  # nothing read: no checkpoint file (the case exported=None covers it)
        shutil.copytree(first, tmp / "exp-b")
        assert export_all(whole, first) == export_all(compacted, tmp / "exp-b")
    else:
        assert export_all(whole, tmp / "exp-a") == export_all(compacted, tmp / "exp-b")


def test_compaction_bounds_the_journal_and_keeps_what_is_not_exported(tmp_path: Path) -> None:
    """Many events of few users: only histories and the unexported tail stay; the cap drops the rest."""
    lines = [ev_line(n, USERS[n % 2], ITEMS[n % 6], T0 + n, 1.0) for n in range(1, 1001)]
    common = {"user_key": lambda u: keyed_user_hash(KEY, u), "max_history": 5, "half_life_s": HL}
    nothing_exported = plan(lines, exported=None, keep_unexported=10_000, **common)
    assert nothing_exported.lines == [line + b"\n" for line in lines]  # all wait for the export
    exported = plan(lines, exported=900, keep_unexported=10_000, **common)
    kept = [json.loads(line) for line in exported.lines[1:]]
    assert [r["n"] for r in kept] == list(range(901, 1001))  # histories (5 each) are within them
    capped = plan(lines, exported=None, keep_unexported=50, **common)
    assert [json.loads(line)["n"] for line in capped.lines[1:]] == list(range(951, 1001))
    assert capped.dropped_unexported == 950


def test_unknown_and_invalid_lines_stay_unless_a_forgotten_user_wrote_them() -> None:
    bad_event = json.dumps({"op": "ev", "n": 3, "w": -1.0, "e": {"user_id": "ann", "item_id": "b1"}})
    lines = [
        ev_line(1, "ann", "b1", T0, 1.0),
        json.dumps({"op": "from-the-future", "n": 2}).encode(),
        bad_event.encode(),
        json.dumps({"op": "forget", "h": "0" * 64}).encode(),
        b"[1, 2]",
        forget_line(4, "ann"),
        ev_line(5, "bob", "b1", T0, 1.0),
    ]
    done = plan(
        lines,
        user_key=lambda u: keyed_user_hash(KEY, u),
        max_history=5,
        half_life_s=HL,
        exported=5,
        keep_unexported=10_000,
    )
    out = b"".join(done.lines)
    assert b"from-the-future" in out and b'"h"' in out and b"[1, 2]" not in out
    assert b'"ann"' not in out and forget_line(4, "ann") in out and done.users == {"bob"}


def test_the_largest_sequence_number_survives_when_its_line_goes() -> None:
    bad = json.dumps({"op": "ev", "n": 9, "w": 1.0, "e": {"user_id": "ann", "item_id": "b1"}}).encode()
    lines = [ev_line(1, "ann", "b1", T0, 1.0), bad, forget_line(2, "ann")]  # bad: an invalid line, n=9
    done = plan(
        lines,
        user_key=lambda u: keyed_user_hash(KEY, u),
        max_history=5,
        half_life_s=HL,
        exported=None,
        keep_unexported=10_000,
    )
    assert json.loads(done.lines[-1]) == {"op": "seq", "n": 9}


def test_local_state_compacts_by_size_in_the_background_and_at_start_up(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.jsonl"
    (tmp_path / "state" / "feedback").mkdir(parents=True)

    async def main() -> None:
        s = LocalState(journal, hash_key=KEY, max_history=3, half_life_s=HL, compact_bytes=2**16)
        batch = [Event(f"u{i % 4}", ITEMS[i % 6], "click", None, T0 + i) for i in range(100)]
        for i in range(20):
            await s.append_events(batch, [1.0] * 100)
            if i == 9:  # an export has read everything so far: those lines may go
                (journal.parent / "feedback" / f"feedback-journal-{s._seq}-0.csv").write_text("h\n")
        await s.settle()
        first_n = json.loads(journal.read_bytes().splitlines()[1])["n"]
        assert first_n > 1000  # compacted in the background: exported lines beyond the histories went
        assert journal.stat().st_size < 2 * 1000 * 150  # the 1,000 unexported events (~150 B each)
        (journal.parent / "feedback" / f"feedback-journal-{s._seq}-0.csv").write_text("h\n")
        done = await s.compact()  # the explicit call: everything is exported now
        assert done.summary()["lines_after"] == 1 + 4 * 3  # the trending line + 4 histories of 3
        before = ([await s.history(f"u{i}") for i in range(4)], await s.trending(now=T0))
        await s.close()
        r = LocalState(journal, hash_key=KEY, max_history=3, half_life_s=HL, compact_bytes=2**16)
        assert [await r.history(f"u{i}") for i in range(4)] == before[0]
        assert await r.trending(now=T0) == pytest.approx(before[1], rel=1e-12)
        await r.append_events([batch[0]], [1.0])
        assert json.loads(journal.read_bytes().splitlines()[-1])["n"] == 2001
        await r.close()

    asyncio.run(main())
    lines = journal.read_bytes().splitlines()
    # start-up compaction: once the journal is at least compact_bytes
    s = LocalState(journal, hash_key=KEY, max_history=1, half_life_s=HL, compact_bytes=len(lines) and 1)
    assert len(journal.read_bytes().splitlines()) < len(lines)
    asyncio.run(s.close())


def test_a_crash_mid_compaction_leaves_the_old_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(line + b"\n" for line in journal_of([("ev", "ann", "b1", 0, 1.0)] * 5)))
    before = journal.read_bytes()

    def crash(*_: object) -> None:
        raise OSError(5, "crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crash"):
        compact_offline(journal, hash_key=KEY, max_history=1, half_life_s=HL, keep_unexported=1000)
    monkeypatch.undo()
    assert journal.read_bytes() == before  # the temp file was written; the journal untouched
    assert journal.with_name("journal.jsonl.tmp").exists()
    hist, *_ = asyncio.run(served(journal, 1))
    assert hist["ann"] == [("b1", T0)]
    out = compact_offline(journal, hash_key=KEY, max_history=1, half_life_s=HL, keep_unexported=1000)
    assert out["lines_before"] == 5 and out["lines_after"] == 5  # nothing exported: all kept
    assert not journal.with_name("journal.jsonl.tmp").exists()


def test_offline_tools_and_a_running_store_keep_off_each_other(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    s = LocalState(journal, hash_key=KEY, compact_bytes=BIG)
    with pytest.raises(JournalBusy, match="in use"):
        compact_offline(journal, hash_key=KEY, max_history=5, half_life_s=HL, keep_unexported=1000)
    asyncio.run(s.close())
    with lock_journal(journal, exclusive=True), pytest.raises(JournalBusy, match="offline tool"):
        LocalState(journal, hash_key=KEY, compact_bytes=BIG)
    compact_offline(journal, hash_key=KEY, max_history=5, half_life_s=HL, keep_unexported=1000)


def test_new_lines_come_after_the_export_checkpoint_of_a_newer_export(tmp_path: Path) -> None:
    """A journal restored from a backup older than the export files: the export must still read new lines."""
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(ev_line(1, "ann", "b1", T0, 1.0) + b"\n")
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "feedback-journal-40-0.csv").write_text(
        "user_id,book_id,rating,timestamp,event\n"
    )

    async def main() -> None:
        s = LocalState(journal, hash_key=KEY, compact_bytes=BIG)
        await s.append_events([Event("bob", "b2", "click", None, T0)], [1.0])
        await s.close()

    asyncio.run(main())
    assert json.loads(journal.read_bytes().splitlines()[-1])["n"] == 41
    rows = export_all(journal, tmp_path / "feedback")
    assert "bob,b2" in rows[-1][1]


catalog_op = st.tuples(st.sampled_from(["upsert", "withdraw", "restore"]), st.sampled_from(ITEMS[:3]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(catalog_op, min_size=1, max_size=25))
def test_a_compacted_catalog_journal_gives_the_same_state(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str]]
) -> None:
    tmp = tmp_path_factory.mktemp("cat")
    changes = [
        CatalogChange(o, item, Book(item, f"{item} v{i}") if o == "upsert" else None, ts=T0)
        for i, (o, item) in enumerate(ops)
    ]
    want = CatalogState().apply(len(changes), changes)
    lines = [json.dumps(c.to_dict(r)).encode() for r, c in enumerate(changes, 1)]
    path = tmp / "catalog.jsonl"
    path.write_bytes(b"".join(plan_catalog(lines)))

    async def state() -> CatalogState:
        cat = LocalCatalog(path)
        try:
            return await cat.state()
        finally:
            await cat.close()

    got = asyncio.run(state())
    assert got == want and len(path.read_bytes().splitlines()) <= 2 * len(ITEMS[:3]) + 1
    assert math.isfinite(got.revision)
