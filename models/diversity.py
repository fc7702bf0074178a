"""Genre diversity of a top-k: a scale-free MMR-style rank penalty, and an optional hard cap per genre.

Greedy, k times: take the remaining item with the least

    rank + penalty x (items of its primary genre already taken)

where rank is its position in the ranked list (0 = best), so ``penalty`` reads in ranks: at 2, a third
book of a genre must rank 4 places above the best book of another genre to be shown before it. Items
without a genre ("") are never penalized. A genre holding ``cap`` items is skipped until nothing else
is left. penalty 0 with cap >= k returns the ranking unchanged. Training picks the default penalty on
validation (training/experiment.choose_penalty: the largest whose per-user paired NDCG@10 cost stays
within DIVERSITY_NDCG_BUDGET at mean + 2 standard errors) and
the version carries it; serving reads it (runners/stages/rules.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PENALTIES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)  # the curve training measures
DIVERSITY_NDCG_BUDGET = 0.003  # validation NDCG@10 the default penalty may cost (target: within 0.005)


def diversify(items: np.ndarray, primary: Sequence[str], k: int, penalty: float, cap: int) -> np.ndarray:
    """The top ``k`` of ``items`` (int64 item indices, best first); ``primary[i]`` is item i's genre."""
    return items[picks(items, primary, k, penalty, cap)].astype(np.int64)


def picks(items: np.ndarray, primary: Sequence[str], k: int, penalty: float, cap: int) -> np.ndarray:
    """``diversify``'s choice as positions into ``items`` (int64), in the order they are shown."""
    n = min(k, items.size)
    if n == 0:
        return np.zeros(0, np.int64)
    codes: dict[str, int] = {}
    genre = np.array([codes.setdefault(primary[i], len(codes)) if primary[i] else -1 for i in items.tolist()])
    shown = np.zeros(len(codes) + 1, np.int64)  # last slot: items without a genre, never counted
    cost = np.arange(items.size, dtype=np.float64)
    taken = np.zeros(items.size, bool)
    out = []
    for _ in range(n):
        count = shown[genre]
        blocked = taken | ((genre >= 0) & (count >= cap))
        if blocked.all():
            blocked = taken
        j = int(np.argmin(np.where(blocked, np.inf, cost + penalty * np.where(genre >= 0, count, 0))))
        taken[j] = True
        if genre[j] >= 0:
            shown[genre[j]] += 1
        out.append(j)
    return np.asarray(out, dtype=np.int64)
