"""A deployment being retired when the worker shuts down still closes its ranking stage (and with it
its embedded tritonserver): a 2-worker reload test had left one running after shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from runners.platform.settings import Settings
from runners.serving.deployment import retire
from runners.serving.fleet import Fleet
from runners.state.catalog import LocalCatalog
from runners.state.local import LocalState


class FakeRanking:  # stands in for RankingStage: only close() is used by retire()
    def __init__(self) -> None:
        self.closed = 0
        self.stop_timeouts: list[float | None] = []

    async def close(self, stop_timeout_s: float | None = None) -> None:
        self.closed += 1
        self.stop_timeouts.append(stop_timeout_s)


def test_shutdown_during_the_grace_period_closes_the_retiring_deployment(tmp_path: Path) -> None:
    async def main() -> None:
        state = LocalState(tmp_path / "journal.jsonl")
        fleet = Fleet(
            Settings(state_dir=tmp_path, model_watch_s=0), state, LocalCatalog(tmp_path / "c.jsonl")
        )
        old = SimpleNamespace(ranking=FakeRanking(), tag="folio:old")
        fleet._background(retire(old, grace_s=3600))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await fleet.close()
        assert old.ranking.closed == 1
        assert old.ranking.stop_timeouts == [0]  # shutdown: nothing in flight, Triton is killed at once
        await state.close()

    asyncio.run(main())


def test_retire_closes_after_the_grace_period() -> None:
    old = SimpleNamespace(ranking=FakeRanking(), tag="folio:old")
    asyncio.run(retire(old, grace_s=0.01))  # type: ignore[arg-type]
    assert old.ranking.closed == 1 and old.ranking.stop_timeouts == [None]  # a graceful stop
