"""Two-level result cache for recommendations.

Keys carry the model version, the user's cache generation and the request parameters, so a new model
or any feedback makes old entries unreachable at once, with no key scan:

    L1  in-process, bounded LRU with TTL     key (model_version, user, generation, params)
    L2  the state store (Redis hash per user) field "model_version|generation|params"

The store bumps the generation and drops the user's L2 hash on feedback and on /forget; L1 entries
of other generations are never read again and age out. A store outage degrades to L1 + compute.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from runners.platform.metrics import CACHE, STATE_ERRORS
from runners.state.protocol import StateStore, StateUnavailable


class TTLCache:
    """Bounded LRU whose entries expire ``ttl_s`` after they were put (not thread-safe: one event loop)."""

    def __init__(self, max_size: int, ttl_s: float, clock: Any = time.monotonic) -> None:
        self.max_size, self.ttl_s, self.clock = max_size, ttl_s, clock
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires < self.clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.max_size <= 0 or self.ttl_s <= 0:
            return
        self._data[key] = (self.clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def drop_user(self, user_id: str) -> None:
        """Remove a user's entries (for /forget; invalidation itself goes through the generation)."""
        for key in [k for k in self._data if k[1] == user_id]:
            del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


class ResultCache:
    def __init__(self, state: StateStore, model_version: str, max_size: int, ttl_s: float) -> None:
        self.state, self.model_version, self.ttl_s = state, model_version, ttl_s
        self.l1 = TTLCache(max_size, ttl_s)

    async def get(self, user_id: str, generation: int | None, params: str) -> str | None:
        """The cached answer for the user at ``generation`` (None: the store is down, nothing cached)."""
        if generation is None or self.ttl_s <= 0:
            return None
        key = (self.model_version, user_id, generation, params)
        if (value := self.l1.get(key)) is not None:
            CACHE.labels(level="l1", outcome="hit").inc()
            return str(value)
        CACHE.labels(level="l1", outcome="miss").inc()
        try:
            value = await self.state.cache_get(user_id, f"{self.model_version}|{generation}|{params}")
        except StateUnavailable:
            STATE_ERRORS.labels(op="cache_get").inc()
            value = None
        CACHE.labels(level="l2", outcome="miss" if value is None else "hit").inc()
        if value is not None:
            self.l1.put(key, value)
        return value

    async def put(self, user_id: str, generation: int | None, params: str, value: str) -> None:
        if generation is None or self.ttl_s <= 0:
            return
        self.l1.put((self.model_version, user_id, generation, params), value)
        try:
            await self.state.cache_put(
                user_id, f"{self.model_version}|{generation}|{params}", value, self.ttl_s
            )
        except StateUnavailable:
            STATE_ERRORS.labels(op="cache_put").inc()
