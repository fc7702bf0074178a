"""RankingStage with the real embedded tritonserver: exact scores, crash fallback, watchdog restart, close.

`ranker_model_dir` (conftest.py) is the real ranker trained on the synthetic catalog. Every test bounds its
event loop with asyncio.wait_for, so a wedged server fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from loadtests.faults.inject import group_gone, process_gone
from models.version import RankerFiles
from runners.stages.ranking import PRECISIONS, RankingStage, RankResult
from tests.unit.runners.stages.test_ranking import reference

pytestmark = pytest.mark.integration

TEST_TIMEOUT_S = 180.0
RECOVERY_S = 60.0


def test_embedded_triton_scores_match_onnxruntime(
    ranker_model_dir: Path, ranker_meta: dict, rng: np.random.Generator, tmp_path: Path
) -> None:
    f = ranker_meta["candidate_feature_dim"]
    work = [
        (
            rng.integers(0, ranker_meta["n_items"], size=n),
            rng.standard_normal(ranker_meta["user_feature_dim"]),
            rng.standard_normal((n, f)).astype(np.float32),
        )
        for n in (1, 17, 500)
    ]

    async def main() -> tuple[list[tuple[str, int, RankResult]], dict[str, object], bool]:
        # generous timeout: the first call of each model warms up the Python backend
        stage = RankingStage(
            RankerFiles.read(ranker_model_dir), triton_url=None, timeout_s=10.0, work_dir=tmp_path / "work"
        )
        await stage.start()
        try:
            state, ready = stage.state(), await stage.triton_ready()
            results = [
                (p, k, await stage.rank(ids, user, feats, p))
                for p in PRECISIONS
                for k, (ids, user, feats) in enumerate(work)
            ]
            return results, state, ready
        finally:
            await stage.close()

    results, state, ready = asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    assert state["mode"] == "embedded" and state["alive"] is True and state["breaker"] == "closed"
    assert isinstance(state["pid"], int) and ready
    for precision, k, result in results:
        ids, user, feats = work[k]
        assert result.fallback == "none" and result.precision == precision, (precision, k, result.fallback)
        scores = result.scores
        assert scores is not None and scores.dtype == np.float32 and scores.shape == (ids.size,)
        np.testing.assert_allclose(
            scores, reference(ranker_model_dir, precision, ids, user, feats), rtol=1e-5, atol=1e-5
        )
    assert process_gone(state["pid"]) and group_gone(state["pid"])  # close() stopped server and stubs


def test_killed_triton_falls_back_then_watchdog_restores_it(
    ranker_model_dir: Path, ranker_meta: dict, rng: np.random.Generator, tmp_path: Path
) -> None:
    ids = rng.integers(0, ranker_meta["n_items"], size=200)
    user = rng.standard_normal(ranker_meta["user_feature_dim"]).astype(np.float32)
    feats = rng.standard_normal((ids.size, ranker_meta["candidate_feature_dim"])).astype(np.float32)
    expected = reference(ranker_model_dir, "int8", ids, user, feats)

    async def main() -> dict:
        stage = RankingStage(
            RankerFiles.read(ranker_model_dir),
            triton_url=None,
            timeout_s=5.0,
            breaker_failures=2,
            breaker_reset_s=3600.0,  # traffic returns once Triton is back, not once the breaker times out
            work_dir=tmp_path / "work",
        )
        await stage.start()
        try:
            assert (await stage.rank(ids, user, feats)).fallback == "none"  # warm
            old_pid = stage.state()["pid"]
            assert isinstance(old_pid, int)
            os.kill(old_pid, signal.SIGKILL)
            while not process_gone(old_pid) and stage.state()["alive"]:
                await asyncio.sleep(0.02)

            seen: list[str] = []
            deadline = time.monotonic() + RECOVERY_S
            while time.monotonic() < deadline:
                result = await stage.rank(ids, user, feats)  # never raises while Triton is down
                seen.append(result.fallback)
                assert result.fallback in ("none", "onnxruntime"), result
                np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-5)  # type: ignore[arg-type]
                if result.fallback == "none":
                    break
                await asyncio.sleep(0.05)
            else:
                assert stage.server is not None
                pytest.fail(
                    f"no recovery within {RECOVERY_S}s: {stage.state()}, counters {dict(stage.counters)}; "
                    f"triton log tail:\n{stage.server.log_tail()}"
                )
            state = stage.state()
            assert seen[0] == "onnxruntime" and seen.count("onnxruntime") >= 3, seen
            assert state["restarts"] == 1 and state["alive"] is True and state["breaker"] == "closed"
            assert state["pid"] != old_pid and group_gone(old_pid)  # the old stubs went with it
            assert stage.counters["breaker_open"] >= 1 and stage.counters["restart"] == 1
            assert stage.counters["fallback_onnxruntime"] == seen.count("onnxruntime")
        finally:
            await stage.close()
        await asyncio.sleep(1.5)  # the watchdog must not bring a closed stage's server back
        assert stage.server is not None and not stage.server.is_alive()
        return state

    state = asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    assert process_gone(state["pid"]) and group_gone(state["pid"])
