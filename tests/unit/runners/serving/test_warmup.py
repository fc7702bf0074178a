"""runners/serving/warmup.py: who is warmed, within which bounds, under which keys, and that a warming
that fails never fails the deploy. The pipeline is the real one over the version trained on the synthetic
catalog, with the in-process state store; ranking scores in process and reports no fallback (as a
healthy Triton would)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from models import registry
from runners.http.admission import LoopLag
from runners.http.schemas import PER_REQUEST_FIELDS, RecommendRequest
from runners.platform.metrics import CACHE
from runners.platform.settings import Settings
from runners.serving import warmup
from runners.serving.fleet import Fleet
from runners.serving.variants import PRODUCTION, Variant
from runners.serving.warmup import WarmReport, most_active, warm_deployments
from runners.stages import served_model
from runners.stages.pipeline import CachedResult, Recommender
from runners.stages.ranking import RankResult
from runners.stages.served_model import ServedModel
from runners.state.catalog import LocalCatalog
from runners.state.local import LocalState
from runners.state.protocol import Event, StateUnavailable
from tests.unit.runners.stages.test_pipeline_reads import InProcessRanking

DEFAULT = Variant(name="default", precision="int8", share=1.0)
TS = 1.8e9


@pytest.fixture(scope="module")
def model(model_tag: str) -> ServedModel:
    return served_model.load(registry.get(model_tag))


def by_history(model: ServedModel) -> list[str]:
    hist = model.train_histories
    return sorted(hist, key=lambda u: -len(hist[u]))


class Rig:
    """A pipeline over ``model`` with a fresh in-process state store, as a Deployment of spec
    "production"."""

    def __init__(self, model: ServedModel, tmp: Path, ranking: Any = None, **settings: Any) -> None:
        self.settings = Settings(state_dir=tmp, cache_ttl_s=60, **settings)
        self.state = LocalState(tmp / "journal.jsonl")
        self.ranking = ranking or InProcessRanking(model.ranker, triton_url=None, manage_triton=False)
        self.pipeline = Recommender(self.settings, model, self.state, self.ranking)
        self.deployment = SimpleNamespace(
            model=model, pipeline=self.pipeline, ranking=self.ranking, tag=model.tag
        )

    async def warm(self, allowed: Callable[[], bool] = lambda: True) -> WarmReport:
        reports = await warm_deployments(
            {PRODUCTION: self.deployment},  # type: ignore[dict-item]
            lambda user: DEFAULT,
            self.state,  # type: ignore[arg-type]
            self.settings,
            allowed,
        )
        assert len(reports) == 1
        return reports[0]

    async def first_request(self, user: str) -> Any:
        return await self.pipeline.recommend(RecommendRequest(user_id=user, k=10), "int8", "default", "r1")


def run(model: ServedModel, tmp: Path, body: Callable[[Rig], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        rig = Rig(model, tmp, **kw)
        await rig.ranking.start()
        try:
            await body(rig)
        finally:
            await rig.ranking.close()
            await rig.state.close()

    asyncio.run(main())


def lookups() -> float:
    return sum(CACHE.labels(level=lv, outcome=o)._value.get() for lv in ("l1", "l2") for o in ("hit", "miss"))


# ---------------------------------------------------------------------------------------- who


def test_recent_senders_come_first_then_training_users_by_history_size(model: ServedModel) -> None:
    heavy = by_history(model)
    recent = {"new-reader": 2, heavy[-1]: 7}  # a user seen only in feedback, and a light training reader
    picked = most_active(model, recent, lambda u: ("int8", "A"), 5)
    assert [u for u, _, _ in picked] == [heavy[-1], "new-reader", *heavy[:3]]
    assert all((p, v) == ("int8", "A") for _, p, v in picked)
    assert len(most_active(model, {}, lambda u: ("int8", "A"), 10**6)) == len(heavy)  # each user once


def test_only_the_users_this_deployment_serves_are_picked(model: ServedModel) -> None:
    heavy = by_history(model)
    odd = set(heavy[1::2])
    picked = most_active(model, {}, lambda u: ("fp16", "B") if u in odd else None, 4)
    assert [u for u, _, _ in picked] == heavy[1:9:2]
    assert {(p, v) for _, p, v in picked} == {("fp16", "B")}


# ------------------------------------------------------------------------------ keys and bounds


def test_a_warmed_users_first_request_is_a_cache_hit_with_the_computed_answer(
    model: ServedModel, tmp_path: Path
) -> None:
    heavy = by_history(model)

    async def body(rig: Rig) -> None:
        before = lookups()
        report = await rig.warm()
        assert (report.result, report.warmed, report.skipped) == ("complete", 3, 0)
        assert lookups() == before  # warming is no cache lookup: the hit rate counts requests only
        for user in heavy[:3]:
            hit = await rig.first_request(user)
            assert isinstance(hit, CachedResult) and hit.variant == "default"
            fresh = await rig.pipeline.compute(RecommendRequest(user_id=user), "int8", "default", "x")
            assert hit.body == fresh.model_dump_json(exclude=PER_REQUEST_FIELDS)
        assert not isinstance(await rig.first_request(heavy[3]), CachedResult)  # beyond FOLIO_WARM_USERS

    run(model, tmp_path, body, warm_users=3)


def test_feedback_senders_are_warmed_and_forgotten_users_skipped(model: ServedModel, tmp_path: Path) -> None:
    heavy = by_history(model)
    light = heavy[-1]

    async def body(rig: Rig) -> None:
        item = model.catalog[0]["item_id"]
        await rig.state.append_events([Event(light, item, "click", None, TS)], [1.0])
        await rig.state.forget(heavy[0])
        report = await rig.warm()
        assert (report.warmed, report.skipped) == (
            2,
            1,
        )  # light (recent feedback), heavy[1]; heavy[0] forgotten
        assert isinstance(await rig.first_request(light), CachedResult)
        assert isinstance(await rig.first_request(heavy[1]), CachedResult)
        assert not isinstance(await rig.first_request(heavy[0]), CachedResult)

    run(model, tmp_path, body, warm_users=3)


def test_the_budget_ends_it(model: ServedModel, tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        report = await rig.warm()
        assert report.result == "budget" and 0 < report.warmed < len(model.train_histories)
        assert report.seconds < rig.settings.warm_budget_s + 0.5

    # a budget shorter than warming every user takes (each compute is a few ms)
    run(model, tmp_path, body, warm_users=100_000, warm_budget_s=0.05)


def test_it_waits_while_the_worker_is_busy_and_goes_on_when_it_is_not(
    model: ServedModel, tmp_path: Path
) -> None:
    async def body(rig: Rig) -> None:
        start = time.monotonic()
        report = await rig.warm(allowed=lambda: False)  # busy all along: nothing done, within the budget
        assert (report.result, report.warmed) == ("budget", 0)
        assert 0.25 <= time.monotonic() - start < 1.0
        busy_until = time.monotonic() + 0.2
        report = await rig.warm(allowed=lambda: time.monotonic() > busy_until)
        assert (report.result, report.warmed) == ("complete", 2)

    run(model, tmp_path, body, warm_users=2, warm_budget_s=0.3)


def test_it_leaves_the_event_loop_free_half_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each user's compute holds the loop (here 30 ms); a sleep as long follows, so the loop is never late
    on every wake, which admission would shed requests for (runners/http/admission.py LoopLag)."""

    async def blocking(*_: Any) -> bool:
        time.sleep(0.03)
        return True

    monkeypatch.setattr(warmup, "warm_user", blocking)

    async def main() -> tuple[float, float, WarmReport]:
        lag = LoopLag()
        monitor = asyncio.create_task(lag.run())
        worst = 0.0

        async def watch() -> None:
            nonlocal worst
            while True:
                worst = max(worst, lag.now())
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.02)
        start = time.monotonic()
        pipeline = SimpleNamespace(model=SimpleNamespace(tag="folio:x"))
        targets = [(f"u{i}", "int8", "default") for i in range(20)]
        report = await warmup.warm_pipeline(pipeline, targets, time.monotonic() + 10, lambda: True)  # type: ignore[arg-type]
        took = time.monotonic() - start
        monitor.cancel()
        watcher.cancel()
        return worst, took, report

    worst, took, report = asyncio.run(main())
    assert report.warmed == 20 and took >= 20 * 0.03 / warmup.LOOP_SHARE * 0.9
    assert worst < 0.01, f"the loop ran {worst * 1e3:.1f} ms late on every wake"


