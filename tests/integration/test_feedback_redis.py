"""Feedback export from a real Redis (training/feedback.py): two runs with a crash between them export
every acknowledged event exactly once, while workers keep writing; a forget reaches the exported files."""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from runners.platform.redis_server import RedisServer
from runners.state.protocol import Event
from runners.state.redis_state import RedisState
from training.feedback import exported_files

T0 = 1_790_000_000.0
REPO = Path(__file__).resolve().parents[2]
# Runs the export CLI, and kills the process (os._exit: no clean-up, as a SIGKILL) at its Nth rename.
CRASHING_EXPORT = """
import os, sys
import runners.state.journal as journal  # where the export renames its files (replace_synced)
calls, real = [0], os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == int(os.environ["CRASH_AT_RENAME"]):
        os._exit(9)
    real(src, dst)
journal.os.replace = replace
from training.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def export(redis: RedisServer, out: Path, crash_at_rename: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOLIO_REDIS_URL": redis.url, "CRASH_AT_RENAME": str(crash_at_rename)}
    env.pop("FOLIO_USER_HASH_KEY", None)
    args = ["training", "feedback", "export", "--feedback-dir", str(out)]
    cmd = (
        [sys.executable, "-c", CRASHING_EXPORT, *args[1:]]
        if crash_at_rename
        else [sys.executable, "-m", *args]
    )
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def rows(out: Path) -> Counter[tuple[str, str, str]]:
    found: Counter[tuple[str, str, str]] = Counter()
    for _, _, path in exported_files(out):
        with open(path) as f:
            found.update((r["user_id"], r["book_id"], r["timestamp"]) for r in csv.DictReader(f))
    return found


def append(redis: RedisServer, events: list[Event]) -> None:
    async def go() -> None:
        s = RedisState(redis.url)
        for e in events:  # one acknowledged call per event, as /feedback does
            await s.append_events([e], [1.0])
        await s.close()

    asyncio.run(go())


def forget(redis: RedisServer, user: str) -> None:
    async def go() -> None:
        s = RedisState(redis.url)
        await s.forget(user)
        await s.close()

    asyncio.run(go())


def batch(user: str, start: int, n: int) -> list[Event]:
    return [Event(user, f"b{i}", "click", None, T0 + i) for i in range(start, start + n)]


def test_exactly_once_across_two_runs_and_a_crash_between_them(
    live_redis: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "feedback"
    acked = batch("u1", 0, 50) + batch("gone", 0, 5)
    append(live_redis, acked)
    first = export(live_redis, out)
    assert first.returncode == 0, first.stderr
    assert sum(rows(out).values()) == 55

    # Between runs: more feedback, a forget, then an export that dies at its first rename (the purge of
    # the forgotten user's rows from the first file) while two workers keep writing.
    append(live_redis, batch("u2", 0, 30))
    forget(live_redis, "gone")
    writers = [threading.Thread(target=append, args=(live_redis, batch(u, 100, 40))) for u in ("w1", "w2")]
    for t in writers:
        t.start()
    crashed = export(live_redis, out, crash_at_rename=1)
    assert crashed.returncode == 9, crashed.stderr
    crashed_again = export(live_redis, out, crash_at_rename=2)  # dies renaming its own file this time
    assert crashed_again.returncode == 9, crashed_again.stderr
    for t in writers:
        t.join()
    assert [p.name.split("-")[1] for _, _, p in exported_files(out)] == [
        "redis"
    ]  # one file, no new checkpoint

    second = export(live_redis, out)
    assert second.returncode == 0, second.stderr
    append(live_redis, batch("u3", 0, 3))
    third = export(live_redis, out)
    assert third.returncode == 0, third.stderr

    expected = Counter(
        (e.user_id, e.item_id, f"{e.ts:.0f}")
        for e in [
            *batch("u1", 0, 50),
            *batch("u2", 0, 30),
            *batch("w1", 100, 40),
            *batch("w2", 100, 40),
            *batch("u3", 0, 3),
        ]
    )
    assert rows(out) == expected  # every acknowledged event once; none of the forgotten user's
    assert len(exported_files(out)) == 3
    assert not list(out.glob(".*.tmp"))  # what the crashed runs left was cleared
