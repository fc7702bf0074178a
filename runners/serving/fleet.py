"""The deployments a worker serves, and which one answers which user.

One ``Deployment`` per distinct model spec of the variants config (``production``, or a pinned tag).
Requests are routed by the user's A/B variant (runners/serving/variants.py); shadow variants score a sample of
requests in the background. The ``production`` spec follows the model store: a watcher (and the admin
reload endpoint) deploys a newly promoted version next to the current one and swaps it in only once
it has passed its checks; a refused version is logged and the current one keeps serving.

An /admin/reload on one worker is applied by every worker: the worker that took it records the version
(with the production version it overrides) in the shared state store, and every watcher deploys it on
its next poll. A reload to the version already served is a no-op (no new deployment).

Catalog changes (runners/state/catalog.py) are followed the same way, faster: every ``catalog_poll_s`` each
worker reads the catalog revision (one Redis GET) and, when it moved, the catalog state, which every
deployment (a newly deployed one too) then serves. The worker that made a change applies it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import bentoml

from models import registry
from models.version import CHECKSUMS, PRECISIONS
from runners.http.schemas import (
    FeedbackEvent,
    FeedbackResponse,
    ForgetResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    TrendingResponse,
)
from runners.platform.metrics import (
    CATALOG_REVISION,
    CATALOG_WITHDRAWN,
    MODEL_RELOADS,
    RECOMMENDATIONS,
    SHADOW_AGREEMENT,
    STATE_ERRORS,
    VARIANT_IMPRESSIONS,
    VARIANT_REQUESTS,
    VARIANT_SECONDS,
    preset_series,
)
from runners.platform.settings import Settings
from runners.serving.deployment import Deployment, deploy, retire
from runners.serving.gauges import GaugeReporter
from runners.serving.variants import PRODUCTION, Assigner, Variant, VariantConfig
from runners.serving.warmup import warm_deployments
from runners.stages import served_model
from runners.stages.pipeline import CachedResult, UnknownItem
from runners.state.catalog import CatalogChange, CatalogLog, CatalogState
from runners.state.protocol import Event, StateStore, StateUnavailable

log = logging.getLogger(__name__)
RELOAD_KEY = "admin_reload"  # shared: {"tag": version asked for, "production": the version it overrides}


class UnknownVariant(ValueError):
    pass


class FeedbackRateLimited(Exception):
    """A user of the feedback sent more than their budget: nothing recorded."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"retry in {wait_s:.1f} s")
        self.wait_s = wait_s


def integrity(metadata: dict[str, Any]) -> str:
    """What /info says of a served version's artifacts (checked against their checksums at deploy)."""
    return "sha256 verified" if CHECKSUMS in metadata else "unverified: saved before checksums existed"


def primary_tag(settings: Settings) -> str:
    """The version the first served variant uses: what `bentoml build` packs into the Bento. With
    FOLIO_MODEL_STORE, production is read from the shared store once the service is built; the version
    declared here is then the newest of BentoML's own store (inside a Bento: the one it packed)."""
    spec = VariantConfig.parse(settings.variants, settings.precision, settings.model_tag).served[0].model
    if spec == PRODUCTION and os.environ.get(registry.MODEL_STORE_ENV) and (packed := registry.newest()):
        return str(packed.tag)
    return served_model.served_tag(None if spec == PRODUCTION else spec)


