"""stages/ranking.py without a Triton server: the circuit breaker, the ONNX Runtime and popularity fallbacks.

`artifacts_dir` (tests/conftest.py) is the real ranker trained on the synthetic catalog; Triton is pointed
at a free local port (nothing listening) or at a socket that accepts but never answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from models.version import RankerFiles
from runners.stages.ranking import PRECISIONS, CircuitBreaker, RankingStage, RankResult
from runners.triton.server import free_port

TEST_TIMEOUT_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(make(), TEST_TIMEOUT_S))


def reference(
    model_dir: Path, precision: str, ids: np.ndarray, user: np.ndarray, feats: np.ndarray
) -> np.ndarray:
    session = ort.InferenceSession(
        str(model_dir / f"ranker_{precision}.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = {
        "item_ids": ids.astype(np.int64),
        "user_features": user.reshape(1, -1).astype(np.float32),
        "candidate_ends": np.array([ids.size], dtype=np.int32),
        "candidate_features": feats.reshape(-1).astype(np.float32),
    }
    return session.run(["scores"], feeds)[0]


Request = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture()
def request_data(artifacts_dir: Path) -> Request:
    """(item ids [40], user row [D], candidate features [40, F])"""
    meta = json.loads((artifacts_dir / "ranker.json").read_text())
    rng = np.random.default_rng(7)
    ids = rng.integers(0, meta["n_items"], size=40, dtype=np.int64)
    feats = rng.standard_normal((40, meta["candidate_feature_dim"])).astype(np.float32)
    return ids, rng.standard_normal(meta["user_feature_dim"]).astype(np.float32), feats


# ---------------------------------------------------------------------------- circuit breaker
def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, reset_s=5.0, clock=clock)
    assert b.state == "closed" and b.allow()
    b.record_failure()
    b.record_failure()
    b.record_success()  # resets the consecutive count
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and b.opens == 1
    assert not b.allow()
    clock.now += 4.9
    assert not b.allow() and b.state == "open"


def test_breaker_half_open_lets_one_probe_and_closes_on_success() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_s=5.0, clock=clock)
    b.record_failure()
    clock.now += 5.0
    assert b.state == "half_open"
    assert b.allow()  # the probe
    assert not b.allow() and not b.allow()  # only one probe at a time
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_breaker_failed_probe_reopens() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, reset_s=5.0, clock=clock)
    b.record_failure()
    b.record_failure()
    clock.now += 6.0
    assert b.allow()
    b.record_failure()
    assert b.state == "open" and b.opens == 2 and not b.allow()
    clock.now += 4.0
    assert not b.allow()
    clock.now += 1.0
    assert b.state == "half_open" and b.allow() and not b.allow()


def test_breaker_lost_probe_is_replaced_after_reset_s() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_s=5.0, clock=clock)
    b.record_failure()
    clock.now += 5.0
    assert b.allow()  # this probe never reports back
    clock.now += 4.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_breaker_probes_at_once_when_the_backend_is_back() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_s=5.0, clock=clock)
    b.probe_now()  # closed: nothing to do
    assert b.state == "closed"
    b.record_failure()
    clock.now += 0.5
    assert not b.allow()
    b.probe_now()
    assert b.state == "half_open" and b.allow() and not b.allow()  # still only one probe


def test_breaker_ignores_failures_of_calls_in_flight_when_it_opened() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_s=5.0, clock=clock)
    b.record_failure()
    clock.now += 4.0
    b.record_failure()  # does not push the reopening further out
    clock.now += 1.0
    assert b.state == "half_open"


# ---------------------------------------------------------------------------- ranking stage, no Triton
def test_unreachable_triton_falls_back_to_onnxruntime(artifacts_dir: Path, request_data: Request) -> None:
    ids, user, feats = request_data
    events: list[tuple[str, float]] = []

    async def main() -> tuple[list[RankResult], RankingStage, bool]:
        stage = RankingStage(
            RankerFiles.read(artifacts_dir),
            triton_url=f"127.0.0.1:{free_port()}",
            manage_triton=False,
            breaker_failures=2,
            breaker_reset_s=60.0,
            on_event=lambda name, value: events.append((name, value)),
        )
        await stage.start()
        try:
            results = [await stage.rank(ids, user, feats, p) for p in (*PRECISIONS, "int8", "int8")]
            return results, stage, await stage.ready()
        finally:
            await stage.close()

    results, stage, ready = run(main)
    assert ready  # the ORT fallback is available
    for result, precision in zip(results, (*PRECISIONS, "int8", "int8"), strict=True):
        assert result.fallback == "onnxruntime" and result.precision == precision
        assert (
            result.scores is not None and result.scores.dtype == np.float32 and result.scores.shape == (40,)
        )
        np.testing.assert_allclose(
            result.scores, reference(artifacts_dir, precision, ids, user, feats), rtol=1e-6
        )
    # two failures opened the breaker: the remaining calls went straight to ONNX Runtime
    assert stage.counters["triton_error"] == 2 and stage.counters["breaker_open"] == 1
    assert stage.counters["fallback_onnxruntime"] == 5
    assert ("breaker_open", 1.0) in events and events.count(("fallback_onnxruntime", 1.0)) == 5
    state = stage.state()
    assert state["mode"] == "external" and state["breaker"] == "open" and state["alive"] is False
    assert state["pid"] is None and state["restarts"] == 0


def test_silent_triton_times_out_within_timeout_s(artifacts_dir: Path, request_data: Request) -> None:
    """A socket that accepts connections but never speaks gRPC: the call is abandoned after timeout_s."""
    ids, user, feats = request_data
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"127.0.0.1:{listener.getsockname()[1]}"

        async def main() -> tuple[RankResult, float, RankingStage]:
            stage = RankingStage(
                RankerFiles.read(artifacts_dir), triton_url=url, timeout_s=0.3, manage_triton=False
            )
            await stage.start()
            try:
                started = time.monotonic()
                result = await stage.rank(ids, user, feats)
                return result, time.monotonic() - started, stage
            finally:
                await stage.close()

        result, elapsed, stage = run(main)
    assert result.fallback == "onnxruntime" and result.precision == "int8"
    assert 0.25 < elapsed < 2.0, elapsed
    assert stage.counters["triton_error"] == 1


def test_onnxruntime_failure_falls_back_to_popularity(artifacts_dir: Path, request_data: Request) -> None:
    ids, user, feats = request_data

    class Broken:
        def run(self, *args: object) -> None:
            raise RuntimeError("broken session")

    async def main() -> tuple[RankResult, RankResult, RankingStage]:
        stage = RankingStage(
            RankerFiles.read(artifacts_dir), triton_url=None, manage_triton=False, default_precision="fp16"
        )
        stage.scorer.sessions["fp16"] = Broken()
        await stage.start()
        try:
            return await stage.rank(ids, user, feats), await stage.rank(ids, user, feats, "fp32"), stage
        finally:
            await stage.close()

    broken, fine, stage = run(main)
    assert broken == RankResult(None, "popularity", "fp16")
    assert fine.fallback == "onnxruntime" and fine.scores is not None
    assert stage.counters["fallback_popularity"] == 1 and stage.counters["triton_error"] == 0
    assert stage.state()["mode"] == "disabled"


def test_bad_input_raises_value_error_without_calling_anything(
    artifacts_dir: Path, request_data: Request
) -> None:
    ids, user, feats = request_data
    with pytest.raises(ValueError, match="precision"):
        RankingStage(
            RankerFiles.read(artifacts_dir), triton_url=None, manage_triton=False, default_precision="bf16"
        )

    async def main() -> RankingStage:
        stage = RankingStage(
            RankerFiles.read(artifacts_dir), triton_url=f"127.0.0.1:{free_port()}", manage_triton=False
        )
        await stage.start()
        try:
            with pytest.raises(ValueError, match="precision must be one of"):
                await stage.rank(ids, user, feats, "int4")
            with pytest.raises(ValueError, match="item_ids must lie in"):
                await stage.rank(np.array([0, stage.n_items]), user, feats[:2])
            with pytest.raises(ValueError, match="item_ids must lie in"):
                await stage.rank(np.array([-1]), user, feats[:1])
            with pytest.raises(ValueError, match="integers"):
                await stage.rank(np.array([0.5, 1.0]), user, feats[:2])
            with pytest.raises(ValueError, match="features"):
                await stage.rank(ids, np.zeros(user.size + 1, dtype=np.float32), feats)
            with pytest.raises(ValueError, match="values per candidate"):
                await stage.rank(ids, user, feats[:-1])
            return stage
        finally:
            await stage.close()

    stage = run(main)
    assert sum(stage.counters.values()) == 0  # no Triton call, no fallback
    assert stage.breaker.state == "closed"


def test_empty_candidates_need_no_call(artifacts_dir: Path, request_data: Request) -> None:
    _, user, feats = request_data

    async def main() -> tuple[RankResult, RankingStage]:
        stage = RankingStage(
            RankerFiles.read(artifacts_dir), triton_url=f"127.0.0.1:{free_port()}", manage_triton=False
        )
        await stage.start()
        try:
            return await stage.rank(np.array([], dtype=np.int64), user, feats[:0], "fp32"), stage
        finally:
            await stage.close()

    result, stage = run(main)
    assert result.fallback == "none" and result.precision == "fp32"
    assert result.scores is not None and result.scores.shape == (0,) and result.scores.dtype == np.float32
    assert sum(stage.counters.values()) == 0
