"""open_state: the service passes the Redis connection knobs whichever backend it gets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runners.state.backends import open_state
from runners.state.local import LocalState
from runners.state.redis_state import RedisState

KNOBS = {"socket_timeout_s": 0.25, "max_connections": 7, "breaker_failures": 4, "breaker_reset_s": 1.5}


def test_redis_gets_the_connection_knobs(tmp_path: Path) -> None:
    state = open_state("redis://127.0.0.1:1/0", tmp_path / "j.jsonl", max_history=5, **KNOBS)
    assert isinstance(state, RedisState) and state.max_history == 5
    assert state.client.connection_pool.max_connections == 7
    assert state.client.connection_pool.timeout == 0.25
    assert state.breaker_state == "closed" and state.socket_timeout_s == 0.25
    asyncio.run(state.close())


def test_local_state_ignores_them_but_not_unknown_names(tmp_path: Path) -> None:
    state = open_state(None, tmp_path / "j.jsonl", max_history=5, **KNOBS)
    assert isinstance(state, LocalState) and state.max_history == 5
    asyncio.run(state.close())
    with pytest.raises(TypeError):
        open_state(None, tmp_path / "k.jsonl", max_histroy=5)
