from __future__ import annotations

import time

import numpy as np
import pytest

from runners.stages.coverage import Coverage


def test_share_of_servable_items_recommended_in_the_window() -> None:
    cov = Coverage(10, window_s=60)
    servable = np.ones(10, dtype=bool)
    assert cov.ratio(servable) == 0.0
    cov.record(np.array([1, 2, 2, 3]))
    assert cov.ratio(servable) == pytest.approx(0.3)
    servable[1] = False  # withdrawn: neither counted nor in the denominator
    assert cov.ratio(servable) == pytest.approx(2 / 9)


def test_items_leave_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cov = Coverage(4, window_s=10)
    cov.record(np.array([0]))
    now[0] += 5
    cov.record(np.array([1]))
    assert cov.ratio(np.ones(4, dtype=bool)) == 0.5
    now[0] += 6  # item 0 was recommended 11 s ago
    assert cov.ratio(np.ones(4, dtype=bool)) == 0.25


def test_books_added_after_training_grow_the_tracker() -> None:
    cov = Coverage(3, window_s=60)
    cov.record(np.array([7]))  # a new book's index (n_items + its position)
    servable = np.ones(8, dtype=bool)
    assert cov.ratio(servable) == pytest.approx(1 / 8)
    assert cov.ratio(np.zeros(0, dtype=bool)) == 0.0
