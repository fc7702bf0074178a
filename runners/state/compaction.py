"""Compaction of the local journals: a shorter file that replays to the same served state.

**Feedback journal** (runners/state/local.py). Replaying it gives every user's newest ``max_history``
events (since their last forget), the forgotten set, per-item trending sums, and the sequence number the
next line gets; the feedback export (training/feedback.py) reads the ``"ev"``/``"forget"`` lines after
its checkpoint. ``plan`` keeps, in file order:

- every event a user's history still holds (the newest ``max_history`` since the user's last forget);
- every event no export has read yet (n > the export checkpoint), unless it is older than the newest
  ``keep_unexported`` lines: the same bound as Redis's stream (MAXLEN 1,000,000; export at least that
  often), counted in ``dropped_unexported`` and logged;
- every forget tombstone an export has not read yet, and the last tombstone of each user still
  forgotten (a forget stays forgotten); a user's events before their last tombstone go, whatever their n;
- lines it cannot use but replay does not need either (legacy forget records, trending sums of another
  half-life, unknown ops, events that fail validation) as they are, except those of a forgotten user;
  lines that are not JSON objects go.

The dropped events' trending contributions, and the valid trending records of the journal's half-life,
become one anonymous ``trl`` line at the top. Positions are kept (each kept line keeps its ``n``), so an
export after the compaction reads the same records after its checkpoint, and the largest ``n`` stays in
the file (a ``seq`` line carries it in the one case where no kept line does). Exported events that no
history needs go: the export files are then their only copy (back them up: docs/operations.md).

**Catalog journal** (runners/state/catalog.py): ``plan_catalog`` keeps each book's last upsert, the last
withdraw of each book still withdrawn, and the final change (it carries the revision).

``rewrite`` replaces a journal atomically: temp file written and fsynced, renamed over the journal,
directory fsynced. A crash leaves either the old journal or the new one (and a stale temp file that the
next compaction overwrites).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.state.journal import journal_seq, read_journal, replace_synced
from runners.state.protocol import MAX_ID_CHARS, Event, check_events, log2_add, log2_weight

log = logging.getLogger(__name__)

# what replay catches when it skips a line (runners/state/local.py)
BAD_LINE = (ValueError, KeyError, TypeError, ArithmeticError, AttributeError)


@dataclass
class Plan:
    """A compacted feedback journal: ``lines`` in order, and what was left out."""

    lines: list[bytes]
    users: set[str] = field(default_factory=set)  # users with event lines kept
    lines_in: int = 0
    dropped_unexported: int = 0  # events no export had read, dropped past keep_unexported
    max_seq: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "lines_before": self.lines_in,
            "lines_after": len(self.lines),
            "dropped_unexported": self.dropped_unexported,
            "max_seq": self.max_seq,
        }


@dataclass
class _Line:
    raw: bytes
    kind: str  # "ev" | "forget" | "trend" | "keep" (used as is) | "drop" (not a JSON object)
    n: int = 0  # its sequence number as replay reads it (0: none, or unreadable)
    user: str | None = None  # "ev": the user (also on an event that fails validation)
    item: str = ""  # "ev": the book
    x: float | None = None  # "ev": log2 of its trending contribution; None: fails validation
    key: str = ""  # "forget": the keyed hash
    sums: dict[str, float] = field(default_factory=dict)  # "trend": item -> log2 sum


def _parse(raw: bytes, half_life_s: float) -> _Line:
    try:
        rec = json.loads(raw)
    except ValueError:
        return _Line(raw, "drop")
    if not isinstance(rec, dict):
        return _Line(raw, "drop")
    try:
        n = journal_seq(rec)  # replay reads it first: a bad one skips the whole line
    except ValueError:
        return _Line(raw, "keep")
    op = rec.get("op")
    if op == "ev":
        e = rec.get("e")
        user = e.get("user_id") if isinstance(e, dict) else None
        line = _Line(raw, "ev", n, user=user if isinstance(user, str) else None)
        try:
            ev, w = Event(**rec["e"]), float(rec["w"])
            check_events([ev], [w])
            line.item, line.x = ev.item_id, log2_weight(w, ev.ts, half_life_s)
        except BAD_LINE:
            line.x = None
        return line
    try:
        if op == "forget" and "k" in rec:
            return _Line(raw, "forget", n, key=str(rec["k"]))
        if op in ("tr", "trl") and float(rec.get("hl", half_life_s)) == half_life_s:
            return _Line(raw, "trend", n, sums=trending_sums(rec, op))
        if op == "seq":
            return _Line(raw, "trend", n)  # only its n matters: written again if still needed
    except BAD_LINE:
        pass
    return _Line(raw, "keep", n)  # replay skips it, or uses it as it is: unchanged


def trending_sums(rec: dict[str, Any], op: str) -> dict[str, float]:
    """A trending record's log2 sums, validated as replay does (ValueError: replay skips the line)."""
    out: dict[str, float] = {}
    for item, s in rec["s"].items():
        if op == "tr" and not float(s) > 0:
            continue
        x = float(s) if op == "trl" else math.log2(float(s))
        if not math.isfinite(x) or not isinstance(item, str) or len(item) > MAX_ID_CHARS:
            raise ValueError(f"bad trending sum {item!r}: {s!r}")
        out[item] = log2_add(out.get(item), x)
    return out