class Fleet:
    def __init__(
        self, settings: Settings, state: StateStore, catalog: CatalogLog, packed: bentoml.Model | None = None
    ) -> None:
        """``packed``: the version the service declared at class scope (what `bentoml build` packs), which
        the first served variant deploys; None: resolve it from the store (a shared FOLIO_MODEL_STORE)."""
        self.settings, self.state, self.catalog, self.packed = settings, state, catalog, packed
        self.catalog_state = CatalogState()
        self.config = VariantConfig.parse(settings.variants, settings.precision, settings.model_tag)
        self.assigner = Assigner(self.config)
        self.deployments: dict[str, Deployment] = {}
        self.last_reload_error: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._catalog_follower: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self.background_allowed: Callable[[], bool] = lambda: True  # the service: the worker is not busy

    @property
    def primary(self) -> Deployment:
        """The deployment of the first served variant: /similar, /trending, /info use it."""
        return self.deployments[self.config.served[0].model]

    async def start(self) -> None:
        primary = self.config.served[0].model
        for spec in dict.fromkeys(v.model for v in self.config.variants):
            tag = None if spec == PRODUCTION else spec
            stored = self.packed if spec == primary else None
            self.deployments[spec] = await deploy(
                self.settings, self.state, tag, require_triton=False, stored=stored
            )
            log.info("serving %s as %r", self.deployments[spec].tag, spec)
        try:
            self.apply_catalog(await self.catalog.state())
        except StateUnavailable:
            log.warning("catalog changes unknown at start-up (state store unreachable): following them")
        await self._warm(dict(self.deployments))  # before it is ready; after the catalog (part of the keys)
        if PRODUCTION in self.deployments and self.settings.model_watch_s > 0:
            self._watcher = asyncio.create_task(self._watch())
        self._catalog_follower = asyncio.create_task(self._follow_catalog())
        preset_series([v.name for v in self.config.variants])
        self._gauges = asyncio.create_task(GaugeReporter(self).run())

    async def close(self) -> None:
        for task in (self._watcher, self._catalog_follower, self._gauges):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # retiring deployments close their Triton
        for dep in self.deployments.values():  # the worker's last hook: uvicorn answered every request
            await dep.ranking.close(stop_timeout_s=0)

    async def ready(self) -> bool:
        return bool(self.deployments) and all([await d.ranking.ready() for d in self.deployments.values()])

    # ---------------------------------------------------------------- routing
    def route(self, user_id: str, requested: str | None) -> tuple[Variant, str]:
        """(variant, precision) for a request; ``requested`` is a precision or a variant name."""
        variant = self.assigner.assign(user_id)
        if requested is None:
            return variant, variant.precision
        if requested in PRECISIONS:
            return variant, requested
        named = self.config.by_name(requested)
        if named is None:
            names = ", ".join([*PRECISIONS, *(v.name for v in self.config.variants)])
            raise UnknownVariant(f"variant must be one of {names}, not {requested!r}")
        return named, named.precision

    # ---------------------------------------------------------------- endpoints
    async def recommend(self, req: RecommendRequest, request_id: str) -> RecommendResponse | CachedResult:
        """The user's variant's answer: computed, or a cache hit kept as its stored JSON (shadows score
        misses only)."""
        variant, precision = self.route(req.user_id, req.variant)
        start = time.perf_counter()
        pipeline = self.deployments[variant.model].pipeline
        result = await pipeline.recommend(req, precision, variant.name, request_id)
        VARIANT_SECONDS.labels(variant=variant.name).observe(time.perf_counter() - start)
        VARIANT_REQUESTS.labels(variant=variant.name).inc()
        if isinstance(result, CachedResult):
            RECOMMENDATIONS.labels(variant=variant.name, source="cache").inc()
            VARIANT_IMPRESSIONS.labels(variant=variant.name).inc(result.n_items)
            return result
        source = "cold_start" if result.cold_start else "ranked" if result.fallback == "none" else "fallback"
        RECOMMENDATIONS.labels(variant=variant.name, source=source).inc()
        VARIANT_IMPRESSIONS.labels(variant=variant.name).inc(len(result.items))
        for shadow in self.config.shadows if self.background_allowed() else ():
            if self.assigner.sampled_for_shadow(request_id):
                self._background(self._shadow(shadow, req, result))
        return result

    def similar(self, item_id: str, k: int, request_id: str) -> SimilarResponse:
        """Nearest books in the primary deployment (raises UnknownItem)."""
        items = self.primary.pipeline.similar(item_id, k)
        return SimilarResponse(
            item_id=item_id, items=items, model_version=self.primary.tag, request_id=request_id
        )

    async def trending(self, k: int, genre: str | None, request_id: str) -> TrendingResponse:
        items = await self.primary.pipeline.trending(k, genre)
        return TrendingResponse(items=items, model_version=self.primary.tag, request_id=request_id)

    async def feedback(self, events: Sequence[FeedbackEvent], request_id: str) -> FeedbackResponse:
        """Validate each event against the catalog of the deployment serving its user, charge the users'
        budgets, then record all (raises UnknownItem, WithdrawnItem, InvalidEvent, FeedbackRateLimited or
        StateUnavailable, with nothing written)."""
        variants = [self.assigner.assign(e.user_id) for e in events]
        records: list[Event] = []
        for model in dict.fromkeys(v.model for v in variants):
            mine = [(e, v.name) for e, v in zip(events, variants, strict=True) if v.model == model]
            pipeline = self.deployments[model].pipeline
            records += pipeline.feedback_events([e for e, _ in mine], [name for _, name in mine])
        primary = self.primary.pipeline
        wait = await primary.user_rate_limit(records)
        if wait > 0:
            raise FeedbackRateLimited(wait)
        accepted = await primary.record(records)
        return FeedbackResponse(
            accepted=accepted,
            model_version=self.primary.tag,
            durable="redis" if self.state.kind == "redis" else "journal",
            request_id=request_id,
        )

    async def forget(self, user_id: str, request_id: str) -> ForgetResponse:
        """Delete the user from the state store (raises StateUnavailable with nothing deleted), then from
        every deployment's in-process cache."""
        await self.state.forget(user_id)
        for dep in self.deployments.values():
            dep.pipeline.cache.l1.drop_user(user_id)
        log.info("forgot a user (right to be forgotten)")
        return ForgetResponse(
            user_id=user_id, forgotten=True, model_version=self.primary.tag, request_id=request_id
        )

    async def _shadow(self, shadow: Variant, req: RecommendRequest, served: RecommendResponse) -> None:
        try:
            pipeline = self.deployments[shadow.model].pipeline
            theirs = await pipeline.compute(req, shadow.precision, shadow.name, "shadow")
        except Exception:  # a shadow never affects serving
            log.exception("shadow variant %s failed", shadow.name)
            return
        ours = {i.item_id for i in served.items}
        agree = len(ours & {i.item_id for i in theirs.items}) / max(len(ours), 1)
        SHADOW_AGREEMENT.labels(variant=shadow.name).observe(agree)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warm(self, deployments: dict[str, Deployment], *, unserved: bool = False) -> None:
        """Precompute the most active users' answers into these deployments' caches (never raises:
        runners/serving/warmup.py). ``unserved``: not swapped in yet, so a shutdown closes them."""
        try:
            await warm_deployments(
                deployments, self.assigner.assign, self.state, self.settings, self.background_allowed
            )
        except asyncio.CancelledError:
            for dep in deployments.values() if unserved else ():
                await dep.ranking.close(stop_timeout_s=0)
            raise

    # -------------------------------------------------------------- lifecycle
    async def admin_reload(self, tag: str | None) -> tuple[str, str]:
        """/admin/reload: ``reload`` here, then recorded for every other worker's watcher."""
        new, previous = await self.reload(tag)
        prod = await asyncio.to_thread(registry.production_tag)
        record = json.dumps({"tag": new, "production": prod})
        try:
            await self.state.set_shared(RELOAD_KEY, record)
        except StateUnavailable:
            log.warning("reload to %s applied to this worker only: the state store is unreachable", new)
        return new, previous

    async def reload(self, tag: str | None = None) -> tuple[str, str]:
        """Serve ``tag`` (default: the store's production version) for the ``production`` spec.
        Returns (new, previous); raises ModelLoadError (or StoreError) and keeps the current one."""
        if PRODUCTION not in self.deployments:
            raise LookupError("no variant follows production (FOLIO_MODEL_TAG or the variants pin versions)")
        async with self._lock:
            current = self.deployments[PRODUCTION]
            if tag is None:
                tag = await asyncio.to_thread(registry.production_tag) or current.tag
            else:  # the full tag, so that another spelling of the served version is a no-op
                tag = str((await asyncio.to_thread(registry.get, tag)).tag)
            if tag == current.tag:
                return tag, tag
            try:
                new = await deploy(self.settings, self.state, tag, require_triton=True)
            except Exception as exc:
                self.last_reload_error = f"{tag}: {exc}"
                MODEL_RELOADS.labels(outcome="refused").inc()
                log.error("refused to serve %s, still serving %s: %s", tag, current.tag, exc)
                raise
            new.pipeline.set_catalog(self.catalog_state)
            await self._warm({PRODUCTION: new}, unserved=True)  # before it takes traffic
            self.deployments[PRODUCTION] = new
            self.last_reload_error = None
            MODEL_RELOADS.labels(outcome="swapped").inc()
            log.info("now serving %s (was %s)", new.tag, current.tag)
            self._background(retire(current, grace_s=self.settings.triton_timeout_s * 4 + 5))
            return new.tag, current.tag

    async def _watch(self) -> None:
        """Follow promote / rollback: act when the store's production version changes, and follow an
        /admin/reload taken by another worker while the production version it overrode is still the
        production one (a refused version is not retried)."""
        seen = self.deployments[PRODUCTION].tag
        seen_reload: str | None = None
        while True:
            await asyncio.sleep(self.settings.model_watch_s)
            try:
                # stats each version's model.yaml, parses only changed ones: no GIL-long stall per poll
                prod_tag = await asyncio.to_thread(registry.production_tag)
                if prod_tag is not None and prod_tag != seen:
                    seen = prod_tag
                    await self.reload(seen)
                    with contextlib.suppress(StateUnavailable):  # an override ends with its production
                        await self.state.set_shared(RELOAD_KEY, "{}")
                shared = await self.state.get_shared(RELOAD_KEY)
                if shared is not None and shared != seen_reload:
                    seen_reload = shared
                    asked = json.loads(shared)
                    if asked.get("production") == prod_tag:
                        await self.reload(str(asked["tag"]))
            except asyncio.CancelledError:
                raise
            except Exception:  # refusals are logged in reload(); keep watching
                continue

    # ---------------------------------------------------------------- catalog
    def apply_catalog(self, state: CatalogState) -> None:
        """Serve ``state`` in every deployment. The follower applies whatever differs (a store that
        lost its catalog goes back to revision 0); a read older than what a local change applied is
        corrected by its next poll."""
        self.catalog_state = state
        for dep in self.deployments.values():
            dep.pipeline.set_catalog(state)
        CATALOG_REVISION.set(state.revision)
        CATALOG_WITHDRAWN.set(len(state.withdrawn))

    async def change_catalog(self, changes: list[CatalogChange]) -> CatalogState:
        """Write ``changes`` (all or nothing) and serve them here at once. Raises UnknownItem (nothing
        written) when a withdrawal or restore names a book no served version knows nor was added."""
        self.apply_catalog(await self.catalog.state())  # books another worker added a moment ago count
        known = set(self.catalog_state.books) | {c.item_id for c in changes if c.op == "upsert"}
        unknown = [
            c.item_id
            for c in changes
            if c.op != "upsert"
            and c.item_id not in known
            and not any(c.item_id in d.model.position for d in self.deployments.values())
        ]
        if unknown:
            shown = ", ".join(repr(u) for u in dict.fromkeys(unknown[:5]))
            raise UnknownItem(
                f"unknown item_id {shown}: in no served version's catalog nor added; nothing changed"
            )
        await self.catalog.append(changes)
        state = await self.catalog.state()  # at least this change's revision
        self.apply_catalog(state)
        return state

    async def _follow_catalog(self) -> None:
        """Serve catalog changes made by other workers within ``catalog_poll_s`` (plus one read)."""
        while True:
            await asyncio.sleep(self.settings.catalog_poll_s)
            try:
                if await self.catalog.revision() != self.catalog_state.revision:
                    self.apply_catalog(await self.catalog.state())
            except asyncio.CancelledError:
                raise
            except Exception:  # an unreachable store: keep serving what we have, keep following
                STATE_ERRORS.labels(op="catalog").inc()
                await asyncio.sleep(1.0)

    def freshness(self) -> dict[str, Any]:
        """How old the primary version is, against the freshness budget (docs/operations.md)."""
        model = self.primary.model
        age = time.time() - model.created
        return {
            "trained_at": datetime.fromtimestamp(model.created, UTC).isoformat(timespec="seconds"),
            "promoted_at": model.promoted_at,
            "age_s": round(age, 1),
            "budget_s": self.settings.model_max_age_s,
            "stale": age > self.settings.model_max_age_s,
        }

    def info(self) -> dict[str, Any]:
        return {
            "model_freshness": self.freshness(),
            "variants": {
                v.name: {
                    "model_version": self.deployments[v.model].tag,
                    "integrity": integrity(self.deployments[v.model].model.metadata),
                    "precision": v.precision,
                    "share": v.share,
                    "shadow": v.shadow,
                }
                for v in self.config.variants
            },
            "last_reload_error": self.last_reload_error,
            "catalog": {
                "revision": self.catalog_state.revision,
                "withdrawn": len(self.catalog_state.withdrawn),
                "added_or_corrected": len(self.catalog_state.books),
                "log": self.catalog.kind,
            },
        }
