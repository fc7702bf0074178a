"""Folio's BentoML entry service: the HTTP API, wiring the stages of runners/ together.

Start-up loads the served model version (``FOLIO_MODEL_TAG`` or the store's production version),
opens the state store (Redis with ``FOLIO_REDIS_URL``, else in-process + a local journal) and the
ranking stage (the embedded tritonserver, or ``FOLIO_TRITON_URL``). Endpoints only translate HTTP to
``runners.stages.pipeline.Recommender`` calls and errors to 4xx/503 with a message saying what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import bentoml
from starlette.responses import JSONResponse, Response

from models import registry
from runners.http.admission import Admission, AdmissionMiddleware
from runners.http.guard import GuardMiddleware, Runtime
from runners.http.logs import REQUEST_ID, configure_logging
from runners.http.schemas import (
    CatalogBooks,
    CatalogItems,
    CatalogResponse,
    FeedbackBatch,
    FeedbackEvent,
    FeedbackResponse,
    ForgetRequest,
    ForgetResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    SimilarRequest,
    SimilarResponse,
    TrendingRequest,
    TrendingResponse,
)
from runners.platform import bentoml_patch, tracing
from runners.platform.bento_image import bento_image
from runners.platform.drain import Drain
from runners.platform.metrics import REQUEST_BUCKETS_S
from runners.platform.settings import load_settings
from runners.platform.threads import limit_numeric_threads
from runners.serving.fleet import FeedbackRateLimited, Fleet, UnknownVariant, primary_tag
from runners.stages.pipeline import CachedResult, InvalidEvent, UnknownItem, WithdrawnItem
from runners.stages.served_model import ModelLoadError
from runners.state.backends import open_state
from runners.state.catalog import Book, CatalogChange, CatalogState, open_catalog
from runners.state.protocol import StateBusy, StateUnavailable
from runners.state.redis_state import RedisState

log = logging.getLogger("runners.service")
RUNTIME = Runtime()


def cached_body(hit: CachedResult, request_id: str) -> bytes:
    """A cached /recommend answer as sent: its per-request fields (schemas.PER_REQUEST_FIELDS) spliced
    in front of the stored JSON, which is neither parsed nor re-validated."""
    head = json.dumps({"cached": True, "request_id": request_id, "variant": hit.variant})
    return f"{head[:-1]},{hit.body[1:]}".encode()


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": message, "request_id": REQUEST_ID.get()}, status_code=status, headers=headers
    )


def state_refusal(exc: StateUnavailable, outcome: str) -> JSONResponse:
    """503 when the state store could not take a write: busy (reachable, no pooled connection came free in
    time: StateBusy) or unreachable; ``outcome`` says what was not done."""
    if isinstance(exc, StateBusy):
        return problem(503, f"the state store is busy: {outcome}, retry shortly", {"Retry-After": "1"})
    return problem(503, f"the state store is unreachable: {outcome}, retry later")


class FolioService(bentoml_patch.PatchedService[Any]):
    """The BentoML fixes, installed as the worker builds the app, and admission control wrapped around
    that whole app (runners/http/admission.py)."""

    def to_asgi(self, is_main: bool = True) -> Any:
        return AdmissionMiddleware(super().to_asgi(is_main), lambda: RUNTIME.admission)


@bentoml.service(
    name="folio",
    image=bento_image(Path(__file__).with_name("pyproject.toml")),
    traffic={"timeout": 30},
    workers=load_settings().workers,
    tracing=tracing.bentoml_config(load_settings()),  # FOLIO_TRACING_*; {}: off
    metrics={"duration": {"buckets": list(REQUEST_BUCKETS_S)}},  # 0.2: the latency SLO's bound
    service_class=FolioService,
)
class Recommender:
    # At class scope so `bentoml build` packs the served version (the first A/B variant's; by default
    # FOLIO_MODEL_TAG, else production).
    stored_model = bentoml.models.BentoModel(primary_tag(load_settings()))

    def __init__(self) -> None:
        configure_logging()
        # The class-level version is the one the first variant serves, unless FOLIO_MODEL_STORE names a
        # shared store whose production version this service follows instead (deploy/README.md).
        packed = None if os.environ.get(registry.MODEL_STORE_ENV) else self.stored_model
        registry.use_configured_store()  # FOLIO_MODEL_STORE: versions come from a shared store from here on
        self.settings = load_settings()
        tracing.configure(self.settings)  # Folio's stage spans join BentoML's request spans
        limit_numeric_threads(self.settings.numeric_threads)
        self.state = open_state(
            self.settings.redis_url,
            self.settings.state_dir / "journal.jsonl",
            max_history=self.settings.max_history,
            half_life_s=self.settings.trending_half_life_s,
            hash_key=key.get_secret_value().encode() if (key := self.settings.user_hash_key) else None,
            socket_timeout_s=self.settings.state_timeout_s,
            max_connections=self.settings.state_pool_size or 2 * self.settings.max_in_flight + 16,
            breaker_failures=self.settings.state_breaker_failures,
            breaker_reset_s=self.settings.state_breaker_reset_s,
            compact_bytes=self.settings.journal_compact_bytes,
            keep_unexported=self.settings.journal_keep_unexported,
        )
        self.catalog = open_catalog(self.state, self.settings.state_dir / "catalog.jsonl")
        self.fleet = Fleet(self.settings, self.state, self.catalog, packed)
        self.drain = Drain(self.settings.drain_s)
        RUNTIME.settings, RUNTIME.state = self.settings, self.state
        RUNTIME.digests = [d.encode() for d in self.settings.api_keys]
        RUNTIME.admission = Admission(self.settings.max_in_flight, self.settings.shed_loop_lag_s)
        self.fleet.background_allowed = RUNTIME.admission.spare

    @property
    def model_version(self) -> str:
        return self.fleet.primary.tag

    @bentoml.on_startup
    async def _start(self) -> None:
        self.drain.install(asyncio.get_running_loop())
        if RUNTIME.admission is not None:
            RUNTIME.admission.start()
        if not await self.state.ping():  # serve anyway: reads degrade, writes answer 503 until it is back
            log.warning("state store %s unreachable at start-up", self.state.kind)
        await self.fleet.start()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        if RUNTIME.admission is not None:
            await RUNTIME.admission.stop()
        await self.fleet.close()
        await self.catalog.close()
        await self.state.close()

    async def __is_ready__(self) -> bool:
        return not self.drain.draining and await self.fleet.ready()

    @bentoml.api(output_spec=RecommendResponse)
    async def recommend(self, request: RecommendRequest, /) -> Any:
        """Top-k books for a user: retrieval, ranking on Triton, then seen-item, diversity and genre rules."""
        try:
            result = await self.fleet.recommend(request, REQUEST_ID.get())
        except UnknownVariant as exc:
            return problem(400, str(exc))
        if isinstance(result, CachedResult):
            return Response(cached_body(result, REQUEST_ID.get()), media_type="application/json")
        return result

    @bentoml.api(output_spec=SimilarResponse)
    def similar(self, request: SimilarRequest, /) -> Any:
        """Nearest books to a book in the retrieval space (FAISS)."""
        try:
            return self.fleet.similar(request.item_id, request.k, REQUEST_ID.get())
        except UnknownItem as exc:
            return problem(404, str(exc))

    @bentoml.api(output_spec=TrendingResponse)
    async def trending(self, request: TrendingRequest, /) -> Any:
        """Popular books now: training popularity plus feedback, with time decay."""
        return await self.fleet.trending(request.k, request.genre, REQUEST_ID.get())

    @bentoml.api(output_spec=FeedbackResponse)
    async def feedback(self, request: FeedbackEvent, /) -> Any:
        """One interaction; acknowledged only after a durable write. The next /recommend reflects it."""
        return await self._record([request])

    @bentoml.api(output_spec=FeedbackResponse, route="/feedback/batch")
    async def feedback_batch(self, request: FeedbackBatch, /) -> Any:
        """Up to 1,000 interactions, all or nothing."""
        return await self._record(request.events)

    async def _record(self, events: list[FeedbackEvent]) -> Any:
        try:
            return await self.fleet.feedback(events, REQUEST_ID.get())
        except FeedbackRateLimited as exc:
            message = "too much feedback for a user of this request: nothing recorded, retry later"
            return problem(429, message, {"Retry-After": str(int(exc.wait_s) + 1)})
        except UnknownItem as exc:
            return problem(404, str(exc))
        except WithdrawnItem as exc:
            return problem(409, str(exc))
        except InvalidEvent as exc:
            return problem(400, str(exc))
        except StateUnavailable as exc:
            return state_refusal(exc, "feedback was not recorded")

    @bentoml.api(output_spec=ForgetResponse)
    async def forget(self, request: ForgetRequest, /) -> Any:
        """Delete everything Folio holds about a user: history, cached results, rate limits, journal."""
        try:
            return await self.fleet.forget(request.user_id, REQUEST_ID.get())
        except StateUnavailable as exc:
            return state_refusal(exc, "nothing was deleted")

    @bentoml.api
    async def info(self) -> dict[str, Any]:
        """The served version and its metrics, the ranker precision, Triton and state-store status."""
        primary = self.fleet.primary
        meta = primary.model.metadata
        return {
            "model_version": primary.tag,
            "dataset": meta.get("dataset"),
            "test": meta.get("test"),
            "parity": meta.get("parity"),
            "precision": self.settings.precision,
            "triton": primary.ranking.state(),
            "state": await self._state_info(),
            "config_hash": self.settings.public_hash(),
            "worker_pid": os.getpid(),
            "draining": self.drain.draining,
            **self.fleet.info(),
        }

    async def _state_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.state.kind, "reachable": await self.state.ping()}
        if isinstance(self.state, RedisState):  # how much acknowledged feedback a Redis crash could lose
            info["breaker"] = self.state.breaker_state
            with contextlib.suppress(StateUnavailable):
                info["durability"] = await self.state.durability()
        return info

    @bentoml.api(output_spec=ReloadResponse, route="/admin/reload")
    async def admin_reload(self, request: ReloadRequest, /) -> Any:
        """Serve a new version without a restart (default: the store's production one). Needs API keys."""
        if not RUNTIME.digests:
            return problem(403, "admin endpoints are off: set FOLIO_API_KEYS to enable them")
        try:
            new, previous = await self.fleet.admin_reload(request.tag)
        except LookupError as exc:
            return problem(409, str(exc))
        except (ModelLoadError, registry.StoreError) as exc:
            return problem(409, f"refused, still serving {self.model_version}: {exc}")
        return ReloadResponse(model_version=new, previous=previous, request_id=REQUEST_ID.get())

    @bentoml.api(output_spec=CatalogResponse, route="/admin/catalog/books")
    async def admin_catalog_books(self, request: CatalogBooks, /) -> Any:
        """Add books or replace known books' records (all or nothing); served at once. Needs API keys."""
        dup = next((i for i, n in Counter(b.item_id for b in request.books).items() if n > 1), None)
        if dup is not None:
            return problem(400, f"item_id {dup!r} appears twice: send each book once; nothing changed")
        try:
            changes = [
                CatalogChange("upsert", b.item_id, Book.from_dict(b.model_dump())) for b in request.books
            ]
        except ValueError as exc:
            return problem(400, f"{exc}; nothing changed")
        return await self._change_catalog(changes)

    @bentoml.api(output_spec=CatalogResponse, route="/admin/catalog/withdraw")
    async def admin_catalog_withdraw(self, request: CatalogItems, /) -> Any:
        """Stop recommending, showing and taking feedback for books, on every worker within a second."""
        return await self._change_catalog(
            [CatalogChange("withdraw", i) for i in dict.fromkeys(request.item_ids)]
        )

    @bentoml.api(output_spec=CatalogResponse, route="/admin/catalog/restore")
    async def admin_catalog_restore(self, request: CatalogItems, /) -> Any:
        """Serve withdrawn books again."""
        return await self._change_catalog(
            [CatalogChange("restore", i) for i in dict.fromkeys(request.item_ids)]
        )

    async def _change_catalog(self, changes: list[CatalogChange]) -> Any:
        if not RUNTIME.digests:
            return problem(403, "admin endpoints are off: set FOLIO_API_KEYS to enable them")
        try:
            state = await self.fleet.change_catalog(changes)
        except UnknownItem as exc:
            return problem(404, str(exc))
        except StateUnavailable as exc:
            return state_refusal(exc, "nothing changed")
        return self._catalog_response(state, len(changes))

    def _catalog_response(self, state: CatalogState, changed: int) -> CatalogResponse:
        return CatalogResponse(
            revision=state.revision,
            changed=changed,
            withdrawn=len(state.withdrawn),
            added_or_corrected=len(state.books),
            model_version=self.model_version,
            request_id=REQUEST_ID.get(),
        )


Recommender.add_asgi_middleware(GuardMiddleware, runtime=RUNTIME)  # type: ignore[attr-defined]
