"""Fixtures for the integration tests: a real redis-server per module (``redis_server``; ``live_redis``
flushes it and fails fast when it died), and for the Triton tests:

`ranker_model_dir` is the real ranker trained on the synthetic catalog (tests/conftest.py), exported
to ONNX FP32/FP16/INT8 with `ranker.json`. The graph contract (models/ranker.py):

    inputs   item_ids            int64   [R]    candidate ids of all requests in the batch, concatenated
             user_features       float32 [B,D]  one row per request
             candidate_ends      int32   [B]    cumulative candidate counts (BATCH_ACCUMULATED_ELEMENT_COUNT)
             candidate_features  float32 [R*F]  F per candidate, flat, in item_ids order
    output   scores              float32 [R]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runners.platform.redis_server import RedisServer
from runners.triton.repository import render_triton
from runners.triton.server import TritonServer


@pytest.fixture(scope="session")
def ranker_model_dir(artifacts_dir: Path) -> Path:
    """The real trained model (synthetic catalog): three ranker ONNX variants + ranker.json."""
    return artifacts_dir


@pytest.fixture(scope="session")
def ranker_meta(ranker_model_dir: Path) -> dict:
    return json.loads((ranker_model_dir / "ranker.json").read_text())


@pytest.fixture(scope="session")
def triton_repository(ranker_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model_repository")
    render_triton(ranker_model_dir, out, target="cpu", max_batch_size=64, max_queue_delay_us=2000)
    return out


@pytest.fixture(scope="session")
def triton_server(
    triton_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    log_dir = tmp_path_factory.mktemp("triton_logs")
    server = TritonServer(log_file=log_dir / "tritonserver.log", startup_timeout_s=120.0)
    server.start(triton_repository)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def live_server(triton_server: TritonServer) -> TritonServer:
    """The shared server, checked alive first: a crash earlier in the session fails fast, with its log."""
    if not triton_server.is_alive():
        pytest.fail(f"tritonserver is no longer running; log tail:\n{triton_server.log_tail()}")
    return triton_server


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture()
def live_redis(redis_server: RedisServer) -> RedisServer:
    if not redis_server.is_alive():
        pytest.fail(f"redis-server is no longer running; log tail:\n{redis_server.log_tail()}")
    with redis_server.client() as c:
        c.flushall()
    return redis_server
