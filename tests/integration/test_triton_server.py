"""The real tritonserver (nvidia-pytriton wheel) serving the rendered cpu repository.

Fixtures (conftest.py): `ranker_model_dir` (the ranker trained on the synthetic catalog),
`triton_repository` (render_triton target "cpu"), `triton_server` (runners.triton.server.TritonServer, one
per session) and `live_server` (the same, checked alive before each test).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from runners.triton.repository import render_triton
from runners.triton.server import TritonServer, TritonStartupError

pytestmark = pytest.mark.integration

VARIANTS = ("int8", "fp16", "fp32")
TIMEOUT_S = 30.0  # per gRPC call: a dead or wedged server fails the test instead of hanging it


def make_inputs(
    item_ids: np.ndarray, user_row: np.ndarray, cand_feats: np.ndarray
) -> list[grpcclient.InferInput]:
    """The service's request: item_ids [1, n], user_features [1, D], candidate_features [1, n*F]."""
    ids = np.ascontiguousarray(item_ids, dtype=np.int64).reshape(1, -1)
    user = np.ascontiguousarray(user_row, dtype=np.float32).reshape(1, -1)
    feats = np.ascontiguousarray(cand_feats, dtype=np.float32).reshape(1, -1)
    inputs = [
        grpcclient.InferInput("item_ids", list(ids.shape), "INT64"),
        grpcclient.InferInput("user_features", list(user.shape), "FP32"),
        grpcclient.InferInput("candidate_features", list(feats.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(user)
    inputs[2].set_data_from_numpy(feats)
    return inputs


def infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    item_ids: np.ndarray,
    user_row: np.ndarray,
    cand_feats: np.ndarray,
) -> np.ndarray:
    result = client.infer(
        model,
        make_inputs(item_ids, user_row, cand_feats),
        outputs=[grpcclient.InferRequestedOutput("scores")],
        client_timeout=TIMEOUT_S,
    )
    scores = result.as_numpy("scores")
    assert scores is not None
    return scores


@pytest.fixture(scope="module")
def sessions(ranker_model_dir: Path) -> dict[str, ort.InferenceSession]:
    """In-process ONNX Runtime on the same ONNX files: the reference answer."""
    return {
        v: ort.InferenceSession(
            str(ranker_model_dir / f"ranker_{v}.onnx"), providers=["CPUExecutionProvider"]
        )
        for v in VARIANTS
    }


def score_alone(
    session: ort.InferenceSession, item_ids: np.ndarray, user_row: np.ndarray, cand_feats: np.ndarray
) -> np.ndarray:
    feeds = {
        "item_ids": np.asarray(item_ids, dtype=np.int64).reshape(-1),
        "user_features": np.asarray(user_row, dtype=np.float32).reshape(1, -1),
        "candidate_ends": np.array([np.size(item_ids)], dtype=np.int32),
        "candidate_features": np.asarray(cand_feats, dtype=np.float32).reshape(-1),
    }
    return session.run(["scores"], feeds)[0]


@pytest.fixture()
def client(live_server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(live_server.grpc_url) as c:
        yield c


Request = tuple[np.ndarray, np.ndarray, np.ndarray]  # item ids [n], user row [D], candidate features [n*F]


def request_maker(meta: dict, rng: np.random.Generator) -> Callable[[int], Request]:
    def make(n: int) -> Request:
        ids = rng.integers(0, meta["n_items"], size=n, dtype=np.int64)
        user = rng.standard_normal(meta["user_feature_dim"]).astype(np.float32)
        feats = rng.standard_normal(n * meta["candidate_feature_dim"]).astype(np.float32)
        return ids, user, feats

    return make


def settled_stats(server: TritonServer, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) once they stop moving.

    Triton records statistics after the response has been sent, so a read right after the last
    reply can miss it (CI once saw 97 where 96 requests were still being counted).
    """
    last: tuple[int, int] | None = None
    deadline = time.monotonic() + TIMEOUT_S
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        while time.monotonic() < deadline:
            stats = c.get_inference_statistics(model, as_json=True, client_timeout=TIMEOUT_S)
            s = stats["model_stats"][0]
            now = (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)))
            if now == last:
                return now
            last = now
            time.sleep(0.2)
    raise AssertionError(f"statistics of {model} did not settle within {TIMEOUT_S}s")


def test_server_ready_with_all_variants(
    live_server: TritonServer, client: grpcclient.InferenceServerClient
) -> None:
    assert live_server.is_alive()
    assert client.is_server_ready(client_timeout=TIMEOUT_S)
    for v in VARIANTS:
        assert client.is_model_ready(f"ranker_{v}", client_timeout=TIMEOUT_S), v
    assert live_server.startup_s is not None and live_server.startup_s < 60


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_match_in_process_onnxruntime(
    variant: str,
    client: grpcclient.InferenceServerClient,
    sessions: dict[str, ort.InferenceSession],
    ranker_meta: dict,
    rng: np.random.Generator,
) -> None:
    make = request_maker(ranker_meta, rng)
    for n in (1, 2, 17, 500):
        request = make(n)
        got = infer(client, f"ranker_{variant}", *request)
        assert got.shape == (1, n) and got.dtype == np.float32
        np.testing.assert_allclose(got[0], score_alone(sessions[variant], *request), rtol=1e-5, atol=1e-5)
    # The candidate features reach the graph: other features, other scores.
    ids, user, feats = make(50)
    got = infer(client, f"ranker_{variant}", ids, user, feats)
    other = infer(client, f"ranker_{variant}", ids, user, feats + 1.0)
    assert np.abs(got - other).max() > 1e-3


def test_concurrent_ragged_requests_are_merged_and_split_back(
    live_server: TritonServer,
    sessions: dict[str, ort.InferenceSession],
    ranker_meta: dict,
    rng: np.random.Generator,
) -> None:
    """32 threads at once, every request with a DIFFERENT candidate count.

    Each result must equal the same request scored alone. Batching must have happened
    (executions < inferences); since no two requests share a candidate count, any execution that
    served several requests merged ragged ones.
    """
    model, n_threads, rounds = "ranker_fp32", 32, 3
    make = request_maker(ranker_meta, rng)
    counts = rng.permutation(np.arange(1, n_threads * rounds + 1) * 5)  # distinct counts, 5..480
    work = [make(int(n)) for n in counts]
    before = settled_stats(live_server, model)

    clients = [grpcclient.InferenceServerClient(live_server.grpc_url) for _ in range(n_threads)]
    try:
        for r in range(rounds):
            barrier = threading.Barrier(n_threads, timeout=TIMEOUT_S)
            batch = work[r * n_threads : (r + 1) * n_threads]

            def call(k: int, batch: list = batch, barrier: threading.Barrier = barrier) -> np.ndarray:
                barrier.wait()
                return infer(clients[k], model, *batch[k])

            with ThreadPoolExecutor(n_threads) as pool:
                results = list(pool.map(call, range(n_threads), timeout=2 * TIMEOUT_S))
            for request, got in zip(batch, results, strict=True):
                assert got.shape == (1, len(request[0]))
                np.testing.assert_allclose(
                    got[0], score_alone(sessions["fp32"], *request), rtol=1e-5, atol=1e-5
                )
    finally:
        for c in clients:
            c.close()

    after = settled_stats(live_server, model)
    inferences = after[0] - before[0]
    executions = after[1] - before[1]
    assert inferences == n_threads * rounds
    assert 0 < executions < inferences, (
        f"no dynamic batching: {executions} executions for {inferences} requests"
    )


@pytest.mark.parametrize("defect", ["id_out_of_range", "candidate_features_size"])
def test_malformed_request_fails_alone(
    live_server: TritonServer,
    sessions: dict[str, ort.InferenceSession],
    ranker_meta: dict,
    rng: np.random.Generator,
    defect: str,
) -> None:
    """An out-of-range id, or candidate_features of other than n*F values, gets INVALID_ARGUMENT;
    requests batched with it are still served."""
    model, n_threads = "ranker_fp32", 8
    make = request_maker(ranker_meta, rng)
    work = [make(10 + k) for k in range(n_threads)]
    bad = 3
    f = ranker_meta["candidate_feature_dim"]
    if defect == "id_out_of_range":
        ids = np.array([0, ranker_meta["n_items"]], dtype=np.int64)
        work[bad] = (ids, work[bad][1], np.zeros(2 * f, np.float32))
        expected = "item_ids must lie in"
    else:  # one candidate's features short: (n - 1) * F + (F - 1) values for n ids
        ids, user, feats = work[bad]
        work[bad] = (ids, user, feats[:-1])
        expected = "candidate_features must have shape [1, n*F]"
    barrier = threading.Barrier(n_threads, timeout=TIMEOUT_S)
    clients = [grpcclient.InferenceServerClient(live_server.grpc_url) for _ in range(n_threads)]

    def call(k: int) -> np.ndarray | InferenceServerException:
        barrier.wait()
        try:
            return infer(clients[k], model, *work[k])
        except InferenceServerException as exc:
            return exc

    try:
        with ThreadPoolExecutor(n_threads) as pool:
            results = list(pool.map(call, range(n_threads), timeout=2 * TIMEOUT_S))
    finally:
        for c in clients:
            c.close()
    for k, (request, got) in enumerate(zip(work, results, strict=True)):
        if k == bad:
            assert isinstance(got, InferenceServerException)
            assert "INVALID_ARGUMENT" in str(got.status()) and expected in got.message(), got.message()
        else:
            assert isinstance(got, np.ndarray), got
            np.testing.assert_allclose(got[0], score_alone(sessions["fp32"], *request), rtol=1e-5, atol=1e-5)


def test_wrong_feature_width_is_rejected(client: grpcclient.InferenceServerClient, ranker_meta: dict) -> None:
    ids = np.array([1, 2, 3], dtype=np.int64)
    user = np.zeros(ranker_meta["user_feature_dim"] + 1, dtype=np.float32)
    feats = np.zeros(3 * ranker_meta["candidate_feature_dim"], dtype=np.float32)
    with pytest.raises(InferenceServerException, match="user_features"):
        infer(client, "ranker_int8", ids, user, feats)


def test_missing_candidate_features_is_rejected(
    client: grpcclient.InferenceServerClient, ranker_meta: dict
) -> None:
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    user = np.zeros((1, ranker_meta["user_feature_dim"]), dtype=np.float32)
    inputs = [
        grpcclient.InferInput("item_ids", list(ids.shape), "INT64"),
        grpcclient.InferInput("user_features", list(user.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(user)
    with pytest.raises(InferenceServerException, match="candidate_features"):
        client.infer("ranker_int8", inputs, client_timeout=TIMEOUT_S)


def test_aio_client(
    live_server: TritonServer,
    sessions: dict[str, ort.InferenceSession],
    ranker_meta: dict,
    rng: np.random.Generator,
) -> None:
    make = request_maker(ranker_meta, rng)
    work = [make(n) for n in (3, 50, 200, 7)]

    async def main() -> list[np.ndarray]:
        async with grpcaio.InferenceServerClient(live_server.grpc_url) as aclient:
            assert await aclient.is_server_ready()

            async def one(ids: np.ndarray, user: np.ndarray, feats: np.ndarray) -> np.ndarray:
                result = await aclient.infer(
                    "ranker_int8",
                    make_inputs(ids, user, feats),
                    outputs=[grpcaio.InferRequestedOutput("scores")],
                    client_timeout=TIMEOUT_S,
                )
                return result.as_numpy("scores")

            return await asyncio.gather(*(one(*request) for request in work))

    results = asyncio.run(asyncio.wait_for(main(), timeout=2 * TIMEOUT_S))
    for request, got in zip(work, results, strict=True):
        np.testing.assert_allclose(got[0], score_alone(sessions["int8"], *request), rtol=1e-5, atol=1e-5)


def test_startup_failure_fails_fast_with_log(ranker_model_dir: Path, tmp_path: Path) -> None:
    """A model that cannot load makes tritonserver exit; start() raises with the log tail, quickly."""
    repo = tmp_path / "repo"
    render_triton(ranker_model_dir, repo, target="cpu")
    (repo / "ranker_fp32" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server = TritonServer(log_file=tmp_path / "triton.log", startup_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(TritonStartupError) as info:
        server.start(repo)
    assert time.monotonic() - started < 30
    assert "ranker_fp32" in str(info.value)
    assert not server.is_alive()
    server.stop()


def test_crash_is_detected_and_restart_recovers(
    ranker_model_dir: Path, tmp_path: Path, ranker_meta: dict, rng: np.random.Generator
) -> None:
    import os
    import signal

    repo = tmp_path / "repo"
    render_triton(ranker_model_dir, repo, target="cpu")
    with TritonServer(log_file=tmp_path / "triton.log") as server:
        server.start(repo)
        url = server.grpc_url
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.is_alive()
        server.restart()
        assert server.is_alive() and server.grpc_url == url  # same ports after restart
        request = request_maker(ranker_meta, rng)(4)
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            assert infer(c, "ranker_int8", *request).shape == (1, 4)
    assert not server.is_alive()


def test_explicit_model_control(ranker_model_dir: Path, tmp_path: Path) -> None:
    """Explicit mode loads only the named models; others load on demand through the client."""
    repo = tmp_path / "repo"
    render_triton(ranker_model_dir, repo, target="cpu")
    server = TritonServer(
        model_control_mode="explicit", load_models=["ranker_int8"], log_file=tmp_path / "t.log"
    )
    with server.start(repo), grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_model_ready("ranker_int8", client_timeout=TIMEOUT_S)
        assert not c.is_model_ready("ranker_fp32", client_timeout=TIMEOUT_S)
        c.load_model("ranker_fp32", client_timeout=TIMEOUT_S)
        assert c.is_model_ready("ranker_fp32", client_timeout=TIMEOUT_S)
    assert not server.is_alive()


def test_relative_work_dir(ranker_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative work dir (e.g. FOLIO_STATE_DIR=.folio/state) still finds its backends."""
    repo = tmp_path / "repo"
    render_triton(ranker_model_dir, repo, target="cpu")
    monkeypatch.chdir(tmp_path)
    server = TritonServer(work_dir=Path("work"), log_file=tmp_path / "t.log")
    with server.start(repo), grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_model_ready("ranker_int8", client_timeout=TIMEOUT_S)