def plan(
    lines: Sequence[bytes],
    *,
    user_key: Callable[[str], str],
    max_history: int,
    half_life_s: float,
    exported: int | None,
    keep_unexported: int,
) -> Plan:
    """The lines of a compacted feedback journal (module doc). ``exported``: the n of the last record an
    export read (None: no export yet)."""
    parsed = [_parse(raw, half_life_s) for raw in lines]
    max_seq = max((p.n for p in parsed), default=0)
    seen = exported if exported is not None else -1
    cut = max(seen, max_seq - keep_unexported)  # events at or below it may go unless a history needs them
    keys: dict[str, str] = {}
    key = lambda user: keys.setdefault(user, user_key(user))  # noqa: E731
    forgotten_later: set[str] = set()  # keys with a tombstone further down
    sent_later: set[str] = set()  # keys with a valid event further down
    held: dict[str, int] = {}  # events kept for each user's history so far (from the end)
    out = Plan([], lines_in=len(lines), max_seq=max_seq)
    trend: dict[str, float] = {}
    keep = [False] * len(parsed)
    for i in range(len(parsed) - 1, -1, -1):
        p = parsed[i]
        if p.kind == "ev":
            k = key(p.user) if p.user is not None else None
            if k is not None and k in forgotten_later:
                pass  # forgotten afterwards: dropped with its trending contribution (below)
            elif p.x is None:
                keep[i] = True  # replay skips it; kept as is
            else:
                assert p.user is not None and k is not None
                sent_later.add(k)
                held[p.user] = held.get(p.user, 0) + 1
                keep[i] = held[p.user] <= max_history or p.n > cut
                out.dropped_unexported += not keep[i] and p.n > seen
            if not keep[i] and p.x is not None:
                trend[p.item] = log2_add(trend.get(p.item), p.x)
            if keep[i] and p.user is not None:
                out.users.add(p.user)
        elif p.kind == "forget":
            needed = p.key not in forgotten_later and p.key not in sent_later
            keep[i] = needed or p.n > seen
            forgotten_later.add(p.key)
        elif p.kind == "trend":
            for item, x in p.sums.items():
                trend[item] = log2_add(trend.get(item), x)
        else:
            keep[i] = p.kind == "keep"
    if trend:
        out.lines.append(json.dumps({"op": "trl", "hl": half_life_s, "s": trend}).encode() + b"\n")
    out.lines += [p.raw + b"\n" for p, k in zip(parsed, keep, strict=True) if k]
    kept_seq = max((p.n for p, k in zip(parsed, keep, strict=True) if k), default=0)
    if kept_seq < max_seq:  # the next line must still get max_seq + 1
        out.lines.append(json.dumps({"op": "seq", "n": max_seq}).encode() + b"\n")
    if out.dropped_unexported:
        log.warning(
            "journal compaction dropped %d events no export had read (more than %d lines since the last "
            "export): run `python -m training feedback export` more often",
            out.dropped_unexported,
            keep_unexported,
        )
    return out


def plan_catalog(lines: Sequence[bytes]) -> list[bytes]:
    """The lines of a compacted catalog journal (module doc); lines replay skips for their revision order
    go, unreadable lines stay as they are."""
    from runners.state.catalog import CatalogChange

    parsed: list[tuple[bytes, CatalogChange | None]] = []
    last = 0
    for raw in lines:
        try:
            rev, change = CatalogChange.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError):
            parsed.append((raw, None))
            continue
        if rev > last:  # replay skips a revision that does not increase
            last = rev
            parsed.append((raw, change))
    final = max((i for i, (_, c) in enumerate(parsed) if c is not None), default=-1)
    upserted: set[str] = set()
    toggled: set[str] = set()
    keep = [False] * len(parsed)
    for i in range(len(parsed) - 1, -1, -1):
        raw, c = parsed[i]
        if c is None:
            keep[i] = True
        elif c.op == "upsert":
            keep[i] = c.item_id not in upserted or i == final
            upserted.add(c.item_id)
        else:
            keep[i] = (c.item_id not in toggled and c.op == "withdraw") or i == final
            toggled.add(c.item_id)
    return [raw + b"\n" for (raw, _), k in zip(parsed, keep, strict=True) if k]


def rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace ``path`` by ``lines`` atomically (temp file fsynced, renamed, directory fsynced)."""
    replace_synced(path, lines, path.with_name(path.name + ".tmp"))


def compact_catalog_file(path: Path) -> dict[str, int]:
    """Compact a catalog journal no process has open (the caller holds the state directory's lock)."""
    lines, _ = read_journal(path)
    kept = plan_catalog(lines)
    if len(kept) < len(lines):
        rewrite(path, kept)
    return {"lines_before": len(lines), "lines_after": len(kept)}
