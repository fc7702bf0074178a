"""Catalog coverage: the share of the servable catalog that appeared in at least one computed answer over
a sliding window (``folio_catalog_coverage_ratio``). A recommender that collapses onto a few popular
books shows here long before it shows in click-through.

Cost on the hot path: one numpy fancy assignment of the answer's k indices."""

from __future__ import annotations

import time

import numpy as np


class Coverage:
    def __init__(self, n_items: int, window_s: float) -> None:
        self.window_s = window_s
        self._last = np.full(n_items, -np.inf)  # monotonic time each item was last recommended

    def record(self, items: np.ndarray) -> None:
        """``items``: internal indices of one answer (books added after training included)."""
        if len(items) and int(items.max()) >= len(self._last):
            grown = np.full(max(int(items.max()) + 1, 2 * len(self._last)), -np.inf)
            grown[: len(self._last)] = self._last
            self._last = grown
        self._last[items] = time.monotonic()

    def ratio(self, servable: np.ndarray) -> float:
        """Share of ``servable`` (bool per internal index: in the catalog, not withdrawn) recommended in
        the window; 0 for an empty catalog."""
        total = int(servable.sum())
        if not total:
            return 0.0
        recent = self._last[: len(servable)] > time.monotonic() - self.window_s
        return float(np.count_nonzero(recent & servable[: len(recent)])) / total
