"""What one /forget costs the embedded state store as its journal grows (issue 10, finding 9).

    python -m loadtests.forget_cost [--events 150000] [--redis redis://127.0.0.1:6379/0]

Fills a LocalState journal with `--events` feedback events (one heavy user holding half of them, the
rest spread over 5,000 users), then times, on the request path, a forget of an unknown user and of
the heavy user, and the background compaction that removes the heavy user's lines. Before tombstones
every forget rewrote the whole journal on the request path (635 ms at 22 MB, probe of issue 10).
With ``--redis`` (an empty database: it is flushed), the same user in Redis, and the longest single
command Redis ran during the forget (SLOWLOG; before: one Lua call of 170 ms for 150,000 events).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import redis

from runners.state.local import LocalState
from runners.state.protocol import Event
from runners.state.redis_state import RedisState


async def measure(events: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal.jsonl"
        state = LocalState(journal)
        now = time.time()
        batch = [
            Event("heavy" if i % 2 else f"user-{i % 5000}", f"b{i % 3000}", "click", None, now, None)
            for i in range(events)
        ]
        for start in range(0, events, 1000):
            await state.append_events(batch[start : start + 1000], [2.0] * len(batch[start : start + 1000]))
        out = {"journal_mb": journal.stat().st_size / 2**20}
        t0 = time.perf_counter()
        await state.forget("never-seen")
        out["forget_unknown_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        await state.forget("heavy")
        out["forget_heavy_request_ms"] = (time.perf_counter() - t0) * 1000
        await state.settle()
        out["compaction_ms"] = (time.perf_counter() - t0) * 1000
        out["journal_after_mb"] = journal.stat().st_size / 2**20
        await state.close()
        return out


async def measure_redis(url: str, events: int) -> dict[str, float]:
    sync = redis.Redis.from_url(url)
    sync.flushdb()
    state = RedisState(url, stream_maxlen=max(events, 1000))
    now = time.time()
    for start in range(0, events, 1000):
        rows = [Event("heavy", f"b{i % 3000}", "click", None, now, None) for i in range(start, start + 1000)]
        await state.append_events(rows, [2.0] * len(rows))
    sync.config_set("slowlog-log-slower-than", 0)
    sync.slowlog_reset()
    t0 = time.perf_counter()
    await state.forget("heavy")
    took = (time.perf_counter() - t0) * 1000
    longest = max(entry["duration"] for entry in sync.slowlog_get(100_000)) / 1000
    sync.config_set("slowlog-log-slower-than", 10_000)
    await state.close()
    return {
        "redis_forget_ms": took,
        "redis_longest_command_ms": longest,
        "stream_left": sync.xlen("folio:feedback"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--redis", help="also measure RedisState on this (flushed) database")
    args = parser.parse_args()
    out = asyncio.run(measure(args.events))
    if args.redis:
        out |= asyncio.run(measure_redis(args.redis, args.events))
    for name, value in out.items():
        print(f"{name:24s} {value:10.1f}")


if __name__ == "__main__":
    main()