@pytest.mark.parametrize(("settings", "why"), [({"warm_users": 0}, "off"), ({"cache_ttl_s": 0}, "cache off")])
def test_off(model: ServedModel, tmp_path: Path, settings: dict[str, Any], why: str) -> None:
    async def body(rig: Rig) -> None:
        rig.settings = rig.settings.model_copy(update=settings)
        assert await warm_deployments({}, lambda u: DEFAULT, rig.state, rig.settings, lambda: True) == [], why

    run(model, tmp_path, body)


# ---------------------------------------------------------------------------------- failures


class FallingBack(InProcessRanking):
    async def rank(
        self, item_ids: Any, user_row: Any, feats: Any, precision: str | None = None
    ) -> RankResult:
        return RankResult(None, "popularity", "int8")


class Broken(InProcessRanking):
    async def rank(
        self, item_ids: Any, user_row: Any, feats: Any, precision: str | None = None
    ) -> RankResult:
        raise RuntimeError("boom")


def test_a_fallback_stops_it_and_an_error_fails_it_without_raising(
    model: ServedModel, tmp_path: Path
) -> None:
    async def stopped(rig: Rig) -> None:
        report = await rig.warm()
        assert (report.result, report.warmed) == ("stopped", 0) and "popularity" in report.detail

    async def failed(rig: Rig) -> None:
        report = await rig.warm()
        assert (report.result, report.warmed) == ("failed", 0) and "boom" in report.detail

    run(
        model,
        tmp_path / "a",
        stopped,
        ranking=FallingBack(model.ranker, triton_url=None, manage_triton=False),
    )
    run(model, tmp_path / "b", failed, ranking=Broken(model.ranker, triton_url=None, manage_triton=False))


