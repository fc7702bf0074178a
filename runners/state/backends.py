"""Which state-store backend a worker opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.state.local import LocalState
from runners.state.protocol import StateStore
from runners.state.redis_state import RedisState

# RedisState's connection knobs: a worker without Redis has no pool, socket or breaker to configure.
REDIS_ONLY = frozenset({"socket_timeout_s", "max_connections", "breaker_failures", "breaker_reset_s"})
# LocalState's journal bounds: Redis bounds its stream itself.
LOCAL_ONLY = frozenset({"compact_bytes", "keep_unexported"})


def open_state(redis_url: str | None, journal_path: Path, **kw: Any) -> StateStore:
    """RedisState when a URL is given (lazy: see RedisState.connect), else LocalState on `journal_path`
    (which ignores the REDIS_ONLY knobs, as RedisState ignores LOCAL_ONLY; any other keyword a store does
    not take is still a TypeError)."""
    if redis_url:
        return RedisState(redis_url, **{k: v for k, v in kw.items() if k not in LOCAL_ONLY})
    return LocalState(journal_path, **{k: v for k, v in kw.items() if k not in REDIS_ONLY})
