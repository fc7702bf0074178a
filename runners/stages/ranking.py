"""Ranking stage: score one user's candidates with Triton, falling back to in-process ONNX Runtime.

Contract (graph: models/ranker.py; Triton models `ranker_{int8,fp16,fp32}`: runners/triton/backend_model.py)::

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

Triton: `triton_url` attaches to an external server ("external"); `triton_url=None, manage_triton=True`
renders `work_dir/model_repository` (target "cpu") and runs the embedded tritonserver ("embedded"),
restarted by a watchdog when its process dies; neither: ONNX Runtime only ("disabled"). One
`tritonclient.grpc.aio` client, opened in start() and closed in close() (same event loop as rank()).

Events (`counters`, and `on_event(name, value)` if given): triton_error, fallback_onnxruntime,
fallback_popularity, breaker_open, restart, start_failure (counts, value 1) and triton_latency_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as grpcaio

from runners.triton.repository import render_triton
from runners.triton.server import TritonServer

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16", "fp32")
FALLBACKS = ("none", "onnxruntime", "popularity")
WATCHDOG_INTERVAL_S = 0.5


@dataclass(frozen=True)
class RankResult:
    scores: np.ndarray | None  # float32 [n] in item_ids order; None when fallback == "popularity"
    fallback: str  # one of FALLBACKS
    precision: str  # variant actually used


class CircuitBreaker:
    """closed -> open after `failures` consecutive failures; while open, calls are refused for `reset_s`;
    then half-open: ONE probe call is let through; success closes, failure re-opens. A probe that never
    reports (its task was cancelled) is considered lost after another `reset_s`."""

    def __init__(self, failures: int = 3, reset_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if failures < 1 or reset_s < 0:
            raise ValueError("failures must be >= 1 and reset_s >= 0")
        self.failures, self.reset_s, self._clock = failures, reset_s, clock
        self._state = "closed"
        self._consecutive = 0
        self._since = 0.0  # when it opened (open) or when the probe left (half-open)
        self._probe_out = False
        self.opens = 0

    @property
    def state(self) -> str:
        if self._state == "open" and self._clock() - self._since >= self.reset_s:
            return "half_open"
        return self._state

    def allow(self) -> bool:
        now = self._clock()
        if self.state == "closed":
            return True
        if self.state == "half_open" and (not self._probe_out or now - self._since >= self.reset_s):
            self._state, self._since, self._probe_out = "half_open", now, True
            return True
        return False

    def record_success(self) -> None:
        self._state, self._consecutive, self._probe_out = "closed", 0, False

    def record_failure(self) -> None:
        if self._state == "open":  # a call that was in flight when it opened
            return
        self._consecutive += 1
        if self._state == "half_open" or self._consecutive >= self.failures:
            self._state, self._since, self._probe_out = "open", self._clock(), False
            self.opens += 1


class RankingStage:
    """Scores candidates for one user. Tensors (graph contract, models/ranker.py): item_ids int64 [1, n],
    user_features float32 [1, D], candidate_features float32 [1, n*F] -> scores float32 [1, n] (see the
    module docstring)."""

    def __init__(
        self,
        model_dir: Path,
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
        self.model_dir = Path(model_dir)
        self.default_precision = self._check_precision(default_precision)
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self.mode = "external" if triton_url else ("embedded" if manage_triton else "disabled")
        self._url = triton_url
        self._work_dir_arg = work_dir
        self._work_dir: Path | None = None
        self._on_event = on_event
        self.counters: Counter[str] = Counter()
        self.restarts = 0
        meta = json.loads((self.model_dir / "ranker.json").read_text())
        self.user_feature_dim, self.n_items = int(meta["user_feature_dim"]), int(meta["n_items"])
        self.candidate_feature_dim = int(meta["candidate_feature_dim"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self._sessions = {
            p: ort.InferenceSession(
                str(self.model_dir / f"ranker_{p}.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for p in PRECISIONS
        }
        self.server: TritonServer | None = None
        self._client: grpcaio.InferenceServerClient | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._restart: asyncio.Future[None] | None = None
        self._closing = False

    async def start(self) -> None:
        if self.mode == "embedded":
            self._work_dir = self._work_dir_arg or Path(tempfile.mkdtemp(prefix="folio-ranking-"))
            repo = self._work_dir / "model_repository"
            await asyncio.to_thread(render_triton, self.model_dir, repo, target="cpu")
            self.server = TritonServer(log_file=self._work_dir / "tritonserver.log", work_dir=self._work_dir)
            try:
                await asyncio.to_thread(self.server.start, repo)
            except Exception:  # degrade to ONNX Runtime; the watchdog keeps trying
                log.exception("embedded tritonserver failed to start; ranking with ONNX Runtime")
                self._event("start_failure")
            self._url = self.server.grpc_url if self.server.grpc_port else None
            self._watchdog = asyncio.create_task(self._watch(), name="folio-triton-watchdog")
        if self._url:
            self._client = self._open_client(self._url)

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._restart is not None:  # a restart thread can't be cancelled: let it finish, then stop
            with contextlib.suppress(Exception):
                await self._restart
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        if self._work_dir is not None and self._work_dir_arg is None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    async def _watch(self) -> None:
        """Restart the managed tritonserver when its process is gone (backs off while restarts fail)."""
        assert self.server is not None
        server, delay = self.server, WATCHDOG_INTERVAL_S
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing or server.is_alive():
                continue
            log.warning("tritonserver is not running; restarting. log tail:\n%s", server.log_tail(20))
            self._restart = asyncio.ensure_future(asyncio.to_thread(server.restart))
            try:  # shielded: close() cancels this task, then waits for the thread before stopping
                await asyncio.shield(self._restart)
            except Exception:
                self._restart = None
                log.exception("tritonserver restart failed")
                self._event("start_failure")
                delay = min(delay * 2, 30.0)
                continue
            self._restart = None
            self.restarts += 1
            self._event("restart")
            delay = WATCHDOG_INTERVAL_S
            if self._client is None or self._url != server.grpc_url:
                self._url = server.grpc_url
                old, self._client = self._client, self._open_client(self._url)
                if old is not None:
                    await old.close()
            log.info("tritonserver restarted (pid %s, %d restarts)", server.pid, self.restarts)

    @staticmethod
    def _open_client(url: str) -> grpcaio.InferenceServerClient:
        ka = grpcaio.KeepAliveOptions()
        # tritonclient's defaults, plus a short reconnect backoff: after a restart the channel reconnects
        # within ~1 s instead of gRPC's default exponential backoff (up to 120 s). min_reconnect_backoff
        # doubles as the connect timeout (default 20 s).
        args = {
            "grpc.max_send_message_length": grpcaio.MAX_GRPC_MESSAGE_SIZE,
            "grpc.max_receive_message_length": grpcaio.MAX_GRPC_MESSAGE_SIZE,
            "grpc.keepalive_time_ms": ka.keepalive_time_ms,
            "grpc.keepalive_timeout_ms": ka.keepalive_timeout_ms,
            "grpc.keepalive_permit_without_calls": ka.keepalive_permit_without_calls,
            "grpc.http2.max_pings_without_data": ka.http2_max_pings_without_data,
            "grpc.initial_reconnect_backoff_ms": 200,
            "grpc.min_reconnect_backoff_ms": 1000,
            "grpc.max_reconnect_backoff_ms": 1000,
        }
        return grpcaio.InferenceServerClient(url, channel_args=list(args.items()))

    async def rank(
        self,
        item_ids: np.ndarray,
        user_row: np.ndarray,
        candidate_features: np.ndarray,
        precision: str | None = None,
    ) -> RankResult:
        variant = self._check_precision(precision or self.default_precision)
        ids, user, feats = self._check_inputs(item_ids, user_row, candidate_features)
        if ids.size == 0:
            return RankResult(np.zeros(0, dtype=np.float32), "none", variant)
        client = self._client
        if client is not None and self.breaker.allow():
            started = time.perf_counter()
            try:
                scores = await asyncio.wait_for(
                    self._infer(client, variant, ids, user, feats), self.timeout_s
                )
            except Exception as exc:
                opens = self.breaker.opens
                self.breaker.record_failure()
                self._event("triton_error")
                if self.breaker.opens > opens:
                    self._event("breaker_open")
                    log.warning("Triton breaker opened after: %r", exc)
                else:
                    log.debug("Triton call failed: %r", exc)
            else:
                self.breaker.record_success()
                self._event("triton_latency_s", time.perf_counter() - started)
                return RankResult(scores, "none", variant)
        try:
            scores = await asyncio.to_thread(self._score_ort, variant, ids, user, feats)
        except Exception:
            log.exception("ONNX Runtime fallback failed; ordering by popularity")
            self._event("fallback_popularity")
            return RankResult(None, "popularity", variant)
        self._event("fallback_onnxruntime")
        return RankResult(scores, "onnxruntime", variant)

    async def _infer(
        self,
        client: grpcaio.InferenceServerClient,
        variant: str,
        ids: np.ndarray,
        user: np.ndarray,
        feats: np.ndarray,
    ) -> np.ndarray:
        inputs = [
            grpcaio.InferInput("item_ids", [1, ids.size], "INT64"),
            grpcaio.InferInput("user_features", list(user.shape), "FP32"),
            grpcaio.InferInput("candidate_features", [1, feats.size], "FP32"),
        ]
        inputs[0].set_data_from_numpy(ids.reshape(1, -1))
        inputs[1].set_data_from_numpy(user)
        inputs[2].set_data_from_numpy(feats.reshape(1, -1))
        result = await client.infer(
            f"ranker_{variant}",
            inputs,
            outputs=[grpcaio.InferRequestedOutput("scores")],
            client_timeout=self.timeout_s,
        )
        scores = result.as_numpy("scores")
        if scores is None or scores.size != ids.size:
            raise RuntimeError(
                f"Triton returned {None if scores is None else scores.shape} for {ids.size} ids"
            )
        return scores.reshape(-1).astype(np.float32, copy=False)

    def score_in_process(
        self, precision: str, item_ids: np.ndarray, user_row: np.ndarray, candidate_features: np.ndarray
    ) -> np.ndarray:
        """The in-process ONNX Runtime scores of this version's ranker (the reference Triton must match)."""
        ids, user, feats = self._check_inputs(item_ids, user_row, candidate_features)
        return self._score_ort(self._check_precision(precision), ids, user, feats)

    def _score_ort(self, variant: str, ids: np.ndarray, user: np.ndarray, feats: np.ndarray) -> np.ndarray:
        feeds = {
            "item_ids": ids,
            "user_features": user,
            "candidate_ends": np.array([ids.size], np.int32),
            "candidate_features": feats,
        }
        (scores,) = self._sessions[variant].run(["scores"], feeds)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

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
    def _check_precision(precision: str) -> str:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return precision

    async def triton_ready(self, timeout_s: float = 1.0) -> bool:
        """Triton server ready and the default variant loaded (never raises)."""
        client = self._client
        if client is None:
            return False
        model = f"ranker_{self.default_precision}"

        async def check() -> bool:
            ok = await client.is_server_ready(client_timeout=timeout_s)
            return bool(ok and await client.is_model_ready(model, client_timeout=timeout_s))

        try:
            return await asyncio.wait_for(check(), timeout_s)
        except Exception:
            return False

    async def ready(self) -> bool:
        """ONNX Runtime fallback for the default variant loaded (no network call then), or Triton ready."""
        return self.default_precision in self._sessions or await self.triton_ready(0.5)

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
