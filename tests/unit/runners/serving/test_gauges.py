from __future__ import annotations

from runners.serving.gauges import promoted_ts


def test_promotion_time_from_the_store_label() -> None:
    assert promoted_ts("2026-01-02T00:00:00+00:00", 5.0) == 1767312000.0
    assert promoted_ts(None, 5.0) == 5.0  # never promoted: since trained
    assert promoted_ts("yesterday", 5.0) == 5.0
