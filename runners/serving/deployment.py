"""Model versions in a running service: deploy, hot swap, retire.

A ``Deployment`` is one stored version ready to serve: the loaded artifacts, its ranking stage (its own
embedded tritonserver, or the external one) and the request pipeline over them. ``deploy`` refuses a
version that is not servable (missing artifact, failed parity, item counts that disagree, a ranker that
does not load on Triton or scores garbage) with ``ModelLoadError``; the caller keeps the current one.
Swapping is a reference assignment: requests in flight finish on the deployment they started with, and
the old one is closed after a grace period.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import bentoml

from models import registry, version
from runners.platform.memory import freeze_long_lived
from runners.platform.metrics import ranking_event
from runners.platform.settings import Settings
from runners.serving import parity_probe
from runners.stages import served_model
from runners.stages.pipeline import Recommender
from runners.stages.ranking import RankingStage
from runners.stages.served_model import ModelLoadError, ServedModel
from runners.state.protocol import StateStore
from runners.triton import reaper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    model: ServedModel
    ranking: RankingStage
    pipeline: Recommender

    @property
    def tag(self) -> str:
        return self.model.tag


async def deploy(
    settings: Settings,
    state: StateStore,
    tag: str | None,
    *,
    require_triton: bool,
    stored: bentoml.Model | None = None,
) -> Deployment:
    """Load, start and smoke-test ``stored`` (a version already resolved, e.g. the service's class-level
    model), else ``tag`` (None: production). Raises ModelLoadError when not servable."""
    if stored is None:
        stored = await asyncio.to_thread(served_model.resolve, tag)
    problems = await asyncio.to_thread(registry.servable_problems, stored)
    if problems:
        raise ModelLoadError(f"{stored.tag} is not servable: {'; '.join(problems)}")
    model = await asyncio.to_thread(served_model.load, stored)
    ranking = RankingStage(
        model.ranker,
        triton_url=settings.triton_url,
        default_precision=settings.precision,
        timeout_s=settings.triton_timeout_s,
        breaker_failures=settings.breaker_failures,
        breaker_reset_s=settings.breaker_reset_s,
        work_dir=settings.state_dir / reaper.work_dir_name(str(stored.tag.version)),
        on_event=ranking_event,
    )
    try:
        await ranking.start()
        await _smoke_test(ranking, model, require_triton)
    except Exception:
        await ranking.close()
        raise
    deployment = Deployment(model, ranking, Recommender(settings, model, state, ranking))
    freeze_long_lived()  # the loaded version is long-lived: out of the collector's reach
    return deployment


async def _smoke_test(ranking: RankingStage, model: ServedModel, require_triton: bool) -> None:
    """Triton loaded the rankers (when required), every precision ranks the probe set like FP32
    (runners/serving/parity_probe.py), and no artifact changed since it was saved."""
    if require_triton and ranking.mode == "embedded" and not await ranking.triton_ready(timeout_s=5.0):
        raise ModelLoadError(f"{model.tag}: tritonserver did not load its rankers")
    probes = await asyncio.to_thread(parity_probe.probe_set, model)
    if not probes:
        raise ModelLoadError(f"{model.tag}: no training user to probe the rankers with")
    reports = await parity_probe.measure(ranking, probes)
    for r in reports:
        log.info(
            "%s parity probe %s: top-%d agreement %.3f, score drift %.3f, scored by %s",
            model.tag,
            r.precision,
            parity_probe.TOP_K,
            r.agreement,
            r.score_drift,
            "triton" if r.fallback == "none" else r.fallback,
        )
    found = parity_probe.problems(reports, model.metadata.get("parity"), ranking.state()["url"])
    found += version.checksum_problems(model.path, model.metadata.get(version.CHECKSUMS)) or []
    if found:
        raise ModelLoadError(f"{model.tag}: {'; '.join(found)}")


async def retire(old: Deployment, grace_s: float) -> None:
    """Close a swapped-out deployment once the requests it was serving have had time to finish; at once
    when cancelled (shutdown: nothing is in flight any more), so its embedded tritonserver never outlives
    the worker."""
    try:
        await asyncio.sleep(grace_s)
    except asyncio.CancelledError:
        await old.ranking.close(stop_timeout_s=0)
        raise
    await old.ranking.close()
    log.info("retired %s", old.tag)
