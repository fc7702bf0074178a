"""The catalog-log contract: what every CatalogLog backend must do (local journal, Redis), in one place."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import pytest

from runners.state.catalog import (
    MAX_CHANGES,
    Book,
    CatalogChange,
    CatalogLog,
    CatalogState,
)

DUNE = Book("b1", "Dune", "Frank Herbert", ("science-fiction", "classics"), 1965, "Spice.")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Backend(Protocol):
    async def make(self) -> CatalogLog: ...


class CatalogContract:
    """Behaviour every catalog log must have; subclasses give a ``backend`` fixture."""

    def test_changes_apply_in_order_and_number_revisions(self, backend: Backend) -> None:
        async def main() -> tuple[int, CatalogState, list[Any]]:
            cat = await backend.make()
            try:
                assert await cat.revision() == 0 and (await cat.state()).withdrawn == frozenset()
                await cat.append([CatalogChange("upsert", "b1", DUNE), CatalogChange("withdraw", "b1")])
                rev = await cat.append([CatalogChange("withdraw", "old"), CatalogChange("restore", "b1")])
                return rev, await cat.state(), await cat.changes(after=2)
            finally:
                await cat.close()

        rev, state, later = run(main())
        assert rev == 4 and state.revision == 4
        assert state.withdrawn == frozenset({"old"}) and state.books == {"b1": DUNE}
        assert [(r, c.op, c.item_id) for r, c in later] == [(3, "withdraw", "old"), (4, "restore", "b1")]

    def test_an_upsert_replaces_the_record(self, backend: Backend) -> None:
        async def main() -> CatalogState:
            cat = await backend.make()
            try:
                await cat.append([CatalogChange("upsert", "b1", DUNE)])
                await cat.append([CatalogChange("upsert", "b1", Book("b1", "Dune (corrected)"))])
                return await cat.state()
            finally:
                await cat.close()

        assert run(main()).books["b1"].title == "Dune (corrected)"

    def test_an_invalid_batch_writes_nothing(self, backend: Backend) -> None:
        async def main() -> tuple[int, int]:
            cat = await backend.make()
            try:
                with pytest.raises(ValueError, match="changes at a time"):
                    await cat.append([CatalogChange("withdraw", "x")] * (MAX_CHANGES + 1))
                with pytest.raises(ValueError, match="changes at a time"):
                    await cat.append([])
                return await cat.revision(), len(await cat.changes())
            finally:
                await cat.close()

        assert run(main()) == (0, 0)

    def test_a_second_client_sees_the_same_state(self, backend: Backend) -> None:
        async def main() -> CatalogState:
            a = await backend.make()
            await a.append([CatalogChange("upsert", "b1", DUNE), CatalogChange("withdraw", "b1")])
            await a.close()
            b = await backend.make()  # a restart (local) or another worker (redis)
            try:
                return await b.state()
            finally:
                await b.close()

        state = run(main())
        assert state.revision == 2 and state.withdrawn == frozenset({"b1"}) and state.books == {"b1": DUNE}
