"""training/feedback.py over the embedded journal: exactly-once export, forgets reaching exported files,
a crash before the checkpoint, and the merge into a dataset (integration/test_feedback_redis.py: Redis)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.candidates import rating_weight
from models.events import EVENT_RATINGS, POSITIVE_RATING, event_rating
from runners.state import journal as journal_io
from runners.state.feedback_log import JournalLog
from runners.state.local import LocalState
from runners.state.protocol import Event
from training import feedback
from training.dataset import Catalog, Dataset, Interactions
from training.feedback import ExportBusy, apply_feedback, export_feedback, exported_files, read_feedback

T0 = 1_790_000_000.0
KEY = b"k" * 32


def ev(user: str, item: str, event: str = "click", value: float | None = None, ts: float = T0) -> Event:
    return Event(user, item, event, value, ts)


def write(journal: Path, *ops: tuple[str, object]) -> None:
    """Append events / forgets through a LocalState (what the service does), then close it."""

    async def go() -> None:
        s = LocalState(journal, hash_key=KEY)
        for op, arg in ops:
            if op == "ev":
                assert isinstance(arg, list)
                await s.append_events(arg, [1.0] * len(arg))
            else:
                await s.forget(str(arg))
        await s.close()

    asyncio.run(go())


def exported(directory: Path) -> list[tuple[str, str, str]]:
    """(user, book, event) of every exported row, over every file."""
    out = []
    for _, _, path in exported_files(directory):
        with open(path) as f:
            out += [(r["user_id"], r["book_id"], r["event"]) for r in csv.DictReader(f)]
    return out


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.jsonl"


def run_export(journal: Path, out: Path) -> feedback.ExportResult:
    return export_feedback(JournalLog(journal, KEY), out)


def test_two_runs_export_every_event_once(journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "fb"
    write(journal, ("ev", [ev("u1", "a"), ev("u2", "b", "rate", 5)]))
    first = run_export(journal, out)
    assert first.events == 2 and first.position == (2, 0) and first.file is not None
    assert first.file.name == "feedback-journal-2-0.csv"
    assert run_export(journal, out).file is None  # nothing new: no file, same checkpoint
    write(journal, ("ev", [ev("u1", "c", "purchase")]))
    second = run_export(journal, out)
    assert second.events == 1 and second.position == (3, 0)
    assert sorted(exported(out)) == [("u1", "a", "click"), ("u1", "c", "purchase"), ("u2", "b", "rate")]
    rows = read_feedback(out)
    assert rows.set_index("book_id")["rating"].to_dict() == {"a": 4.0, "b": 5.0, "c": 5.0}
    assert rows["timestamp"].tolist() == [T0] * 3


def test_a_crash_before_the_rename_exports_the_same_records_next_time(
    journal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "fb"
    write(journal, ("ev", [ev("u1", "a")]))
    run_export(journal, out)
    write(journal, ("ev", [ev("u1", "b"), ev("u2", "c")]))

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing the file and naming it

    monkeypatch.setattr(journal_io.os, "replace", crash)  # the rename of the export file (replace_synced)
    with pytest.raises(KeyboardInterrupt):
        run_export(journal, out)
    monkeypatch.undo()
    assert [p.name for _, _, p in exported_files(out)] == ["feedback-journal-1-0.csv"]
    write(journal, ("ev", [ev("u3", "d")]))
    assert run_export(journal, out).events == 3
    assert sorted(exported(out)) == [
        ("u1", "a", "click"),
        ("u1", "b", "click"),
        ("u2", "c", "click"),
        ("u3", "d", "click"),
    ]


def test_a_forget_removes_the_user_from_earlier_files_and_from_its_own_run(
    journal: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fb"
    write(journal, ("ev", [ev("alice", "a"), ev("bob", "b")]))
    run_export(journal, out)
    write(
        journal,
        ("ev", [ev("alice", "c")]),
        ("forget", "alice"),
        ("ev", [ev("alice", "after")]),  # she came back after the forget: this one stays
        ("forget", "nobody"),
    )
    result = run_export(journal, out)
    assert (result.events, result.forgets, result.purged_rows) == (1, 2, 1)
    assert sorted(exported(out)) == [("alice", "after", "click"), ("bob", "b", "click")]
    assert b"alice" not in (out / "feedback-journal-2-0.csv").read_bytes()


def test_lines_written_before_numbering_are_exported_by_the_first_run_only(
    journal: Path, tmp_path: Path
) -> None:
    journal.parent.mkdir(parents=True)
    legacy = {
        "op": "ev",
        "w": 1.0,
        "e": {"user_id": "old", "item_id": "a", "event": "view", "value": None, "ts": T0},
    }
    journal.write_text(json.dumps(legacy) + "\n" + "not json\n")
    write(journal, ("ev", [ev("new", "b")]))  # numbered 1: replay skips the bad line, keeps the legacy one
    first = run_export(journal, tmp_path / "fb")
    assert (first.events, first.skipped) == (2, 1)
    write(journal, ("ev", [ev("new", "c")]))
    assert run_export(journal, tmp_path / "fb").events == 1
    assert sorted(exported(tmp_path / "fb")) == [
        ("new", "b", "click"),
        ("new", "c", "click"),
        ("old", "a", "view"),
    ]


def test_a_line_still_being_appended_is_not_read(journal: Path, tmp_path: Path) -> None:
    write(journal, ("ev", [ev("u1", "a")]))
    with open(journal, "a") as f:
        f.write('{"op": "ev", "n": 2, "w": 1.0, "e": {"user_id": "u1"')  # no newline yet
    assert run_export(journal, tmp_path / "fb").events == 1
    assert journal.read_text().endswith('"u1"')  # the reader never truncates the service's journal


def test_exports_are_serialized(journal: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "fb"
    out.mkdir()
    with open(out / ".export.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ExportBusy):
            run_export(journal, out)


def test_journal_sequence_numbers_survive_restart_and_compaction(journal: Path) -> None:
    write(journal, ("ev", [ev("a", "x"), ev("b", "y")]), ("forget", "a"))
    write(journal, ("ev", [ev("c", "z")]))  # replayed (and compacted: "a" is gone), then appended
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [rec["n"] for rec in lines if "n" in rec] == [2, 3, 4]  # b's event, the forget, c's event


def test_event_ratings_are_the_scale_serving_weighs_history_with() -> None:
    """The exported rating of each event is the one serving turns into its history weight."""
    assert {e: rating_weight(r) for e, r in EVENT_RATINGS.items()} == {
        "view": 1.0,
        "click": 2.0,
        "add_to_cart": 2.0,
        "purchase": 3.0,
    }
    assert event_rating("rate", None) == 4.0 and event_rating("rate", 2) == 2.0
    assert all(r >= POSITIVE_RATING for r in EVENT_RATINGS.values())


# ------------------------------------------------------------------------------------------ merge
def dataset() -> Dataset:
    catalog = Catalog(["a", "b", "c"], ["A", "B", "C"], ["", "", ""], [(), (), ()], np.zeros(3, np.float32))
    inter = Interactions(
        np.array([0, 1]), np.array([0, 1]), np.array([5.0, 3.0], np.float32), np.array([1.0, 2.0]), ["u", "v"]
    )
    return Dataset("shop", catalog, inter, {"books": "books.csv"})


def rows(*r: tuple[str, str, float, float, str]) -> pd.DataFrame:
    return pd.DataFrame(r, columns=list(feedback.COLUMNS))


def test_merge_keeps_the_strongest_signal_and_appends_new_users_and_pairs() -> None:
    out = apply_feedback(
        dataset(),
        rows(
            ("u", "a", 3.0, 10.0, "view"),  # u already rated a 5: stays 5
            ("v", "b", 5.0, 11.0, "purchase"),  # v rated b 3: now 5, dated as before
            ("w", "c", 3.0, 13.0, "view"),
            ("w", "c", 4.0, 12.0, "click"),  # one pair: the highest rating, the first date
            ("w", "a", 2.0, 14.0, "rate"),  # not a positive
            ("w", "zzz", 5.0, 15.0, "purchase"),  # a book the catalog does not know
        ),
    )
    i = out.interactions
    assert i.user_ids == ["u", "v", "w"]
    assert i.users.tolist() == [0, 1, 2] and i.items.tolist() == [0, 1, 2]
    assert i.ratings.tolist() == [5.0, 5.0, 4.0] and i.timestamps.tolist() == [1.0, 2.0, 12.0]
    assert out.source["feedback"] == "4 positive rows, 3 pairs (1 new)"


def test_nothing_positive_keeps_the_dataset() -> None:
    ds = dataset()
    assert apply_feedback(ds, rows(("u", "a", 1.0, 1.0, "rate"))) is ds
    assert apply_feedback(ds, read_feedback(Path("/nonexistent"))) is ds


def test_a_malformed_export_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "feedback-journal-1-0.csv").write_text(
        "user_id,book_id,rating,timestamp,event\nu,a,lots,1,view\n"
    )
    with pytest.raises(ValueError, match=r"feedback-journal-1-0\.csv:2: bad rating"):
        read_feedback(tmp_path)


def test_stray_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "feedback-notes.csv").write_text("x\n")
    (tmp_path / ".feedback-journal-5-0.csv.tmp").write_text("partial")
    assert exported_files(tmp_path) == [] and os.listdir(tmp_path)


def test_feedback_on_undated_data_stays_after_it_in_file_order() -> None:
    """Timelines (training/protocol.timeline_matrix) put undated rows after dated ones: dated feedback
    appended to undated data would come first; undated, it keeps its place at the end."""
    ds, i = dataset(), dataset().interactions
    undated = Dataset(
        ds.name, ds.catalog, Interactions(i.users, i.items, i.ratings, np.full(2, np.nan), i.user_ids)
    )
    out = apply_feedback(undated, rows(("w", "c", 4.0, 12.0, "click")))
    assert np.isnan(out.interactions.timestamps).all() and out.interactions.items.tolist() == [0, 1, 2]
