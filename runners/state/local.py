"""The in-process backend of the state store (runners/state/protocol.py): one worker, dicts in memory,
acknowledged feedback and forget records in an fsynced JSON-lines journal (runners/state/journal.py),
replayed on start-up. Compaction (runners/state/compaction.py: what it keeps) runs in the background after
a forget and each time the journal passes ``compact_bytes`` (FOLIO_JOURNAL_COMPACT_BYTES) or doubles
since the last one, and at start-up when a forget was left unfinished or the journal is that large.

The store holds ``<journal>.lock`` shared while it is open; the offline tools (``compact_offline``,
``python -m training backup restore``) take it exclusively, so neither runs on a journal a service has
open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runners.platform.settings import Settings
from runners.state.compaction import Plan, compact_catalog_file, plan, rewrite, trending_sums
from runners.state.feedback_log import export_checkpoint
from runners.state.journal import (
    JournalFile,
    fsync_dir,
    journal_seq,
    local_hash_key,
    lock_journal,
    read_journal,
    read_range,
    write_synced,
)
from runners.state.protocol import (
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
        compact_bytes: int = Settings.model_fields["journal_compact_bytes"].default,
        keep_unexported: int = Settings.model_fields["journal_keep_unexported"].default,
        export_dir: Path | None = None,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.compact_bytes, self.keep_unexported = compact_bytes, keep_unexported
        # where `python -m training feedback export` writes by default: its checkpoint
        self.export_dir = Path(export_dir) if export_dir else self.journal_path.parent / "feedback"
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
        self._held = lock_journal(self.journal_path, exclusive=False)
        try:
            self._replay()
            # a journal restored from a backup older than the export files: new lines must still come
            # after the export's checkpoint, or it would never read them
            self._seq = max(self._seq, self._exported() or 0)
            if self._purge or self.journal_path.stat().st_size >= self.compact_bytes:
                self._compact_now()  # a forget whose compaction did not run, or a journal grown large
            self._journal = JournalFile(self.journal_path)
        except BaseException:
            self._held.close()
            raise
        self._compact_at = max(self.compact_bytes, 2 * self._journal.tell())

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
        elif op == "seq":  # left by a compaction that dropped the line with the highest n (read above)
            pass
        elif op == "forget":  # written before keyed hashes
            self._legacy_forgotten.add(str(rec["h"]))
        elif op in ("tr", "trl"):  # anonymous trending sums of purged lines ("tr": linear, older journals)
            if float(rec.get("hl", self.half_life_s)) != self.half_life_s:
                log.warning("journal: trending sums kept for another half-life (%s s) are dropped", rec["hl"])
                return  # they cannot be rescaled without the events' timestamps
            for item, x in trending_sums(rec, op).items():
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
        self._maybe_compact()

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
        self._maybe_compact()

    # ------------------------------------------------------------ compaction
    def _exported(self) -> int | None:
        """The sequence number of the last line the feedback export read (None: no export yet)."""
        position = export_checkpoint(self.export_dir, "journal")
        return None if position is None else position[0]

    def _plan(self, lines: list[bytes], exported: int | None) -> Plan:
        return plan(
            lines,
            user_key=self.user_key,
            max_history=self.max_history,
            half_life_s=self.half_life_s,
            exported=exported,
            keep_unexported=self.keep_unexported,
        )

    def _maybe_compact(self) -> None:
        due = self._purge or self._journal.tell() >= self._compact_at
        if due and (self._compactor is None or self._compactor.done()):
            self._compactor = asyncio.create_task(self._compact_pending())

    async def compact(self) -> Plan:
        """Rewrite the journal (runners/state/compaction.py: what it keeps). Reads and plans what is on
        disk without the lock; holds it only to copy the lines appended meanwhile and swap the files."""
        async with self._lock:
            end = self._journal.tell()
        head = await asyncio.to_thread(
            lambda: self._plan(read_range(self.journal_path, 0, end).splitlines(), self._exported())
        )
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        await asyncio.to_thread(write_synced, tmp, head.lines, "wb")
        async with self._lock:
            tail = read_range(self.journal_path, end, self._journal.tell())
            await asyncio.to_thread(self._swap, tmp, [tail])
            users, forgets = set(), set()
            for line in tail.splitlines():  # written by this process: valid
                rec = json.loads(line)
                if rec["op"] == "ev":
                    users.add(rec["e"]["user_id"])
                else:
                    forgets.add(rec["k"])
            self._journal_users = head.users | users
            # forgotten again meanwhile: their older lines are still there, the next run removes them
            self._purge = {u for u in self._purge if self.user_key(u) in forgets}
            self._compact_at = max(self.compact_bytes, 2 * self._journal.tell())
        log.info("journal %s compacted: %s", self.journal_path, head.summary())
        return head

    def _swap(self, tmp: Path, extra: list[bytes]) -> None:
        write_synced(tmp, extra, "ab")
        new = open(tmp, "ab")  # noqa: SIM115  (opened before the rename: no failure after it)
        os.replace(tmp, self.journal_path)
        self._journal.adopt(new)
        fsync_dir(self.journal_path.parent)

    async def _compact_pending(self) -> None:
        while True:
            try:
                await self.compact()
            except OSError:
                log.exception("journal compaction failed; it is tried again once the journal has grown")
                self._compact_at = self._journal.tell() + self.compact_bytes
                return
            if not self._purge:
                return

    def _compact_now(self) -> None:
        """compact() at construction, before the journal is opened for appending."""
        lines, _ = read_journal(self.journal_path)
        done = self._plan(lines, self._exported())
        rewrite(self.journal_path, done.lines)
        self._purge.clear()
        self._journal_users = done.users
        log.info("journal %s compacted at start-up: %s", self.journal_path, done.summary())

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

    async def active_users(self, events: int) -> dict[str, int]:
        """The senders of the newest ``events`` feedback events held (by event time), with how many of them
        each sent (cache warming: runners/serving/warmup.py). A forgotten user's events are gone."""
        if events < 1:
            raise ValueError(f"events must be >= 1, got {events}")
        newest = sorted(((e.ts, u) for u, hist in self._hist.items() for e in hist), reverse=True)[:events]
        counts: dict[str, int] = {}
        for _, user in newest:
            counts[user] = counts.get(user, 0) + 1
        return counts

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
        self._held.close()


