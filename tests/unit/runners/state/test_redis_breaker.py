"""RedisState's circuit breaker and error classes, against a port where nothing listens (connection
refused: fast, no server needed). The hung-Redis and busy-pool cases run against a real redis-server in
tests/integration/test_redis_faults.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from runners.platform.processes import free_port
from runners.state.protocol import StateBusy, StateUnavailable
from runners.state.redis_state import PoolExhausted, RedisState, redis_errors
from tests.contracts.state_store import ALICE


def test_breaker_opens_after_consecutive_unreachable_errors_then_fails_at_once() -> None:
    async def main() -> None:
        s = RedisState(f"redis://127.0.0.1:{free_port()}/0", breaker_failures=2, breaker_reset_s=0.3)
        try:
            for _ in range(2):
                with pytest.raises(StateUnavailable, match="ConnectionError"):
                    await s.history(ALICE)
            assert s.breaker_state == "open"
            started = time.monotonic()
            with pytest.raises(StateUnavailable, match=r"127\.0\.0\.1.*circuit open") as info:
                await s.take_token("user:x", 1.0, 1)
            assert not isinstance(info.value, StateBusy)
            assert await s.ping() is False
            assert time.monotonic() - started < 0.05  # neither touched the network

            await asyncio.sleep(0.3)
            assert s.breaker_state == "half_open"
            assert await s.ping() is False  # ping is the probe: it failed, so open again
            assert s.breaker_state == "open"
        finally:
            await s.close()

    asyncio.run(main())


def test_knobs_are_validated() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        RedisState("redis://127.0.0.1:1/0", max_connections=0)
    with pytest.raises(ValueError, match="socket_timeout_s"):
        RedisState("redis://127.0.0.1:1/0", socket_timeout_s=0)
    with pytest.raises(ValueError, match="failures"):
        RedisState("redis://127.0.0.1:1/0", breaker_failures=0)


def test_pool_exhaustion_maps_to_state_busy_which_is_state_unavailable() -> None:
    with pytest.raises(StateBusy, match="busy") as info, redis_errors("redis://h:1/0"):
        raise PoolExhausted("no pooled connection came free within 0.5s (max_connections=8)")
    assert isinstance(info.value, StateUnavailable)
