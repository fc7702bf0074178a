"""The gauges an operator's dashboard and alerts read (docs/operations.md), refreshed by each worker
every ``REPORT_S``: the served versions and their age, catalog coverage, whether Triton and the state store
answer, and Triton's own queue and compute times (runners/triton/stats.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from runners.platform.metrics import (
    COVERAGE,
    MODEL_AGE,
    MODEL_INFO,
    MODEL_MAX_AGE,
    MODEL_PROMOTION_AGE,
    STATE_ERRORS,
    STATE_UP,
    TRITON_UP,
)
from runners.triton.stats import TritonStats

if TYPE_CHECKING:
    from runners.serving.fleet import Fleet

log = logging.getLogger(__name__)
REPORT_S = 5.0


def promoted_ts(promoted_at: str | None, created: float) -> float:
    """Unix time of the last promotion (the store label's ISO time); when it was trained if never
    promoted or the label does not parse."""
    if promoted_at:
        try:
            return datetime.fromisoformat(promoted_at).timestamp()
        except ValueError:
            pass
    return created


class GaugeReporter:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.triton = TritonStats()
        self._info: set[tuple[str, str, str]] = set()  # label sets of folio_model_info set to 1

    async def run(self) -> None:
        while True:
            try:
                await self.report()
            except asyncio.CancelledError:
                raise
            except Exception:  # a gauge must never take the worker down
                log.exception("refreshing the operations gauges failed")
            await asyncio.sleep(REPORT_S)

    async def report(self) -> None:
        fleet, now = self.fleet, time.time()
        model = fleet.primary.model
        MODEL_AGE.set(now - model.created)
        MODEL_PROMOTION_AGE.set(now - promoted_ts(model.promoted_at, model.created))
        MODEL_MAX_AGE.set(fleet.settings.model_max_age_s)
        COVERAGE.set(fleet.primary.pipeline.coverage_ratio())
        self._report_versions()
        deployments = list(fleet.deployments.values())
        up = [d.ranking.breaker.state == "closed" and await d.ranking.triton_ready(1.0) for d in deployments]
        TRITON_UP.set(float(all(up)))
        reachable = await fleet.state.ping()
        STATE_UP.set(float(reachable))
        if not reachable:
            STATE_ERRORS.labels(op="ping").inc()
        urls = {s.metrics_url for d in deployments if (s := d.ranking.server) is not None}
        self.triton.forget_except(urls)
        for url in urls:
            try:
                await self.triton.scrape(url)
            except OSError as exc:  # restarting, or gone: the next scrape catches up
                log.debug("scraping %s failed: %s", url, exc)

    def _report_versions(self) -> None:
        fleet = self.fleet
        now = {(v.name, fleet.deployments[v.model].tag, str(v.precision)) for v in fleet.config.variants}
        for variant, version, precision in self._info - now:  # multiprocess gauges cannot be removed
            MODEL_INFO.labels(variant=variant, model_version=version, precision=precision).set(0)
        for variant, version, precision in now:
            MODEL_INFO.labels(variant=variant, model_version=version, precision=precision).set(1)
        self._info = now
