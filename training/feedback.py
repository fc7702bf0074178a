"""Feedback into training: export the service's feedback log as ratings rows; merge them into a dataset.

**Export** (``python -m training feedback export``) reads the log of the configured state store
(runners/state/feedback_log.py: Redis's stream, or the local journal) after the last exported position and
writes one file per run into the feedback directory (default ``<FOLIO_STATE_DIR>/feedback``)::

    feedback-<kind>-<a>-<b>.csv      kind: redis | journal; (a, b): the position of the last record read

The file name is the checkpoint. A file is written under a temporary name, fsynced and renamed (atomic),
so a run that dies before the rename leaves no checkpoint and the next run reads the same records again;
once it is renamed, the next run starts after (a, b). Every acknowledged event lands in exactly one file.
Runs are serialized by a lock file. Redis's stream keeps its newest ``stream_maxlen`` (1,000,000) entries:
export at least that often (``retrain`` exports on every run).

Columns: ``user_id, book_id, rating, timestamp, event``: a valid ``ratings.csv`` (training/loaders.py).
``rating`` is the event on the 1..5 scale (models.candidates.event_rating: view 3, click 4, add_to_cart
4, purchase 5, rate = its value), the same scale serving weighs history with.

**Forgotten users**: a forget tombstone drops the user's earlier events of the same run and the user's
rows from every earlier file (each rewritten the same way, before the run's own file is written: a crash
between is repeated by the next run). A forget reaches the files at the next export.

**Merge** (``apply_feedback``, what ``train`` / ``main`` / ``retrain`` do unless ``--no-feedback``): per
(user, book), the highest rating of its events, dated by its first event; events rated under
POSITIVE_RATING (3) are not positives and are dropped, and so are books the catalog does not know. A pair
the dataset already holds keeps the higher of its two ratings and its own date; new users and pairs are
appended. The version records what it merged (metadata ``source.feedback``).
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.events import POSITIVE_RATING, event_rating
from runners.state.feedback_log import EXPORT_FILE, FeedbackLog, LogRecord, Position
from runners.state.journal import replace_synced
from training.dataset import Dataset, Interactions
from training.loaders import _numbers, _read_csv, _require

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "book_id", "rating", "timestamp", "event")
FILE_NAME = EXPORT_FILE  # the checkpoint is in the name (runners/state/feedback_log.py)
LOCK_NAME = ".export.lock"


class ExportBusy(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportResult:
    file: Path | None  # None: nothing new in the log
    events: int  # rows written
    forgets: int  # tombstones applied
    purged_rows: int  # rows removed from earlier files
    skipped: int  # log entries that failed validation
    position: Position | None  # the checkpoint after this run

    def to_json(self) -> dict[str, object]:
        return {
            "file": None if self.file is None else str(self.file),
            "events": self.events,
            "forgets": self.forgets,
            "purged_rows": self.purged_rows,
            "skipped": self.skipped,
            "position": None if self.position is None else list(self.position),
        }


def exported_files(directory: Path) -> list[tuple[str, Position, Path]]:
    """(kind, position, path) of every export file in ``directory``, oldest first per kind."""
    out = []
    for path in directory.glob("feedback-*.csv") if directory.is_dir() else ():
        if m := FILE_NAME.match(path.name):
            out.append((m[1], (int(m[2]), int(m[3])), path))
        else:
            log.warning("%s: not an export file name; ignored", path)
    return sorted(out, key=lambda f: (f[0], f[1]))


def checkpoint(directory: Path, kind: str) -> Position | None:
    positions = [p for k, p, _ in exported_files(directory) if k == kind]
    return max(positions) if positions else None


@contextmanager
def export_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportBusy(f"another feedback export holds {directory / LOCK_NAME}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_feedback(source: FeedbackLog, directory: Path) -> ExportResult:
    """Export the records of ``source`` after the last checkpoint in ``directory`` (module doc)."""
    with export_lock(directory):
        for stale in directory.glob(".feedback-*.tmp"):  # a run that died before its rename
            stale.unlink()
        after = checkpoint(directory, source.kind)
        read = source.read_after(after)
        if read.skipped:
            log.warning("%s: %d log entries failed validation and were skipped", source.where, read.skipped)
        if not read.records:
            return ExportResult(None, 0, 0, 0, read.skipped, after)
        rows, forgotten = _surviving_rows(read.records, source)
        purged = _purge(directory, forgotten, source) if forgotten else 0
        end = read.records[-1].position
        path = directory / f"feedback-{source.kind}-{end[0]}-{end[1]}.csv"
        _write_atomic(path, rows)
        log.info(
            "exported %d events to %s (%d forgets, %d rows purged)", len(rows), path, len(forgotten), purged
        )
        return ExportResult(path, len(rows), len(forgotten), purged, read.skipped, end)


def _surviving_rows(records: Sequence[LogRecord], source: FeedbackLog) -> tuple[list[list[str]], set[str]]:
    """The event rows of ``records`` not followed by a tombstone of their user, and the tombstones."""
    last_forget = {r.forgotten: r.position for r in records if r.forgotten is not None}
    rows, keys = [], dict[str, str]()
    for r in records:
        e = r.event
        if e is None:
            continue
        if last_forget:
            key = keys.setdefault(e.user_id, source.user_key(e.user_id))
            if key in last_forget and r.position < last_forget[key]:
                continue
        rows.append([e.user_id, e.item_id, _num(event_rating(e.event, e.value)), _num(e.ts), e.event])
    return rows, set(last_forget)


def _purge(directory: Path, forgotten: set[str], source: FeedbackLog) -> int:
    """Remove the forgotten users' rows from every earlier export file; returns the rows removed."""
    removed = 0
    for _, _, path in exported_files(directory):
        _, *rows = [r for r in csv.reader(io.StringIO(path.read_text())) if r]
        keys: dict[str, str] = {}
        kept = [r for r in rows if keys.setdefault(r[0], source.user_key(r[0])) not in forgotten]
        if len(kept) < len(rows):
            removed += len(rows) - len(kept)
            _write_atomic(path, kept)
    return removed


