"""Scenarios 2 and 3, ranking through Triton: INT8 vs FP16 vs FP32, and dynamic batching on vs off.

    python -m loadtests.triton_bench [--tag TAG | --model-dir PATH] [--seconds 10] [--out docs/benchmarks]

Targets (from the load-test issue): INT8 ranking throughput >= 1.8x FP32 with NDCG@10 within 0.002 (the
parity numbers come from the stored version's metadata, or `metrics.json` next to `--model-dir`), and
dynamic batching >= 3x the ranking throughput of batching off at 64 concurrent users.

What it starts: the version's rankers are rendered (`render_triton`, target "cpu": Python backend + ONNX
Runtime) into a temporary repository, once as the service renders them (dynamic batching, its defaults)
and once with the `dynamic_batching` block left out (Triton's default scheduler: one request per
execution), and served by the embedded tritonserver (`TritonServer`, loopback, free ports,
explicit model control so that only the measured variants load). Each server is warmed up, measured and
stopped before the next one starts.

Requests are the service's: item_ids int64 [1, n], user_features float32 [1, D] and candidate_features
float32 [1, n*F] (F = ranker.json's candidate_feature_dim) -> scores [1, n], with n = ``--candidates``
(500, FOLIO_CANDIDATES). Requests are realistic when the model directory holds the retrieval and
item-item artifacts: the rows are the ranker feature rows of training users (user vector from their
history + genre profile), the ids and candidate features their candidates as `runners/stages/retrieval.py`
computes them (FAISS top-n unseen items merged with the item-item source, models.candidates);
otherwise (a bare ranker directory) uniform ids and Gaussian rows and features.

Load generator: asyncio + `tritonclient.grpc.aio` in this process, one shared client (one gRPC channel,
as the service holds one client per worker; ``--per-user-clients`` gives each user its own), request
tensors prebuilt per pooled request so that the generator spends its CPU on gRPC, not on numpy.

* saturation: closed loop, ``--users`` (64) users with no think time;
* fixed load: open loop, Poisson arrivals at ``--rate`` requests/s (default: ``--rate-fraction`` x the
  lowest saturation rate of the three precisions, so every variant is below its saturation); latency
  counts from the scheduled arrival (no coordinated omission);
* batching on/off: closed loop with 32 and 64 users, INT8.

Every measurement runs ``--seconds`` after a warm-up (``--warmup``), and records Triton's statistics over
the same window (inference_count vs execution_count: the average batch; batch sizes; queue and compute
time per execution) and the CPU seconds of the server (tritonserver + Python-backend stubs) and of the
generator. The machine has 2 cores and the generator shares them with the server: the server CPU per
request is the generator-independent figure, throughputs are what one client process gets.

Context: in-process ONNX Runtime (1 thread) on the same ONNX files with 1 to 64 requests merged per run
(1: the ceiling of an unbatched server), and ONNX Runtime's profiler splitting one request's kernel
time into matrix products, (de)quantization and the rest (``ort_profile``; it explains the INT8 ratio).

Levers (``--levers``, INT8, 64 users, each on its own server): max_queue_delay_us, preferred batch sizes,
max batch size, instance count, intra_op threads, candidates per ONNX Runtime run, and batching off with
2 instances; and request payload (candidates per request) on the default server.

Writes <out>/triton.json and <out>/triton.png; ``main`` returns the numbers and a markdown section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import tritonclient.grpc.aio as grpcaio

from runners.triton.repository import MAX_CANDIDATES_PER_RUN, render_triton
from runners.triton.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("int8", "fp16", "fp32")
SERVICE_CONFIG: dict[str, Any] = {  # render_triton's defaults: what the service serves
    "dynamic_batching": True,
    "max_batch_size": 64,
    "max_queue_delay_us": 100,
    "instances": 1,
    "intra_op_threads": 1,
    "preferred_batch_sizes": (),
    "max_candidates_per_run": MAX_CANDIDATES_PER_RUN,
}
LEVERS: dict[str, dict[str, Any]] = {
    "delay_0us": {"max_queue_delay_us": 0},
    "delay_2000us": {"max_queue_delay_us": 2000},
    "preferred_4_8": {"preferred_batch_sizes": (4, 8)},
    "max_batch_4": {"max_batch_size": 4},
    "max_batch_8": {"max_batch_size": 8},
    "instances_2": {"instances": 2},
    "max_batch_4_instances_2": {"max_batch_size": 4, "instances": 2},
    "intra_op_2": {"intra_op_threads": 2},
    "one_run_per_batch": {"max_candidates_per_run": 1_000_000},  # before: the whole batch in one run
    "one_run_per_request": {"max_candidates_per_run": 1},
    "off_instances_2": {"dynamic_batching": False, "instances": 2},
}
TUNED = "max_batch_4_instances_2"  # the rendering scenario 2 is repeated on (see the levers)
PAYLOADS = (100, 1000)  # candidates per request, the payload lever (besides --candidates)
TARGET_INT8_SPEEDUP, TARGET_NDCG_DELTA, TARGET_BATCHING_SPEEDUP = 1.8, 0.002, 3.0
CALL_TIMEOUT_S = 30.0


# --- requests -----------------------------------------------------------------------------------------


@dataclass
class RequestPool:
    """Prebuilt request tensors; `counts[i]` candidates in request i."""

    inputs: list[list[grpcaio.InferInput]]
    counts: np.ndarray
    # (item_ids int64 [n], user row float32 [1, D], candidate features float32 [n * F], flat)
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    source: str

    @property
    def mean_candidates(self) -> float:
        return float(self.counts.mean())


def _tensors(ids: np.ndarray, user: np.ndarray, feats: np.ndarray) -> list[grpcaio.InferInput]:
    inputs = [
        grpcaio.InferInput("item_ids", [1, ids.size], "INT64"),
        grpcaio.InferInput("user_features", list(user.shape), "FP32"),
        grpcaio.InferInput("candidate_features", [1, feats.size], "FP32"),
    ]
    inputs[0].set_data_from_numpy(ids.reshape(1, -1))
    inputs[1].set_data_from_numpy(user)
    inputs[2].set_data_from_numpy(feats.reshape(1, -1))
    return inputs


def request_pool(model_dir: Path, size: int, candidates: int, seed: int = 0) -> RequestPool:
    """`size` requests of (up to) `candidates` ids each, realistic when the retrieval artifacts exist."""
    rng = np.random.default_rng(seed)
    meta = json.loads((model_dir / "ranker.json").read_text())
    n_items, dim = int(meta["n_items"]), int(meta["user_feature_dim"])
    f = int(meta["candidate_feature_dim"])
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    needed = (
        "retrieval.npz",
        "item_item.npz",
        "items.faiss",
        "histories.npz",
        "catalog.json",
        "popularity.npy",
    )
    if all((model_dir / name).exists() for name in needed):
        import faiss

        from models.candidates import DEFAULT_RATING_WEIGHT, user_candidates
        from models.features import genre_matrix, item_tables, user_features
        from models.item_item import ItemItem
        from models.user_encoder import RetrievalWeights

        weights = RetrievalWeights.load(str(model_dir / "retrieval.npz"))
        item_item = ItemItem.load(model_dir / "item_item.npz")
        index = faiss.read_index(str(model_dir / "items.faiss"))
        catalog = json.loads((model_dir / "catalog.json").read_text())
        years = np.array([np.nan if c.get("year") is None else c["year"] for c in catalog], np.float32)
        genres = genre_matrix([tuple(c["genres"]) for c in catalog], tuple(meta["feature_spec"]["genres"]))
        tables = item_tables(np.load(model_dir / "popularity.npy"), years, genres)
        with np.load(model_dir / "histories.npz") as h:
            indptr, indices = h["indptr"], h["indices"]
            rated = h["weights"] if "weights" in h.files else np.full(indices.size, DEFAULT_RATING_WEIGHT)
        rows = rng.choice(len(indptr) - 1, size=size, replace=len(indptr) - 1 < size)
        for r in rows:  # runners/retrieval.RetrievalStage.candidates, without a ServedModel
            hist = indices[indptr[r] : indptr[r + 1]].astype(np.int64)
            ratings = rated[indptr[r] : indptr[r + 1]].astype(np.float32)
            vec = weights.user_vectors([hist])
            user = user_features(vec, [hist], tables).astype(np.float32)
            _, found = index.search(vec, min(n_items, candidates + len(hist)))
            seen = np.zeros(n_items, dtype=bool)
            seen[hist] = True
            top = found[0][(found[0] >= 0) & ~seen[np.maximum(found[0], 0)]][:candidates].astype(np.int64)
            c = user_candidates(vec[0], weights.item_vectors, top, item_item, hist, ratings, seen, candidates)
            if c.items.size == 0:  # a user who has seen everything: nothing to rank, as in the service
                continue
            raw.append(
                (
                    np.ascontiguousarray(c.items, dtype=np.int64),
                    np.ascontiguousarray(user.reshape(1, dim)),
                    np.ascontiguousarray(c.features, dtype=np.float32).reshape(-1),
                )
            )
        source = "retrieval: training users' feature rows, their retrieval + item-item candidates"
    if not raw:
        for _ in range(size):
            ids = rng.integers(0, n_items, size=candidates, dtype=np.int64)
            user = rng.standard_normal((1, dim)).astype(np.float32)
            raw.append((ids, user, rng.standard_normal(candidates * f).astype(np.float32)))
        source = "random: uniform ids, Gaussian user rows and candidate features (no retrieval artifacts)"
    counts = np.array([ids.size for ids, _, _ in raw], dtype=np.int64)
    return RequestPool([_tensors(*r) for r in raw], counts, raw, source)


# --- measurement ---------------------------------------------------------------------------------------


def _percentiles(lat_s: list[float]) -> dict[str, float]:
    if not lat_s:
        return {"p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan, "mean_ms": math.nan}
    a = np.asarray(lat_s) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def _cpu_s(proc: psutil.Process | None) -> float:
    """User + system CPU seconds of `proc` and its live children (the Python-backend stubs)."""
    if proc is None:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _stat(entry: dict[str, Any], key: str) -> tuple[int, int]:
    s = entry.get(key, {})
    return int(s.get("count", 0)), int(s.get("ns", 0))


def _snapshot_stats(raw: dict[str, Any]) -> dict[str, Any]:
    m = raw["model_stats"][0]
    inf = m.get("inference_stats", {})
    batches: dict[int, tuple[int, int]] = {}
    for b in m.get("batch_stats", []):
        batches[int(b["batch_size"])] = _stat(b, "compute_infer")
    return {
        "inference_count": int(m.get("inference_count", 0)),
        "execution_count": int(m.get("execution_count", 0)),
        "success": _stat(inf, "success"),
        "queue": _stat(inf, "queue"),
        "compute_input": _stat(inf, "compute_input"),
        "compute_infer": _stat(inf, "compute_infer"),
        "compute_output": _stat(inf, "compute_output"),
        "batches": batches,
    }


def _stats_delta(a: dict[str, Any], b: dict[str, Any], window_s: float) -> dict[str, Any]:
    inferences = b["inference_count"] - a["inference_count"]
    executions = b["execution_count"] - a["execution_count"]
    requests = b["success"][0] - a["success"][0]
    hist = {}
    exec_ns = 0
    for size, (count, ns) in b["batches"].items():
        c0, n0 = a["batches"].get(size, (0, 0))
        if count - c0 > 0:
            hist[size] = count - c0
            exec_ns += ns - n0

    def per_request_ms(key: str) -> float:
        return (b[key][1] - a[key][1]) / max(1, requests) / 1e6

    top = sorted(hist.items(), key=lambda kv: -kv[1])[:5]
    return {
        "inferences": inferences,
        "executions": executions,
        "avg_batch": inferences / executions if executions else math.nan,
        "top_batch_sizes": {str(k): v for k, v in top},
        "queue_ms_per_request": per_request_ms("queue"),
        "compute_infer_ms_per_request": per_request_ms("compute_infer"),
        "compute_ms_per_execution": exec_ns / max(1, executions) / 1e6,
        "model_busy_fraction": exec_ns / 1e9 / window_s if window_s > 0 else math.nan,
    }


@dataclass
class Window:
    """Counters read at the start and the end of a measurement window."""

    server: TritonServer
    client: grpcaio.InferenceServerClient
    model: str
    proc: psutil.Process | None = field(init=False, default=None)
    marks: list[tuple[float, float, float, float, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        with contextlib.suppress(psutil.Error, TypeError):
            self.proc = psutil.Process(self.server.pid)

    async def mark(self) -> None:
        raw = await self.client.get_inference_statistics(
            model_name=self.model, as_json=True, client_timeout=CALL_TIMEOUT_S
        )
        mine = psutil.Process().cpu_times()
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        self.marks.append(
            (time.perf_counter(), _cpu_s(self.proc), mine.user + mine.system, busy, _snapshot_stats(raw))
        )

    def summary(self) -> dict[str, Any]:
        (t0, s0, g0, m0, a), (t1, s1, g1, m1, b) = self.marks[0], self.marks[-1]
        window = t1 - t0
        server, generator = (s1 - s0) / window, (g1 - g0) / window
        return {
            "window_s": window,
            "server_cpu_cores": server,
            "generator_cpu_cores": generator,
            # Everything else on the machine in the same window (other tenants of a shared host).
            "other_cpu_cores": max(0.0, (m1 - m0) / window - server - generator),
            "triton": _stats_delta(a, b, window),
        }


def _client(url: str) -> grpcaio.InferenceServerClient:
    return grpcaio.InferenceServerClient(url)


async def _closed_loop(
    url: str, server: TritonServer, model: str, pool: RequestPool, users: int, seconds: float,
    warmup_s: float, per_user_clients: bool,
) -> dict[str, Any]:  # fmt: skip
    shared = _client(url)
    clients = [_client(url) for _ in range(users)] if per_user_clients else [shared] * users
    outputs = [grpcaio.InferRequestedOutput("scores")]
    window = Window(server, shared, model)
    start = time.perf_counter()
    measure_from, measure_to = start + warmup_s, start + warmup_s + seconds
    done: list[tuple[float, float, int]] = []  # (completed at, latency, candidates)
    errors = 0

    async def user(k: int) -> None:
        nonlocal errors
        client, i = clients[k], k * 7919
        while (now := time.perf_counter()) < measure_to:
            j = i % len(pool.inputs)
            i += 1
            try:
                await client.infer(model, pool.inputs[j], outputs=outputs, client_timeout=CALL_TIMEOUT_S)
            except Exception:
                errors += 1
                continue
            end = time.perf_counter()
            if measure_from <= end <= measure_to:  # completions in the window: throughput and latency
                done.append((end, end - now, int(pool.counts[j])))

    async def marker() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        await window.mark()
        await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
        await window.mark()

    try:
        await asyncio.gather(marker(), *(user(k) for k in range(users)))
    finally:
        for c in {id(c): c for c in [shared, *clients]}.values():
            await c.close()
    summary = window.summary()
    span = summary["window_s"]
    n_done = len(done)
    return {
        "mode": "closed",
        "users": users,
        "clients": "per-user" if per_user_clients else "shared",
        "requests": n_done,
        "errors": errors,
        "rps": n_done / span,
        "candidates_per_s": sum(c for _, _, c in done) / span,
        **_percentiles([lat for _, lat, _ in done]),
        **summary,
    }


async def _open_loop(
    url: str, server: TritonServer, model: str, pool: RequestPool, rate: float, seconds: float,
    warmup_s: float, seed: int = 0, max_outstanding: int = 2000,
) -> dict[str, Any]:  # fmt: skip
    client = _client(url)
    outputs = [grpcaio.InferRequestedOutput("scores")]
    window = Window(server, client, model)
    rng = np.random.default_rng(seed)
    total = warmup_s + seconds
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * total * 1.5) + 10))
    arrivals = arrivals[arrivals < total]
    lat: list[float] = []
    cands = 0
    errors = dropped = 0
    outstanding: set[asyncio.Task[None]] = set()

    async def one(j: int, scheduled: float, counted: bool) -> None:
        nonlocal errors, cands
        try:
            await client.infer(model, pool.inputs[j], outputs=outputs, client_timeout=CALL_TIMEOUT_S)
        except Exception:
            errors += 1
            return
        if counted:
            lat.append(time.perf_counter() - scheduled)
            cands += int(pool.counts[j])

    start = time.perf_counter()
    marked = False
    try:
        for k, offset in enumerate(arrivals):
            scheduled = start + float(offset)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            counted = offset >= warmup_s
            if counted and not marked:
                await window.mark()
                marked = True
            if len(outstanding) >= max_outstanding:
                dropped += 1
                continue
            task = asyncio.create_task(one(k % len(pool.inputs), scheduled, counted))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.wait(set(outstanding), timeout=CALL_TIMEOUT_S)
        await window.mark()
    finally:
        await client.close()
    summary = window.summary()
    offered = int((arrivals >= warmup_s).sum())
    return {
        "mode": "open",
        "offered_rps": rate,
        "requests": len(lat),
        "offered": offered,
        "errors": errors,
        "dropped": dropped,
        "rps": len(lat) / seconds,
        "candidates_per_s": cands / seconds,
        **_percentiles(lat),
        **summary,
    }


# --- servers ------------------------------------------------------------------------------------------


def _render(model_dir: Path, out: Path, config: dict[str, Any]) -> None:
    render_triton(
        model_dir,
        out,
        target="cpu",
        max_batch_size=int(config["max_batch_size"]),
        max_queue_delay_us=int(config["max_queue_delay_us"]),
        instances=int(config["instances"]),
        intra_op_threads=int(config["intra_op_threads"]),
        preferred_batch_sizes=tuple(config["preferred_batch_sizes"]),
        dynamic_batching=bool(config["dynamic_batching"]),
        max_candidates_per_run=int(config["max_candidates_per_run"]),
    )


@contextlib.contextmanager
def serving(
    model_dir: Path, work: Path, name: str, config: dict[str, Any], models: list[str]
) -> Iterator[TritonServer]:
    """Render `config` into work/name/repo and serve `models` from it; stopped on exit."""
    repo = work / name / "repo"
    _render(model_dir, repo, config)
    server = TritonServer(
        log_file=work / name / "tritonserver.log",
        work_dir=work / name,
        model_control_mode="explicit",
        load_models=models,
        startup_timeout_s=120.0,
    )
    server.start(repo)
    try:
        yield server
    finally:
        server.stop()


async def _warm(url: str, model: str, pool: RequestPool, calls: int = 20) -> None:
    client = _client(url)
    try:
        outputs = [grpcaio.InferRequestedOutput("scores")]
        for i in range(calls):
            await client.infer(model, pool.inputs[i % len(pool.inputs)], outputs=outputs)
    finally:
        await client.close()


# --- in-process ONNX Runtime --------------------------------------------------------------------------


MERGED = (1, 2, 4, 8, 16, 32, 64)


def ort_session(path: Path, profile_prefix: str | None = None) -> ort.InferenceSession:
    """One-thread CPU session (training.export.session's settings, without importing PyTorch with it);
    with ``profile_prefix`` ONNX Runtime's profiler records every run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_baseline(model_dir: Path, pool: RequestPool, seconds: float, repeats: int = 3) -> dict[str, Any]:
    """Candidates/s of each variant in this process, 1 thread, with k requests merged per run (k in MERGED),
    as the Python backend merges a dynamic batch: `batch_1` is the unbatched ceiling. Best of `repeats`
    windows of `seconds` each."""
    out: dict[str, Any] = {}
    for variant in PRECISIONS:
        session = ort_session(model_dir / f"ranker_{variant}.onnx")
        row: dict[str, Any] = {}
        for k in MERGED:
            feeds_list = []
            for s in range(0, min(len(pool.raw), 8 * k), k):
                chunk = pool.raw[s : s + k]
                ids = np.concatenate([c[0] for c in chunk])
                feeds_list.append(
                    {
                        "item_ids": ids,
                        "user_features": np.concatenate([c[1] for c in chunk]),
                        "candidate_ends": np.cumsum([c[0].size for c in chunk]).astype(np.int32),
                        "candidate_features": np.concatenate([c[2] for c in chunk]),
                    }
                )
            for feeds in feeds_list[:2]:
                session.run(["scores"], feeds)
            best: dict[str, float] = {}
            for _ in range(repeats):  # best of `repeats`: the machine is shared, contention only slows
                runs = cands = requests = 0
                t0 = time.perf_counter()
                while (elapsed := time.perf_counter() - t0) < seconds or runs == 0:
                    feeds = feeds_list[runs % len(feeds_list)]
                    session.run(["scores"], feeds)
                    runs += 1
                    cands += feeds["item_ids"].size
                    requests += feeds["candidate_ends"].size
                if cands / elapsed > best.get("candidates_per_s", 0.0):
                    best = {
                        "requests_per_run": requests / runs,
                        "ms_per_run": elapsed / runs * 1e3,
                        "candidates_per_s": cands / elapsed,
                        "requests_per_s": requests / elapsed,
                    }
            row[f"batch_{k}"] = best
        out[variant] = row
    return out


# ONNX Runtime's node kinds after graph optimization, grouped for the INT8 bound.
MATMUL_OPS = {"Gemm", "FusedGemm", "QGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}  # fmt: skip
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def ort_op_profile(
    model_dir: Path, pool: RequestPool, runs: int = 200, warmup: int = 20
) -> dict[str, dict[str, float]]:
    """Microseconds per single-request run of each variant by node kind (ONNX Runtime's profiler, 1
    thread): matrix products, (de)quantization, and the rest (item-table gathers, feature arithmetic),
    which INT8 leaves in FP32."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="folio-ort-profile-") as tmp:
        for variant in PRECISIONS:
            session = ort_session(model_dir / f"ranker_{variant}.onnx", profile_prefix=f"{tmp}/{variant}")
            for i in range(warmup + runs):
                ids, row, feats = pool.raw[i % len(pool.raw)]
                ends = np.array([ids.size], np.int32)
                feeds = {
                    "item_ids": ids,
                    "user_features": row,
                    "candidate_ends": ends,
                    "candidate_features": feats,
                }
                session.run(["scores"], feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
            starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
            assert len(starts) == warmup + runs, f"{len(starts)} model_run events"
            us = {"matmul_us": 0.0, "qdq_us": 0.0, "other_us": 0.0}
            for e in events:
                if e["ts"] < starts[warmup]:
                    continue  # a warm-up run
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    op = e["args"].get("op_name", "")
                    key = "matmul_us" if op in MATMUL_OPS else "qdq_us" if op in QDQ_OPS else "other_us"
                    us[key] += e["dur"] / runs
            out[variant] = {**us, "total_us": sum(us.values())}
    return out


# --- orchestration -------------------------------------------------------------------------------------


def _model_dir(tag: str | None, model_dir: Path | None) -> tuple[Path, str, dict[str, Any]]:
    if model_dir is not None:
        metrics = model_dir / "metrics.json"
        meta = json.loads(metrics.read_text()) if metrics.exists() else {}
        return model_dir, str(model_dir), meta
    from models import registry

    model = registry.get(tag) if tag else registry.production()
    if model is None:
        raise SystemExit("no production model in the store: pass --tag or --model-dir")
    return Path(model.path), str(model.tag), dict(model.info.metadata)


def _machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "load_avg_start": list(os.getloadavg()),
    }


def _parity(meta: dict[str, Any]) -> dict[str, Any]:
    parity = meta.get("parity") or {}
    out: dict[str, Any] = {}
    for key in ("ndcg", "test_ndcg"):
        ndcg = parity.get(key) or {}
        if "fp32" in ndcg:
            out[key] = {v: float(ndcg[v]) for v in PRECISIONS if v in ndcg}
            out[f"{key}_delta_int8"] = float(ndcg.get("int8", math.nan)) - float(ndcg["fp32"])
    if "top10_agreement" in parity:
        out["top10_agreement"] = parity["top10_agreement"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    model_dir, label, meta = _model_dir(args.tag, args.model_dir)
    seconds, warmup = float(args.seconds), float(args.warmup)
    pool = request_pool(model_dir, args.pool, args.candidates, seed=args.seed)
    result: dict[str, Any] = {
        "model": label,
        "model_dir": str(model_dir),
        "machine": _machine(),
        "settings": {
            "seconds": seconds,
            "warmup_s": warmup,
            "candidates": args.candidates,
            "mean_candidates": pool.mean_candidates,
            "pool": len(pool.inputs),
            "requests": pool.source,
            "users": args.users,
            "clients": "per-user" if args.per_user_clients else "shared",
            "service_config": {**SERVICE_CONFIG, "preferred_batch_sizes": []},
        },
        "parity": _parity(meta),
    }
    result["ort_in_process"] = ort_baseline(model_dir, pool, min(0.5, seconds / 20))
    result["ort_profile"] = ort_op_profile(model_dir, pool)

    work = Path(tempfile.mkdtemp(prefix="folio-triton-bench-"))
    try:
        result.update(asyncio.run(_scenarios(args, model_dir, pool, work, seconds, warmup)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    result["verdict"] = verdict(result)
    result["total_s"] = time.perf_counter() - started
    return result


async def _scenarios(
    args: argparse.Namespace, model_dir: Path, pool: RequestPool, work: Path, seconds: float, warmup: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    closed = {"seconds": seconds, "warmup_s": warmup, "per_user_clients": args.per_user_clients}

    # Scenario 2 and the batching-on half of scenario 3: the service's rendering, all three variants.
    models = [f"ranker_{v}" for v in PRECISIONS]
    with serving(model_dir, work, "service", SERVICE_CONFIG, models) as server:
        url = server.grpc_url
        out["server_startup_s"] = server.startup_s
        meta_client = _client(url)
        out["machine_triton"] = {"version": (await meta_client.get_server_metadata(as_json=True))["version"]}
        await meta_client.close()
        for m in models:
            await _warm(url, m, pool)
        saturation = {}
        for v in PRECISIONS:
            saturation[v] = await _closed_loop(url, server, f"ranker_{v}", pool, args.users, **closed)
        slowest = min(r["rps"] for r in saturation.values())
        rate = float(args.rate) if args.rate else max(1.0, round(args.rate_fraction * slowest))
        fixed = {}
        for v in PRECISIONS:
            fixed[v] = await _open_loop(url, server, f"ranker_{v}", pool, rate, seconds, warmup, args.seed)
        out["precision"] = {"saturation": saturation, "fixed_load": fixed, "offered_rps": rate}

        on = {}
        for users in (32, 64):
            if users == args.users and not args.per_user_clients:
                on[str(users)] = saturation["int8"]
            else:
                on[str(users)] = await _closed_loop(
                    url, server, "ranker_int8", pool, users, seconds, warmup, per_user_clients=False
                )
        generator = {
            "shared": on["64"],
            "per_user": await _closed_loop(
                url, server, "ranker_int8", pool, 64, seconds, warmup, per_user_clients=True
            ),
        }
        payload = {}
        if args.levers != ["none"]:
            for n in PAYLOADS:
                p = request_pool(model_dir, args.pool, n, seed=args.seed)
                payload[str(n)] = {
                    "mean_candidates": p.mean_candidates,
                    **(await _closed_loop(url, server, "ranker_int8", p, 64, seconds, warmup, False)),
                }
            payload[str(args.candidates)] = {"mean_candidates": pool.mean_candidates, **on["64"]}
    out["generator"] = generator

    # Scenario 2 again on the tuned rendering (TUNED: small merged runs, one instance per core).
    tuned_config = {**SERVICE_CONFIG, **LEVERS[TUNED]}
    with serving(model_dir, work, "tuned", tuned_config, models) as server:
        for m in models:
            await _warm(server.grpc_url, m, pool)
        out["precision"]["saturation_tuned"] = {
            v: await _closed_loop(server.grpc_url, server, f"ranker_{v}", pool, args.users, **closed)
            for v in PRECISIONS
        }
        out["precision"]["tuned_config"] = LEVERS[TUNED]

    # Batching off: the same rendering without the dynamic_batching block.
    off_config = {**SERVICE_CONFIG, "dynamic_batching": False}
    with serving(model_dir, work, "off", off_config, ["ranker_int8"]) as server:
        await _warm(server.grpc_url, "ranker_int8", pool)
        off = {
            str(users): await _closed_loop(
                server.grpc_url, server, "ranker_int8", pool, users, seconds, warmup, per_user_clients=False
            )
            for users in (32, 64)
        }
    out["batching"] = {"on": on, "off": off, "config_off": {**off_config, "preferred_batch_sizes": []}}

    levers: dict[str, Any] = {"service_default": {"config": {}, **on["64"]}}
    names = list(LEVERS) if args.levers == ["all"] else [n for n in args.levers if n in LEVERS]
    for name in names:
        config = {**SERVICE_CONFIG, **LEVERS[name]}
        with serving(model_dir, work, name, config, ["ranker_int8"]) as server:
            await _warm(server.grpc_url, "ranker_int8", pool)
            res = await _closed_loop(server.grpc_url, server, "ranker_int8", pool, 64, seconds, warmup, False)
        lever_config = {k: list(v) if isinstance(v, tuple) else v for k, v in LEVERS[name].items()}
        levers[name] = {"config": lever_config, **res}
    out["levers"] = levers
    out["payload"] = payload
    return out


def verdict(r: dict[str, Any]) -> dict[str, Any]:
    sat = r["precision"]["saturation"]
    speedup = sat["int8"]["candidates_per_s"] / sat["fp32"]["candidates_per_s"]
    fixed = r["precision"]["fixed_load"]

    def cpu_per_request(v: str) -> float:
        row = fixed[v]
        return row["server_cpu_cores"] * row["window_s"] / max(1, row["requests"])

    server_cpu_ratio = cpu_per_request("fp32") / cpu_per_request("int8")
    ort = r["ort_in_process"]
    ort_ratio = ort["int8"]["batch_1"]["candidates_per_s"] / ort["fp32"]["batch_1"]["candidates_per_s"]
    ort_ratio_b = ort["int8"]["batch_32"]["candidates_per_s"] / ort["fp32"]["batch_32"]["candidates_per_s"]
    parity = r["parity"]
    delta = parity.get("test_ndcg_delta_int8", parity.get("ndcg_delta_int8", math.nan))
    on, off = r["batching"]["on"], r["batching"]["off"]
    batching = {u: on[u]["candidates_per_s"] / off[u]["candidates_per_s"] for u in ("32", "64")}
    best_lever = max(r["levers"].items(), key=lambda kv: kv[1]["candidates_per_s"])
    tuned = r["precision"]["saturation_tuned"]
    off64 = off["64"]
    # What batching could at best save: the server's CPU per request with batching off, against the model
    # alone at its cheapest merged size (in-process ORT). Batching amortizes only the difference.
    off_cpu_ms = off64["server_cpu_cores"] * off64["window_s"] / max(1, off64["requests"]) * 1e3
    n = r["settings"]["mean_candidates"]
    ideal_ms = min(n / ort["int8"][f"batch_{k}"]["candidates_per_s"] * 1e3 for k in MERGED)
    return {
        "int8_vs_fp32_triton": speedup,
        "int8_vs_fp32_server_cpu_per_request": server_cpu_ratio,
        "int8_vs_fp32_ort_batch_1": ort_ratio,
        "int8_vs_fp32_ort_batch_32": ort_ratio_b,
        "int8_vs_fp32_triton_tuned": tuned["int8"]["candidates_per_s"] / tuned["fp32"]["candidates_per_s"],
        "int8_ndcg_delta": delta,
        "int8_target_met": bool(speedup >= TARGET_INT8_SPEEDUP and abs(delta) <= TARGET_NDCG_DELTA),
        "batching_on_vs_off": batching,
        "batching_target_met": bool(batching["64"] >= TARGET_BATCHING_SPEEDUP),
        "off_server_cpu_ms_per_request": off_cpu_ms,
        "off_compute_ms_per_execution": off64["triton"]["compute_ms_per_execution"],
        "ort_best_ms_per_request": ideal_ms,
        "python_backend_overhead_ms": off64["triton"]["compute_ms_per_execution"]
        - n / ort["int8"]["batch_1"]["candidates_per_s"] * 1e3,
        "batching_gain_bound": off_cpu_ms / ideal_ms,
        "best_lever": best_lever[0],
        "best_lever_vs_default": best_lever[1]["candidates_per_s"]
        / r["levers"]["service_default"]["candidates_per_s"],
    }


# --- report -------------------------------------------------------------------------------------------


def _f(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def int8_bound(r: dict[str, Any]) -> str:
    """Why INT8 gains what it gains: where one request's kernel time goes (profiler shares), the
    in-process ratio at the service's run size, and what Triton adds to every precision."""
    f32, i8 = r["ort_profile"]["fp32"], r["ort_profile"]["int8"]
    ort, n = r["ort_in_process"], r["settings"]["mean_candidates"]
    k = max(k for k in MERGED if k == 1 or k * n <= SERVICE_CONFIG["max_candidates_per_run"])
    in_process = ort["int8"][f"batch_{k}"]["candidates_per_s"] / ort["fp32"][f"batch_{k}"]["candidates_per_s"]
    overhead_us = r["verdict"]["python_backend_overhead_ms"] * 1e3
    share = {key: i8[key] / f32["total_us"] for key in ("matmul_us", "qdq_us", "other_us")}
    parts = [
        "Why: ONNX Runtime's profiler (one request per run, 1 thread; the profiler itself slows INT8's",
        "many small nodes more, so its times serve as shares) puts",
        f"{f32['matmul_us'] / f32['total_us']:.0%} of FP32's kernel time in matrix products. INT8 runs",
        f"them {f32['matmul_us'] / i8['matmul_us']:.1f}x faster, but in FP32 time units it adds",
        f"{share['qdq_us']:.0%} of (de)quantization and keeps the other {share['other_us']:.0%} (item-table",
        "gathers, feature arithmetic) in FP32. Unprofiled, at the service's run size",
        f"({k} request(s) of {n:.0f} candidates per run), INT8 is {in_process:.2f}x FP32 in process;",
        "through Triton every precision also pays the same gRPC, scheduling and Python-backend work",
        f"(with batching off, {overhead_us:.0f} us per execution beyond the ONNX Runtime run), which pulls",
        f"that to the {r['verdict']['int8_vs_fp32_triton']:.2f}x measured.",
    ]
    return " ".join(parts)


def markdown(r: dict[str, Any]) -> str:
    s, v, m = r["settings"], r["verdict"], r["machine"]
    sat, fixed = r["precision"]["saturation"], r["precision"]["fixed_load"]
    ort = r["ort_in_process"]
    lines = [
        "### Ranking through Triton (scenarios 2 and 3)",
        "",
        f"Model `{r['model']}`; requests of {s['candidates']} candidates (mean {s['mean_candidates']:.0f}; "
        f"{s['requests']}); embedded tritonserver {r.get('machine_triton', {}).get('version', '?')}, "
        "Python backend + ONNX Runtime CPU, rendered as the service renders it (dynamic batching, "
        "max_queue_delay 500 us, 1 instance, 1 intra-op thread). Load: asyncio + tritonclient.grpc.aio "
        f"in one process, {s['clients']} client, {s['seconds']:.0f} s per point after {s['warmup_s']:.0f} s "
        f"warm-up. Machine: {m['cores']} cores ({m['cpu']}), shared: load average "
        f"{m['load_avg_start'][0]:.1f} at start. The generator shares the cores with the server "
        "(its share is in the tables), so throughputs are what one client process gets; the server CPU "
        "per request is the generator-independent figure.",
        "",
        f"### INT8 vs FP16 vs FP32 ({s['users']} closed-loop users; fixed load "
        f"{r['precision']['offered_rps']:.0f} req/s, Poisson)",
        "",
        "| precision | cand/s (Triton, saturated) | req/s | p50 ms | p99 ms | avg batch | server CPU cores | "
        "generator CPU cores | p50 / p99 ms at fixed load | server CPU ms/req at fixed load | "
        "ORT in-process cand/s (1 req / 32 req per run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in PRECISIONS:
        a, b = sat[p], fixed[p]
        cpu_ms = b["server_cpu_cores"] * b["window_s"] / max(1, b["requests"]) * 1e3
        lines.append(
            f"| {p} | {_f(a['candidates_per_s'])} | {_f(a['rps'])} | {_f(a['p50_ms'], 1)} | "
            f"{_f(a['p99_ms'], 1)} | {_f(a['triton']['avg_batch'], 1)} | {_f(a['server_cpu_cores'], 2)} | "
            f"{_f(a['generator_cpu_cores'], 2)} | {_f(b['p50_ms'], 1)} / {_f(b['p99_ms'], 1)} | "
            f"{_f(cpu_ms, 2)} | {_f(ort[p]['batch_1']['candidates_per_s'])} / "
            f"{_f(ort[p]['batch_32']['candidates_per_s'])} |"
        )
    lines += [
        "",
        "In-process ONNX Runtime, 1 thread, k requests merged into one run (as the Python backend merges a "
        "dynamic batch), thousand candidates/s:",
        "",
        "| precision | " + " | ".join(f"k={k}" for k in MERGED) + " |",
        "|---|" + "---|" * len(MERGED),
    ]
    for p in PRECISIONS:
        cells = " | ".join(_f(ort[p][f"batch_{k}"]["candidates_per_s"] / 1e3) for k in MERGED)
        lines.append(f"| {p} | {cells} |")
    par = r["parity"]
    lines += [
        "",
        f"INT8 / FP32 candidates/s through Triton: **{v['int8_vs_fp32_triton']:.2f}x** (server CPU per "
        f"request: {v['int8_vs_fp32_server_cpu_per_request']:.2f}x less; in-process ORT: "
        f"{v['int8_vs_fp32_ort_batch_1']:.2f}x at 1 request per run, {v['int8_vs_fp32_ort_batch_32']:.2f}x "
        f"at 32; through Triton on the tuned rendering {json.dumps(r['precision']['tuned_config'])}: "
        f"{v['int8_vs_fp32_triton_tuned']:.2f}x (2 instances: up to 2 cores, ORT in-process is 1 thread), "
        + ", ".join(
            f"{p} {_f(r['precision']['saturation_tuned'][p]['candidates_per_s'])} cand/s" for p in PRECISIONS
        )
        + f"). NDCG@10 INT8 - FP32 (stored parity): test {_f(par.get('test_ndcg_delta_int8'), 4)}, "
        f"valid {_f(par.get('ndcg_delta_int8'), 4)}.",
        "",
        int8_bound(r),
        "",
        "### Dynamic batching on vs off (INT8, closed loop)",
        "",
        "| users | batching | req/s | cand/s | p50 ms | p99 ms | avg batch (inferences/executions) | "
        "compute ms/execution | server CPU cores | generator CPU cores | other tenants' CPU cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for users in ("32", "64"):
        for mode in ("on", "off"):
            a = r["batching"][mode][users]
            t = a["triton"]
            lines.append(
                f"| {users} | {mode} | {_f(a['rps'])} | {_f(a['candidates_per_s'])} | {_f(a['p50_ms'], 1)} | "
                f"{_f(a['p99_ms'], 1)} | {_f(t['avg_batch'], 1)} ({t['inferences']}/{t['executions']}) | "
                f"{_f(t['compute_ms_per_execution'], 2)} | {_f(a['server_cpu_cores'], 2)} | "
                f"{_f(a['generator_cpu_cores'], 2)} | {_f(a['other_cpu_cores'], 2)} |"
            )
    lines += [
        "",
        f"On / off: {v['batching_on_vs_off']['32']:.2f}x at 32 users, "
        f"**{v['batching_on_vs_off']['64']:.2f}x at 64 users**. Why: batching only amortizes the work around "
        "the model, and that is bounded: with batching off the server spends "
        f"{v['off_server_cpu_ms_per_request']:.2f} ms CPU per request, of which "
        f"{v['off_compute_ms_per_execution']:.2f} ms is the model execution (Python-backend round trip "
        f"included; in-process ORT {v['off_compute_ms_per_execution'] - v['python_backend_overhead_ms']:.2f} "
        f"ms), and the model alone at its cheapest run size costs {v['ort_best_ms_per_request']:.2f} ms "
        "per request, which no batching removes on a CPU (this ranker's cost per candidate grows with the "
        "run, see the k sweep, so model.py splits a batch into ONNX Runtime runs of at most "
        f"{SERVICE_CONFIG['max_candidates_per_run']} candidates; lever one_run_per_batch is the whole batch "
        "in one run, as before). "
        f"Batching can at best gain about {v['batching_gain_bound']:.2f}x here.",
        "",
        "### Levers (INT8, 64 users, one server each)",
        "",
        "| config | req/s | cand/s | p50 ms | p99 ms | avg batch | compute ms/execution | server CPU cores | "
        "other tenants' CPU cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in r["levers"].items():
        lines.append(
            f"| {name} {json.dumps(a['config']) if a['config'] else '(service)'} | {_f(a['rps'])} | "
            f"{_f(a['candidates_per_s'])} | {_f(a['p50_ms'], 1)} | {_f(a['p99_ms'], 1)} | "
            f"{_f(a['triton']['avg_batch'], 1)} | {_f(a['triton']['compute_ms_per_execution'], 2)} | "
            f"{_f(a['server_cpu_cores'], 2)} | {_f(a['other_cpu_cores'], 2)} |"
        )
    g = r["generator"]
    lines += [
        "",
        f"Generator: shared client {_f(g['shared']['rps'])} req/s vs one client per user "
        f"{_f(g['per_user']['rps'])} req/s (64 users, INT8).",
    ]
    if r["payload"]:
        lines += [
            "",
            "Payload (INT8, 64 users): "
            + "; ".join(
                f"{_f(a['mean_candidates'])} cand/request: {_f(a['rps'])} req/s, {_f(a['candidates_per_s'])} "
                f"cand/s, server CPU {_f(a['server_cpu_cores'], 2)} cores"
                for _, a in sorted(r["payload"].items(), key=lambda kv: int(kv[0]))
            )
            + ".",
        ]
    lines += [
        "",
        "### Verdict",
        "",
        f"* INT8 >= {TARGET_INT8_SPEEDUP}x FP32 with NDCG@10 within {TARGET_NDCG_DELTA}: "
        f"**{'met' if v['int8_target_met'] else 'missed'}** ({v['int8_vs_fp32_triton']:.2f}x; "
        f"NDCG delta {_f(v['int8_ndcg_delta'], 4)}).",
        f"* Dynamic batching >= {TARGET_BATCHING_SPEEDUP}x batching off at 64 users: "
        f"**{'met' if v['batching_target_met'] else 'missed'}** ({v['batching_on_vs_off']['64']:.2f}x).",
        f"* Best lever: {v['best_lever']} ({v['best_lever_vs_default']:.2f}x the service default).",
        "",
        f"Total run time {r['total_s']:.0f} s.",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    x = np.arange(len(PRECISIONS))
    sat = r["precision"]["saturation"]
    ort = r["ort_in_process"]
    bars = [
        ("Triton, saturated (service config)", [sat[p]["candidates_per_s"] for p in PRECISIONS]),
        (
            "Triton, saturated (tuned)",
            [r["precision"]["saturation_tuned"][p]["candidates_per_s"] for p in PRECISIONS],
        ),
        ("ORT in-process, 1 req/run", [ort[p]["batch_1"]["candidates_per_s"] for p in PRECISIONS]),
        ("ORT in-process, 32 req/run", [ort[p]["batch_32"]["candidates_per_s"] for p in PRECISIONS]),
    ]
    w = 0.2
    for i, (lbl, vals) in enumerate(bars):
        ax.bar(x + (i - 1.5) * w, [v / 1e3 for v in vals], w, label=lbl)
    ax.set_xticks(x, PRECISIONS)
    ax.set_ylabel("thousand candidates / s")
    ax.set_title(f"Ranking throughput per precision ({r['settings']['candidates']} cand/request)")
    ax.legend(fontsize=8)

    ax = axes[1]
    users = ["32", "64"]
    x = np.arange(len(users))
    for i, mode in enumerate(("on", "off")):
        vals = [r["batching"][mode][u]["rps"] for u in users]
        b = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=f"dynamic batching {mode}")
        for rect, u in zip(b, users, strict=True):
            cps = r["batching"][mode][u]["candidates_per_s"]
            ax.annotate(f"{cps / 1e3:.0f}k cand/s", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(x, [f"{u} users" for u in users])
    ax.set_ylabel("requests / s")
    ax.set_title("INT8: dynamic batching on vs off (closed loop)")
    ax.legend(fontsize=8)

    ax = axes[2]
    names = list(r["levers"])
    ax.barh(names, [r["levers"][n]["candidates_per_s"] / 1e3 for n in names], color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("thousand candidates / s")
    ax.set_title("INT8 levers, 64 users")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tag", help="model store version (default: production)")
    src.add_argument("--model-dir", type=Path, help="a directory with ranker_*.onnx + ranker.json instead")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=None, help="warm-up s per point (default 2, <= seconds)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--users", type=int, default=64, help="closed-loop users for the saturation runs")
    p.add_argument("--rate", type=float, default=None, help="open-loop offered req/s (default: auto)")
    p.add_argument("--rate-fraction", type=float, default=0.6, help="auto rate = this x slowest saturation")
    p.add_argument("--pool", type=int, default=256, help="distinct requests cycled through")
    p.add_argument("--per-user-clients", action="store_true", help="one gRPC client per user")
    p.add_argument("--levers", default="all", help=f"'all', 'none' or a comma list of {','.join(LEVERS)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(2.0, args.seconds)
    args.levers = [x.strip() for x in args.levers.split(",") if x.strip()]
    unknown = [x for x in args.levers if x not in (*LEVERS, "all", "none")]
    if unknown:
        p.error(f"unknown levers {unknown}; choose from {', '.join(LEVERS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    result["markdown"] = markdown(result)
    (args.out / "triton.json").write_text(json.dumps(result, indent=1, default=_json_default))
    plot(result, args.out / "triton.png")
    return result


if __name__ == "__main__":
    print(main()["markdown"])
