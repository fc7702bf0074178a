"""The feedback events a state store holds, read directly (no service in between), as the keys of
loadtests/faults/mix.py: the embedded store's journal (``$FOLIO_STATE_DIR/journal.jsonl``, lines
``{"op": "ev", "e": {...}}``) and Redis' ``<prefix>feedback`` stream (field ``e``, the event as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from loadtests.faults.mix import FeedbackKey, feedback_key

STREAM = "folio:feedback"  # runners/state/redis_state.py: prefix "folio:" + "feedback"


def _key(event: dict) -> FeedbackKey:
    return feedback_key(event["user_id"], event["item_id"], event["ts"])


def journal_keys(path: Path) -> set[FeedbackKey]:
    """Every event in the journal (a torn last line, never acknowledged, is skipped)."""
    keys: set[FeedbackKey] = set()
    if not path.exists():
        return keys
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("op") == "ev":
            keys.add(_key(rec["e"]))
    return keys


def redis_keys(client: redis.Redis, stream: str = STREAM, page: int = 10_000) -> set[FeedbackKey]:
    """Every event in the feedback stream (forget tombstones, field ``f``, are skipped)."""
    keys: set[FeedbackKey] = set()
    start = "-"
    while True:
        entries: list[Any] = client.xrange(stream, min=start, count=page) or []
        for _, fields in entries:
            if b"e" in fields:
                keys.add(_key(json.loads(fields[b"e"])))
        if len(entries) < page:
            return keys
        start = "(" + entries[-1][0].decode()