def _num(x: float) -> str:
    return np.format_float_positional(x, trim="-")


def _write_atomic(path: Path, rows: list[list[str]]) -> None:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(COLUMNS)
    w.writerows(rows)
    replace_synced(path, [text.getvalue().encode()], path.with_name(f".{path.name}.tmp"))


# ------------------------------------------------------------------------------------------ merge
def read_feedback(directory: Path, files: Sequence[Path] | None = None) -> pd.DataFrame:
    """The rows of the export files (all of ``directory``'s, or ``files``): user_id, book_id (str),
    rating, timestamp (float64), event. DataError names the file and line of a malformed row."""
    paths = [p for _, _, p in exported_files(directory)] if files is None else list(files)
    frames = []
    for path in paths:
        raw = path.read_bytes()
        if raw.count(b"\n") <= 1:
            continue  # header only: a run that read only tombstones
        df = _read_csv(str(path), raw)
        _require(df, str(path), COLUMNS)
        df["rating"] = _numbers(df, "rating", str(path), allow_empty=False)
        df["timestamp"] = _numbers(df, "timestamp", str(path), allow_empty=True)
        frames.append(df[list(COLUMNS)])
    if not frames:
        return pd.DataFrame(
            {c: pd.Series(dtype=float if c in ("rating", "timestamp") else str) for c in COLUMNS}
        )
    return pd.concat(frames, ignore_index=True)


def apply_feedback(ds: Dataset, rows: pd.DataFrame) -> Dataset:
    """``ds`` with the positive feedback rows merged in (module doc)."""
    positive = rows[rows["rating"] >= POSITIVE_RATING]
    items = pd.Index(ds.catalog.item_ids).get_indexer(pd.Index(positive["book_id"]))
    if n_unknown := int((items < 0).sum()):
        log.warning("feedback: %d rows on books the catalog does not know were dropped", n_unknown)
    positive = positive[items >= 0].assign(item=items[items >= 0])
    if positive.empty:
        return ds
    inter = ds.interactions
    user_ids = list(inter.user_ids)
    known = {u: i for i, u in enumerate(user_ids)}
    for u in dict.fromkeys(positive["user_id"]):
        if u not in known:
            known[u] = len(user_ids)
            user_ids.append(u)
    pairs = (
        positive.assign(user=positive["user_id"].map(known).astype(np.int64))
        .groupby(["user", "item"], sort=False)
        .agg(rating=("rating", "max"), timestamp=("timestamp", "min"))
        .reset_index()
        .sort_values("timestamp", kind="stable")
    )
    n_items = len(ds.catalog)
    base_key = inter.users * n_items + inter.items
    fb_key = pairs["user"].to_numpy() * n_items + pairs["item"].to_numpy()
    at = pd.Index(base_key).get_indexer(pd.Index(fb_key))  # base rows are unique per pair (loaders)
    ratings = inter.ratings.copy()
    both = at >= 0
    ratings[at[both]] = np.maximum(ratings[at[both]], pairs["rating"].to_numpy()[both])
    new = pairs[~both]
    stamps = new["timestamp"].to_numpy(np.float64)
    if len(inter) and np.isnan(inter.timestamps).all():  # undated data: file order is the timeline
        stamps = np.full(stamps.size, np.nan)  # (appended after it, feedback stays the newest)
    merged = Interactions(
        users=np.concatenate([inter.users, new["user"].to_numpy(np.int64)]),
        items=np.concatenate([inter.items, new["item"].to_numpy(np.int64)]),
        ratings=np.concatenate([ratings, new["rating"].to_numpy(np.float32)]),
        timestamps=np.concatenate([inter.timestamps, stamps]),
        user_ids=user_ids,
    )
    log.info(
        "feedback: %d positive rows -> %d pairs (%d new, %d already in the data), %d new users",
        len(positive),
        len(pairs),
        len(new),
        int(both.sum()),
        len(user_ids) - inter.n_users,
    )
    summary = f"{len(positive)} positive rows, {len(pairs)} pairs ({len(new)} new)"
    return Dataset(ds.name, ds.catalog, merged, ds.source | {"feedback": summary})
