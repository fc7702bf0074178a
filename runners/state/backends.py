"""Which state-store backend a worker opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.state.local import LocalState
from runners.state.protocol import StateStore
from runners.state.redis_state import RedisState


def open_state(redis_url: str | None, journal_path: Path, **kw: Any) -> StateStore:
    """RedisState when a URL is given (lazy: see RedisState.connect), else LocalState on `journal_path`."""
    return RedisState(redis_url, **kw) if redis_url else LocalState(journal_path, **kw)
