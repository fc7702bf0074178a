"""RedisCatalog against a real redis-server: the shared CatalogContract, keys under the prefix, and an
outage -> StateUnavailable with nothing applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runners.platform.redis_server import RedisServer
from runners.state.catalog import CatalogChange, CatalogLog, RedisCatalog, open_catalog
from runners.state.protocol import StateUnavailable
from runners.state.redis_state import RedisState
from tests.contracts.catalog_log import DUNE, Backend, CatalogContract

pytestmark = pytest.mark.integration


class RedisBackend:
    def __init__(self, server: RedisServer) -> None:
        self.server = server

    async def make(self) -> CatalogLog:
        return open_catalog(RedisState(self.server.url), Path("unused"))


class TestRedisCatalogContract(CatalogContract):
    @pytest.fixture()
    def backend(self, live_redis: RedisServer) -> Backend:
        return RedisBackend(live_redis)


def test_keys_live_under_the_prefix(live_redis: RedisServer) -> None:
    async def main() -> None:
        state = RedisState(live_redis.url, prefix="shop1:")
        cat = open_catalog(state, Path("unused"))
        assert isinstance(cat, RedisCatalog)
        await cat.append([CatalogChange("upsert", "b1", DUNE), CatalogChange("withdraw", "b1")])
        await state.close()

    asyncio.run(main())
    with live_redis.client() as c:
        keys = sorted(k.decode() for k in c.keys("*"))
    assert keys == [
        "shop1:catalog:books",
        "shop1:catalog:log",
        "shop1:catalog:rev",
        "shop1:catalog:withdrawn",
    ]


def test_outage_raises_state_unavailable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    url = server.url
    server.stop()

    async def main() -> None:
        state = RedisState(url, socket_timeout_s=0.2)
        cat = open_catalog(state, tmp_path / "unused")
        with pytest.raises(StateUnavailable):
            await cat.append([CatalogChange("withdraw", "b1")])
        with pytest.raises(StateUnavailable):
            await cat.state()
        await state.close()

    asyncio.run(main())
