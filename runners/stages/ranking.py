"""Ranking stage: score one user's candidates with Triton, falling back to in-process ONNX Runtime.

Contract (graph: models/ranker.py; one Triton model per precision: runners/triton/)::

    rank(item_ids int [n], user_row float32 [D], candidate_features float32 [n, F], precision)
        -> RankResult(scores float32 [n] | None, ...)
    Triton request  item_ids int64 [1, n], user_features float32 [1, D], candidate_features float32 [1, n*F]
                    -> scores float32 [1, n]
    ORT run         item_ids int64 [n], user_features float32 [1, D], candidate_ends int32 [1] = [n],
                    candidate_features float32 [n*F]

Order of attempts per call: Triton (when the circuit breaker allows; asyncio timeout `timeout_s`) ->
ONNX Runtime in a worker thread (fallback "onnxruntime") -> RankResult(None, "popularity") and the
caller orders by popularity. Bad input (unknown precision, ids out of [0, n_items), wrong row width or
candidate feature count) raises ValueError before any call, so it never trips the breaker.

The stage receives the version's rankers (models/version.py RankerFiles) and composes: the circuit
breaker (stages/breaker.py), the Triton client (triton/client.py), the in-process scorer
(stages/onnx_scorer.py). Triton: `triton_url` attaches to an external server ("external");
`triton_url=None, manage_triton=True` runs an embedded one (triton/embedded.py: rendered repository,
watchdog restarts) ("embedded"); neither: ONNX Runtime only ("disabled"). One gRPC client, opened in
start() and closed in close() (same event loop as rank()).

While the breaker is open, Triton's readiness is polled every ``RECOVERY_POLL_S``; once it answers
ready (or the watchdog restarted it) the breaker lets a probe through at once, not after ``breaker_reset_s``.

Events (`counters`, and `on_event(name, value)` if given): RankingEvent, counts of value 1 except
triton_latency_s (seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import numpy as np

from models.version import PRECISIONS, Precision, RankerFiles
from runners.stages.breaker import CircuitBreaker
from runners.stages.onnx_scorer import OnnxScorer
from runners.triton import client as triton_client
from runners.triton.embedded import EmbeddedTriton
from runners.triton.server import TritonServer

log = logging.getLogger(__name__)
RECOVERY_POLL_S = 0.25

Fallback = Literal["none", "onnxruntime", "popularity"]
FALLBACKS: tuple[Fallback, ...] = get_args(Fallback)
RankingEvent = Literal[
    "triton_error",
    "fallback_onnxruntime",
    "fallback_popularity",
    "breaker_open",
    "restart",
    "start_failure",
    "triton_latency_s",
]
RANKING_EVENTS: tuple[RankingEvent, ...] = get_args(RankingEvent)


@dataclass(frozen=True)
class RankResult:
    scores: np.ndarray | None  # float32 [n] in item_ids order; None when fallback == "popularity"
    fallback: Fallback
    precision: Precision  # the precision actually used


class RankingStage:
    """Scores candidates for one user (see the module docstring for the tensors and the attempts)."""

    def __init__(
        self,
        ranker: RankerFiles,
        *,
        triton_url: str | None,
        default_precision: str = "int8",
        timeout_s: float = 0.5,
        breaker_failures: int = 3,
        breaker_reset_s: float = 5.0,
        work_dir: Path | None = None,
        manage_triton: bool = True,
        on_event: Callable[[str, float], None] | None = None,
    ) -> None:
        self.ranker = ranker
        self.default_precision = self._check_precision(default_precision)
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self.mode = "external" if triton_url else ("embedded" if manage_triton else "disabled")
        self._url = triton_url
        self._on_event = on_event
        self.counters: Counter[str] = Counter()
        meta = ranker.meta
        self.user_feature_dim, self.n_items = meta.user_feature_dim, meta.n_items
        self.candidate_feature_dim = meta.candidate_feature_dim
        self.scorer = OnnxScorer(ranker)
        self.embedded = (
            EmbeddedTriton(ranker, work_dir=work_dir, on_event=self._event, on_restart=self._reconnect)
            if self.mode == "embedded"
            else None
        )
        self._client: triton_client.Client | None = None
        self._recovery: asyncio.Task[None] | None = None

    @property
    def server(self) -> TritonServer | None:
        return self.embedded.server if self.embedded is not None else None

    @property
    def restarts(self) -> int:
        return self.embedded.restarts if self.embedded is not None else 0

    async def start(self) -> None:
        if self.embedded is not None:
            self._url = await self.embedded.start()
        if self._url:
            self._client = triton_client.open_client(self._url)

    async def close(self, stop_timeout_s: float | None = None) -> None:
        """Close the client and stop an embedded Triton (``stop_timeout_s`` 0: kill it at once, for when
        nothing is in flight any more)."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        if self.embedded is not None:
            await self.embedded.close()
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self.embedded is not None:
            await self.embedded.stop(stop_timeout_s)

    async def _reconnect(self, url: str) -> None:
        """The embedded server came back (on a new port when its old one was taken)."""
        if self._client is None or self._url != url:
            self._url = url
            old, self._client = self._client, triton_client.open_client(url)
            if old is not None:
                await old.close()
        self.breaker.probe_now()

    async def rank(
        self,
        item_ids: np.ndarray,
        user_row: np.ndarray,
        candidate_features: np.ndarray,
        precision: str | None = None,
    ) -> RankResult:
        chosen = self._check_precision(precision or self.default_precision)
        ids, user, feats = self._check_inputs(item_ids, user_row, candidate_features)
        if ids.size == 0:
            return RankResult(np.zeros(0, dtype=np.float32), "none", chosen)
        client = self._client
        if client is not None and self.breaker.allow():
            started = time.perf_counter()
            try:
                scores = await asyncio.wait_for(
                    triton_client.score(client, chosen, ids, user, feats, self.timeout_s), self.timeout_s
                )
            except Exception as exc:
                opens = self.breaker.opens
                self.breaker.record_failure()
                self._event("triton_error")
                if self.breaker.opens > opens:
                    self._event("breaker_open")
                    log.warning("Triton breaker opened after: %r", exc)
                    if self._recovery is None or self._recovery.done():
                        self._recovery = asyncio.create_task(self._await_recovery())
                else:
                    log.debug("Triton call failed: %r", exc)
            else:
                self.breaker.record_success()
                self._event("triton_latency_s", time.perf_counter() - started)
                return RankResult(scores, "none", chosen)
        try:
            scores = await asyncio.to_thread(self.scorer.score, chosen, ids, user, feats)
        except Exception:
            log.exception("ONNX Runtime fallback failed; ordering by popularity")
            self._event("fallback_popularity")
            return RankResult(None, "popularity", chosen)
        self._event("fallback_onnxruntime")
        return RankResult(scores, "onnxruntime", chosen)

    def score_in_process(
        self, precision: str, item_ids: np.ndarray, user_row: np.ndarray, candidate_features: np.ndarray
    ) -> np.ndarray:
        """The in-process ONNX Runtime scores of this version's ranker (the reference Triton must match)."""
        ids, user, feats = self._check_inputs(item_ids, user_row, candidate_features)
        return self.scorer.score(self._check_precision(precision), ids, user, feats)

    def _check_inputs(
        self, item_ids: np.ndarray, user_row: np.ndarray, candidate_features: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 [n], user float32 [1, D], candidate features float32 [n*F] flat)"""
        ids = np.asarray(item_ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"item_ids must be integers, got {ids.dtype}")
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.n_items):
            raise ValueError(f"item_ids must lie in [0, {self.n_items})")
        user = np.ascontiguousarray(user_row, dtype=np.float32).reshape(1, -1)
        if user.shape[1] != self.user_feature_dim:
            raise ValueError(f"user_row must have {self.user_feature_dim} features, got {user.shape[1]}")
        feats = np.ascontiguousarray(candidate_features, dtype=np.float32).reshape(-1)
        if feats.size != ids.size * self.candidate_feature_dim:
            raise ValueError(
                f"candidate_features must hold {self.candidate_feature_dim} values per candidate "
                f"({ids.size * self.candidate_feature_dim}), got {feats.size}"
            )
        return ids, user, feats

    @staticmethod
    def _check_precision(precision: str) -> Precision:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return cast(Precision, precision)

    async def _await_recovery(self) -> None:
        """While the breaker is open: probe as soon as Triton reports ready again."""
        while self.breaker.state == "open":
            await asyncio.sleep(RECOVERY_POLL_S)
            if await self.triton_ready(timeout_s=RECOVERY_POLL_S):
                self.breaker.probe_now()
                return

    async def triton_ready(self, timeout_s: float = 1.0) -> bool:
        """Triton server ready and the default precision's model loaded (never raises)."""
        return await triton_client.model_ready(self._client, self.default_precision, timeout_s)

    async def ready(self) -> bool:
        """ONNX Runtime fallback for the default precision loaded (no network call then), or Triton ready."""
        return self.default_precision in self.scorer.sessions or await self.triton_ready(0.5)

    def state(self) -> dict[str, object]:
        server = self.server
        alive = (
            server.is_alive() if server is not None else self.breaker.state == "closed" and bool(self._url)
        )
        return {
            "mode": self.mode,
            "url": self._url,
            "breaker": self.breaker.state,
            "alive": alive,
            "restarts": self.restarts,
            "pid": server.pid if server is not None else None,
        }

    def _event(self, name: str, value: float = 1.0) -> None:
        if name != "triton_latency_s":
            self.counters[name] += 1
        if self._on_event is not None:
            try:
                self._on_event(name, value)
            except Exception:  # metrics must never break ranking
                log.exception("on_event(%r) failed", name)
