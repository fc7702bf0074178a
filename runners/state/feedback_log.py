"""The feedback log, read in order from a position on: what `training/feedback.py` exports.

Both state stores keep one ordered log of acknowledged feedback events and forget tombstones
(runners/state/local.py, redis_state.py): Redis's ``feedback`` stream (entry ids ``<ms>-<seq>``;
field "e" = Event JSON, "f" = a forgotten user's keyed hash) and the local journal (``"ev"`` and
``"forget"`` lines numbered by ``"n"``; lines written before numbering read as n = 0). A position is a
pair of ints that grows along the log: (ms, seq) of a stream id, (n, 0) of a journal line.

Reading changes nothing in the store: it never truncates or compacts the journal a running service
appends to (only complete lines are read), and it reads up to where the log ended when the read began.
A record that fails validation is skipped and counted, never raised: a bad entry cannot stop an export.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import redis

from runners.platform.settings import Settings
from runners.state.journal import journal_seq, local_hash_key
from runners.state.protocol import Event, keyed_user_hash
from runners.state.redis_state import redact_url

log = logging.getLogger(__name__)

Position = tuple[int, int]
EXPORT_FILE = re.compile(r"^feedback-(redis|journal)-(\d{1,20})-(\d{1,20})\.csv$")  # an export's file
KEYED_HASH = re.compile(r"^[0-9a-f]{64}$")
STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
BATCH = 10_000


@dataclass(frozen=True)
class LogRecord:
    position: Position
    event: Event | None = None  # an acknowledged feedback event, or
    forgotten: str | None = None  # the keyed hash of a user forgotten at this point


@dataclass
class LogRead:
    records: list[LogRecord] = field(default_factory=list)
    skipped: int = 0  # entries that failed validation


class FeedbackLog(Protocol):
    kind: str  # "redis" | "journal": part of an export's file names
    where: str  # for messages (no password)

    def read_after(self, after: Position | None) -> LogRead:
        """Every record after ``after`` (None: from the start, including unnumbered journal lines)."""
        ...

    def user_key(self, user_id: str) -> str:
        """The keyed hash forget tombstones carry for ``user_id``."""
        ...

    def close(self) -> None: ...


class JournalLog:
    kind = "journal"

    def __init__(self, path: Path, hash_key: bytes | None) -> None:
        self.path, self.where = Path(path), str(path)
        self._key = hash_key or local_hash_key(self.path.parent)

    def read_after(self, after: Position | None) -> LogRead:
        out = LogRead()
        if not self.path.exists():
            return out
        data = self.path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # a line still being appended is not read
        for line in data.splitlines():
            try:
                record = _journal_record(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                out.skipped += 1
                continue
            if record is not None and (after is None or record.position > after):
                out.records.append(record)
        return out

    def user_key(self, user_id: str) -> str:
        return keyed_user_hash(self._key, user_id)

    def close(self) -> None:
        pass


def _journal_record(rec: dict[str, Any]) -> LogRecord | None:
    position = (journal_seq(rec), 0)
    if rec["op"] == "ev":
        return LogRecord(position, event=Event(**rec["e"]))
    if rec["op"] == "forget" and "k" in rec:
        return LogRecord(position, forgotten=_keyed_hash(rec["k"]))
    return None  # trending sums, legacy forget records (their users' lines were removed long ago)


class RedisLog:
    kind = "redis"

    def __init__(
        self, url: str, hash_key: bytes | None, prefix: str = "folio:", timeout_s: float = 10.0
    ) -> None:
        self.where, self.prefix = redact_url(url), prefix
        self._r = redis.Redis.from_url(url, socket_timeout=timeout_s, decode_responses=True)
        self._key = hash_key

    def read_after(self, after: Position | None) -> LogRead:
        out = LogRead()
        last = self._entries("+", "-", count=1, reverse=True)
        if not last:
            return out
        start, end = ("-" if after is None else f"({after[0]}-{after[1]}"), last[0][0]
        while True:
            rows = self._entries(start, end, count=BATCH)
            for entry_id, fields in rows:
                try:
                    out.records.append(_stream_record(entry_id, fields))
                except (ValueError, KeyError, TypeError):
                    out.skipped += 1
            if len(rows) < BATCH:
                return out
            start = f"({rows[-1][0]}"

    def _entries(
        self, start: str, end: str, count: int, reverse: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        stream = f"{self.prefix}feedback"
        rows = (
            self._r.xrevrange(stream, start, end, count)
            if reverse
            else self._r.xrange(stream, start, end, count)
        )
        return cast(list[tuple[str, dict[str, str]]], rows)

    def user_key(self, user_id: str) -> str:
        if self._key is None:
            stored = self._r.get(f"{self.prefix}hashkey")
            if stored is None:  # no feedback was ever written: no tombstone can match anyone
                return ""
            self._key = str(stored).encode()
        return keyed_user_hash(self._key, user_id)

    def close(self) -> None:
        self._r.close()


def _stream_id(entry_id: str) -> Position:
    if (m := STREAM_ID.match(entry_id)) is None:
        raise ValueError(f"bad stream id {entry_id!r}")
    return int(m[1]), int(m[2])


def _stream_record(entry_id: str, fields: dict[str, str]) -> LogRecord:
    position = _stream_id(entry_id)
    if "e" in fields:
        return LogRecord(position, event=Event.from_json(fields["e"]))
    return LogRecord(position, forgotten=_keyed_hash(fields["f"]))


def _keyed_hash(value: object) -> str:
    if not isinstance(value, str) or not KEYED_HASH.match(value):
        raise ValueError("a forget record without a keyed hash")
    return value


def export_checkpoint(directory: Path, kind: str) -> Position | None:
    """The position of the last record an export of ``kind`` read into ``directory`` (its newest file
    name, training/feedback.py), None if none did. The journal's compaction drops no line after it."""
    positions = [
        (int(m[2]), int(m[3]))
        for name in (os.listdir(directory) if directory.is_dir() else ())
        if (m := EXPORT_FILE.match(name)) and m[1] == kind
    ]
    return max(positions, default=None)


def open_log(settings: Settings) -> FeedbackLog:
    """The log of the state store ``settings`` configure (FOLIO_REDIS_URL, else FOLIO_STATE_DIR's journal)."""
    key = settings.user_hash_key.get_secret_value().encode() if settings.user_hash_key else None
    if settings.redis_url:
        return RedisLog(settings.redis_url, key)
    return JournalLog(settings.state_dir / "journal.jsonl", key)
