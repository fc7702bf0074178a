"""The in-process backend of the state store (runners/state/protocol.py): one worker, dicts in memory,
acknowledged feedback and forget records in an fsynced JSON-lines journal (runners/state/journal.py),
replayed on start-up and compacted in the background after a forget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runners.state.journal import (
    JournalFile,
    fsync_dir,
    journal_seq,
    local_hash_key,
    read_journal,
    read_range,
    write_synced,
)
from runners.state.protocol import (
    MAX_ID_CHARS,
    Event,
    UserSnapshot,
    check_bucket,
    check_events,
    decayed,
    generation_base,
    keyed_user_hash,
    legacy_user_hash,
    log2_add,
    log2_weight,
)

log = logging.getLogger(__name__)


@dataclass
class _Filtered:
    """A journal range with the purged users' lines removed."""

    kept: list[bytes]
    removed: dict[str, float]  # item -> log2 sum of the removed trending contributions
    forgotten_again: set[str]  # purged users with a tombstone in this range
    kept_users: set[str]  # purged users with event lines kept (sent after their tombstone)


class LocalState:
    """One process: dicts in memory, acknowledged feedback and forget records in an fsynced journal."""

    kind = "local"

    def __init__(
        self,
        journal_path: Path,
        *,
        max_history: int = 500,
        half_life_s: float = 86400.0,
        max_cached_users: int = 10_000,
        max_buckets: int = 100_000,
        cache_fields: int = 32,
        hash_key: bytes | None = None,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.max_history, self.half_life_s = max_history, half_life_s
        self.max_cached_users, self.max_buckets, self.cache_fields = (
            max_cached_users,
            max_buckets,
            cache_fields,
        )
        self._key = hash_key or local_hash_key(self.journal_path.parent)
        self._hist: dict[str, deque[Event]] = {}
        self._gen: dict[str, int] = {}
        self._cache: OrderedDict[str, dict[str, tuple[str, float]]] = OrderedDict()
        self._trend: dict[str, float] = {}  # item -> log2 sum (module doc)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._forgotten: set[str] = set()
        self._legacy_forgotten: set[str] = set()
        self._shared: dict[str, str] = {}
        self._journal_users: set[str] = set()  # users with event lines in the journal file
        self._purge: set[str] = set()  # forgotten users whose older lines compaction must remove
        self._compactor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._seq = 0  # the highest sequence number "n" in the journal (training/feedback.py's checkpoint)
        self.journal_skipped = 0  # unreadable journal lines skipped on replay (e.g. torn by a crash)
        self._replay()
        self._journal = JournalFile(self.journal_path)
        if self._purge:  # a forget whose compaction did not run before the process stopped
            self._compact_now()

    def user_key(self, user_id: str) -> str:
        return keyed_user_hash(self._key, user_id)

    # ----------------------------------------------------------- journal replay
    def _replay(self) -> None:
        lines, torn = read_journal(self.journal_path)
        self.journal_skipped += torn
        by_key: dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            try:
                self._replay_line(json.loads(line), by_key)
            except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError) as exc:
                self.journal_skipped += 1
                log.warning("journal %s line %d unreadable, skipped: %s", self.journal_path, n, exc)
        if self.journal_skipped:
            log.warning("journal %s: %d line(s) skipped on replay", self.journal_path, self.journal_skipped)

    def _replay_line(self, rec: dict[str, Any], by_key: dict[str, str]) -> None:
        op = rec["op"]
        if "n" in rec:
            self._seq = max(self._seq, journal_seq(rec))
        if op == "ev":
            ev, w = Event(**rec["e"]), float(rec["w"])
            check_events([ev], [w])
            by_key.setdefault(self.user_key(ev.user_id), ev.user_id)
            self._apply(ev, log2_weight(w, ev.ts, self.half_life_s))
        elif op == "forget" and "k" in rec:
            key = str(rec["k"])
            if (user := by_key.get(key)) is not None:
                self._drop_user(user)
                if user in self._journal_users:
                    self._purge.add(user)
            self._forgotten.add(key)
        elif op == "forget":  # written before keyed hashes
            self._legacy_forgotten.add(str(rec["h"]))
        elif op in ("tr", "trl"):  # anonymous trending sums of purged lines ("tr": linear, older journals)
            if float(rec.get("hl", self.half_life_s)) != self.half_life_s:
                log.warning("journal: trending sums kept for another half-life (%s s) are dropped", rec["hl"])
                return  # they cannot be rescaled without the events' timestamps
            for item, s in rec["s"].items():
                if op == "tr" and not float(s) > 0:
                    continue
                x = float(s) if op == "trl" else math.log2(float(s))
                if not math.isfinite(x) or not isinstance(item, str) or len(item) > MAX_ID_CHARS:
                    raise ValueError(f"bad trending sum {item!r}: {s!r}")
                self._trend[item] = log2_add(self._trend.get(item), x)
        else:
            raise ValueError(f"unknown op {op!r}")

    def _apply(self, ev: Event, log2_w: float) -> None:
        u = ev.user_id
        self._hist.setdefault(u, deque(maxlen=self.max_history)).append(ev)
        self._trend[ev.item_id] = log2_add(self._trend.get(ev.item_id), log2_w)
        self._gen[u] = self._gen.get(u, generation_base()) + 1
        self._cache.pop(u, None)
        self._journal_users.add(u)
        self._forgotten.discard(self.user_key(u))
        self._legacy_forgotten.discard(legacy_user_hash(u))

    def _drop_user(self, user_id: str) -> None:
        for d in (self._hist, self._gen, self._cache):
            d.pop(user_id, None)
        self._buckets.pop(f"user:{user_id}", None)

    # ---------------------------------------------------------------- writes
    async def append_events(self, events: Sequence[Event], weights: Sequence[float]) -> None:
        check_events(events, weights)
        if not events:
            return
        contributions = [
            log2_weight(float(w), e.ts, self.half_life_s) for e, w in zip(events, weights, strict=True)
        ]
        async with self._lock:  # sequence numbers in file order
            payload = "".join(
                json.dumps({"op": "ev", "n": self._seq + i, "w": float(w), "e": asdict(e)}) + "\n"
                for i, (e, w) in enumerate(zip(events, weights, strict=True), 1)
            ).encode()
            await asyncio.to_thread(self._journal.append, payload)
            self._seq += len(events)
            for e, x in zip(events, contributions, strict=True):
                self._apply(e, x)

    async def forget(self, user_id: str) -> None:
        key = self.user_key(user_id)
        async with self._lock:
            record = (json.dumps({"op": "forget", "n": self._seq + 1, "k": key}) + "\n").encode()
            await asyncio.to_thread(self._journal.append, record)
            self._seq += 1
            self._drop_user(user_id)
            self._forgotten.add(key)
            if user_id in self._journal_users:
                self._purge.add(user_id)
        if self._purge and (self._compactor is None or self._compactor.done()):
            self._compactor = asyncio.create_task(self._compact_pending())

    # ------------------------------------------------------------ compaction
    def _filter(self, data: bytes, purge: set[str]) -> _Filtered:
        """Drop the lines of `purge` users that precede their last tombstone in `data`."""
        keys = {self.user_key(u): u for u in purge}
        lines = data.splitlines()
        last_tomb: dict[str, int] = {}
        for n, line in enumerate(lines):
            if b'"forget"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    user = keys.get(json.loads(line).get("k"))
                    if user is not None:
                        last_tomb[user] = n
        out = _Filtered([], {}, set(last_tomb), set())
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
                user = rec["e"]["user_id"] if rec.get("op") == "ev" else None
                if user in purge and n < last_tomb.get(user, -1):
                    e, w = Event(**rec["e"]), float(rec["w"])
                    check_events([e], [w])
                    out.removed[e.item_id] = log2_add(
                        out.removed.get(e.item_id), log2_weight(w, e.ts, self.half_life_s)
                    )
                    continue
            except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError):
                continue  # unreadable lines may hold anything (replay skipped them): drop them
            if user in purge:
                out.kept_users.add(user)
            out.kept.append(line + b"\n")
        return out

    async def compact(self) -> None:
        """Rewrite the journal without the lines of forgotten users. Reads and filters what is on disk
        without the lock; holds it only to copy the lines appended meanwhile and swap the files."""
        async with self._lock:
            purge, end = set(self._purge), self._journal.tell()
        if not purge:
            return
        head = await asyncio.to_thread(self._filter, read_range(self.journal_path, 0, end), purge)
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        await asyncio.to_thread(write_synced, tmp, head.kept, "wb")
        async with self._lock:
            tail_bytes = read_range(self.journal_path, end, self._journal.tell())
            tail = await asyncio.to_thread(self._filter, tail_bytes, purge)
            removed = head.removed
            for item, x in tail.removed.items():
                removed[item] = log2_add(removed.get(item), x)
            await asyncio.to_thread(
                self._swap, tmp, [*tail.kept, *_trending_record(removed, self.half_life_s)]
            )
            for user in purge:
                if user not in tail.forgotten_again:  # forgotten again meanwhile: the next run handles it
                    self._purge.discard(user)
                if user not in head.kept_users | tail.kept_users:
                    self._journal_users.discard(user)

    def _swap(self, tmp: Path, extra: list[bytes]) -> None:
        write_synced(tmp, extra, "ab")
        new = open(tmp, "ab")  # noqa: SIM115  (opened before the rename: no failure after it)
        os.replace(tmp, self.journal_path)
        self._journal.adopt(new)
        fsync_dir(self.journal_path.parent)

    async def _compact_pending(self) -> None:
        while self._purge:
            try:
                await self.compact()
            except OSError:
                log.exception("journal compaction failed; forgotten users' lines stay until the next one")
                return

    def _compact_now(self) -> None:
        """compact() at construction, when nothing else can write."""
        purge = set(self._purge)
        done = self._filter(self.journal_path.read_bytes(), purge)
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        write_synced(tmp, [*done.kept, *_trending_record(done.removed, self.half_life_s)], "wb")
        self._swap(tmp, [])
        self._purge.clear()
        self._journal_users -= purge - done.kept_users

    async def settle(self) -> None:
        """Wait for a compaction in progress (tests; close() does it too)."""
        if self._compactor is not None:
            await self._compactor

    # ----------------------------------------------------------------- reads
    async def snapshot(self, user_id: str) -> UserSnapshot:
        forgotten = await self.is_forgotten(user_id)
        generation = self._gen.get(user_id, -1 if forgotten else 0)  # as generation(), one hash
        return UserSnapshot(generation, forgotten, list(self._hist.get(user_id, ())))

    async def history(self, user_id: str) -> list[Event]:
        return list(self._hist.get(user_id, ()))

    async def generation(self, user_id: str) -> int:
        if user_id not in self._gen and await self.is_forgotten(user_id):
            return -1
        return self._gen.get(user_id, 0)

    async def cache_get(self, user_id: str, field: str) -> str | None:
        fields = self._cache.get(user_id)
        if fields is None or field not in fields:
            return None
        value, exp = fields[field]
        if exp <= time.time():
            del fields[field]
            return None
        self._cache.move_to_end(user_id)
        return value

    async def cache_put(self, user_id: str, field: str, value: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        fields = self._cache.setdefault(user_id, {})
        if field not in fields and len(fields) >= self.cache_fields:
            now = time.time()
            for f in [f for f, (_, exp) in fields.items() if exp <= now]:
                del fields[f]
            if len(fields) >= self.cache_fields:
                return  # bounded per user: the result is computed again next time
        fields[field] = (value, time.time() + ttl_s)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self.max_cached_users:
            self._cache.popitem(last=False)

    async def trending(self, now: float | None = None, top: int | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        items = sorted(self._trend.items(), key=lambda kv: -kv[1])[:top]
        return {item: decayed(x, now, self.half_life_s) for item, x in items}

    async def take_tokens(
        self, costs: Mapping[str, int], rate_per_s: float, burst: int, now: float | None = None
    ) -> float:
        check_bucket(costs, rate_per_s, burst)
        now = time.time() if now is None else now
        state = {}
        for bucket in costs:
            tokens, ts = self._buckets.get(bucket, (float(burst), now))
            if now > ts:
                tokens, ts = min(float(burst), tokens + (now - ts) * rate_per_s), now
            state[bucket] = (tokens, ts)
        wait = max(max(0.0, (costs[b] - tokens) / rate_per_s) for b, (tokens, _) in state.items())
        for bucket, (tokens, ts) in state.items():  # all or nothing
            self._buckets[bucket] = (tokens - costs[bucket] if wait == 0 else tokens, ts)
            self._buckets.move_to_end(bucket)
        while len(self._buckets) > self.max_buckets:  # evicting a bucket only refills it: lenient, bounded
            self._buckets.popitem(last=False)
        return wait

    async def take_token(self, bucket: str, rate_per_s: float, burst: int, now: float | None = None) -> float:
        return await self.take_tokens({bucket: 1}, rate_per_s, burst, now)

    async def is_forgotten(self, user_id: str) -> bool:
        return self.user_key(user_id) in self._forgotten or (
            bool(self._legacy_forgotten) and legacy_user_hash(user_id) in self._legacy_forgotten
        )

    async def get_shared(self, name: str) -> str | None:
        return self._shared.get(name)

    async def set_shared(self, name: str, value: str) -> None:
        self._shared[name] = value

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.settle()
        self._journal.close()


def _trending_record(removed: dict[str, float], half_life_s: float) -> list[bytes]:
    """The journal line that keeps purged lines' trending contributions as anonymous per-item sums."""
    return [json.dumps({"op": "trl", "hl": half_life_s, "s": removed}).encode() + b"\n"] if removed else []
