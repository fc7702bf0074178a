"""What one /forget costs the embedded state store as its journal grows (issue 10, finding 9).

    python -m loadtests.forget_cost [--events 150000]

Fills a LocalState journal with `--events` feedback events (one heavy user holding half of them, the
rest spread over 5,000 users), then times, on the request path, a forget of an unknown user and of
the heavy user, and the background compaction that removes the heavy user's lines. Before tombstones
every forget rewrote the whole journal on the request path (635 ms at 22 MB, probe of issue 10).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from runners.store import Event, LocalState


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=150_000)
    for name, value in asyncio.run(measure(parser.parse_args().events)).items():
        print(f"{name:24s} {value:10.1f}")


if __name__ == "__main__":
    main()
