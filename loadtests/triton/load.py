"""Load against the embedded tritonserver: a closed loop of users with no think time, an open loop of Poisson
arrivals (loadtests/harness/openloop.py with a gRPC sender), and a `Window` of Triton's statistics and the
CPU seconds of the server and the generator around each measurement; `serving` renders and starts a server."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc.aio as grpcaio

from loadtests.harness.openloop import percentiles, poisson_arrivals, schedule
from loadtests.harness.process_tree import tree_cpu_s
from loadtests.triton.config import CALL_TIMEOUT_S
from loadtests.triton.model import RequestPool
from runners.triton.repository import render_triton
from runners.triton.server import TritonServer


def _percentiles(lat_s: list[float]) -> dict[str, float]:
    mean = float(np.mean(lat_s)) * 1e3 if lat_s else math.nan
    return {**percentiles(lat_s, (50, 90, 99)), "mean_ms": mean}


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
            (time.perf_counter(), tree_cpu_s(self.proc), mine.user + mine.system, busy, _snapshot_stats(raw))
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


def grpc_client(url: str) -> grpcaio.InferenceServerClient:
    return grpcaio.InferenceServerClient(url)


async def closed_loop(
    url: str, server: TritonServer, model: str, pool: RequestPool, users: int, seconds: float,
    warmup_s: float, per_user_clients: bool,
) -> dict[str, Any]:  # fmt: skip
    shared = grpc_client(url)
    clients = [grpc_client(url) for _ in range(users)] if per_user_clients else [shared] * users
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


async def open_loop(
    url: str, server: TritonServer, model: str, pool: RequestPool, rate: float, seconds: float,
    warmup_s: float, seed: int = 0, max_outstanding: int = 2000,
) -> dict[str, Any]:  # fmt: skip
    client = grpc_client(url)
    outputs = [grpcaio.InferRequestedOutput("scores")]
    window = Window(server, client, model)
    arrivals = poisson_arrivals(rate, warmup_s + seconds, seed)

    async def send(k: int) -> int:  # candidates ranked; 0: an error
        j = k % len(pool.inputs)
        try:
            await client.infer(model, pool.inputs[j], outputs=outputs, client_timeout=CALL_TIMEOUT_S)
        except Exception:
            return 0
        return int(pool.counts[j])

    try:
        first = int(np.searchsorted(arrivals, warmup_s))  # arrivals from warmup_s on are measured
        run = await schedule(
            send, arrivals, first, max_outstanding=max_outstanding, on_counted=window.mark,
            drain_timeout_s=CALL_TIMEOUT_S,
        )  # fmt: skip
        await window.mark()
    finally:
        await client.close()
    ok = [c for c in run.counted() if c.outcome]
    return {
        "mode": "open",
        "offered_rps": rate,
        "requests": len(ok),
        "offered": run.offered,
        "errors": sum(1 for c in run.completions if not c.outcome),
        "dropped": run.dropped,
        "rps": len(ok) / seconds,
        "candidates_per_s": sum(c.outcome for c in ok) / seconds,
        **_percentiles([c.latency_s for c in ok]),
        **window.summary(),
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


async def warm(url: str, model: str, pool: RequestPool, calls: int = 20) -> None:
    client = grpc_client(url)
    try:
        outputs = [grpcaio.InferRequestedOutput("scores")]
        for i in range(calls):
            await client.infer(model, pool.inputs[i % len(pool.inputs)], outputs=outputs)
    finally:
        await client.close()