def compact_offline(
    journal_path: Path,
    *,
    hash_key: bytes | None,
    max_history: int,
    half_life_s: float,
    keep_unexported: int,
    export_dir: Path | None = None,
) -> dict[str, object]:
    """Compact the feedback journal and the catalog journal beside it, with no service running on them
    (JournalBusy otherwise). The settings must be the service's (FOLIO_MAX_HISTORY,
    FOLIO_TRENDING_HALF_LIFE_S): a shorter history here would cut the users' histories for good."""
    journal_path = Path(journal_path)
    with lock_journal(journal_path, exclusive=True):
        size = journal_path.stat().st_size if journal_path.exists() else 0
        lines, _ = read_journal(journal_path)
        key = hash_key or local_hash_key(journal_path.parent)
        position = export_checkpoint(export_dir or journal_path.parent / "feedback", "journal")
        done = plan(
            lines,
            user_key=lambda u: keyed_user_hash(key, u),
            max_history=max_history,
            half_life_s=half_life_s,
            exported=None if position is None else position[0],
            keep_unexported=keep_unexported,
        )
        rewrite(journal_path, done.lines)
        out: dict[str, object] = {
            "journal": str(journal_path),
            "bytes_before": size,
            "bytes_after": journal_path.stat().st_size,
            **done.summary(),
        }
        catalog = journal_path.with_name("catalog.jsonl")
        if catalog.exists():
            out["catalog"] = compact_catalog_file(catalog)
        return out