def test_an_unreachable_store_warms_training_users_or_stops(
    model: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(*_: Any) -> Any:
        raise StateUnavailable("redis at redis://x: down")

    async def no_recent(rig: Rig) -> None:
        monkeypatch.setattr(rig.state, "active_users", unavailable)
        report = await rig.warm()
        assert (report.result, report.warmed) == ("complete", 2)  # from the training histories

    async def no_snapshot(rig: Rig) -> None:
        monkeypatch.setattr(rig.state, "snapshot", unavailable)
        report = await rig.warm()
        assert (report.result, report.warmed) == ("stopped", 0) and "unreachable" in report.detail

    run(model, tmp_path / "a", no_recent, warm_users=2)
    run(model, tmp_path / "b", no_snapshot, warm_users=2)


# ------------------------------------------------------------------------------ in the fleet


class Ready:
    async def ready(self) -> bool:
        return True

    async def close(self, stop_timeout_s: float | None = None) -> None:
        pass


def fleet_of(rig: Rig, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    """A Fleet on the rig's state whose deploy() gives the rig's deployment."""

    async def deployed(*_: Any, **__: Any) -> Any:
        return rig.deployment

    monkeypatch.setattr("runners.serving.fleet.deploy", deployed)
    return Fleet(rig.settings, rig.state, LocalCatalog(tmp / "catalog.jsonl"))  # type: ignore[arg-type]


def test_start_up_is_warm_before_it_returns(
    model: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heavy = by_history(model)

    async def body(rig: Rig) -> None:
        fleet = fleet_of(rig, tmp_path, monkeypatch)
        await fleet.start()  # the service's on_startup: nothing is served before it returns
        try:
            assert isinstance(await rig.first_request(heavy[0]), CachedResult)
            assert not isinstance(await rig.first_request(heavy[2]), CachedResult)
        finally:
            await fleet.close()

    run(model, tmp_path, body, warm_users=2, model_watch_s=0)


def test_a_failed_warming_still_swaps_the_promoted_version_in(
    model: ServedModel, model_tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = []
    real = warmup.warm_pipeline

    async def counted(*args: Any) -> WarmReport:
        runs.append(report := await real(*args))
        return report

    monkeypatch.setattr(warmup, "warm_pipeline", counted)

    async def body(rig: Rig) -> None:
        fleet = fleet_of(rig, tmp_path, monkeypatch)
        fleet.deployments[PRODUCTION] = SimpleNamespace(tag="folio:old", ranking=Ready())  # type: ignore[assignment]
        try:
            assert await fleet.reload(model_tag) == (model.tag, "folio:old")
            assert [r.result for r in runs] == ["failed"]  # it ran, failed, and the version was swapped in
            assert fleet.deployments[PRODUCTION] is rig.deployment
        finally:
            await fleet.close()

    run(model, tmp_path, body, ranking=Broken(model.ranker, triton_url=None, manage_triton=False))
