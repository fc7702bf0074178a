"""loadtests/forget_cost.py measures what it says: the heavy user's lines are gone after compaction."""

import asyncio

from loadtests.forget_cost import measure


def test_forget_cost_measures_a_real_purge() -> None:
    out = asyncio.run(measure(2000))
    assert set(out) == {
        "journal_mb",
        "forget_unknown_ms",
        "forget_heavy_request_ms",
        "compaction_ms",
        "journal_after_mb",
    }
    assert 0.3 < out["journal_after_mb"] / out["journal_mb"] < 0.7  # half the events were the heavy user's
