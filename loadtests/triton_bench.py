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
The parts: loadtests/triton/ (config: renderings and targets; model: the version's requests and in-process
ONNX Runtime; load: closed and open loop against a server; report: verdict, markdown, figure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort

from loadtests.harness.report import machine, save
from loadtests.triton.config import LEVERS, PAYLOADS, SERVICE_CONFIG, TUNED
from loadtests.triton.load import closed_loop, grpc_client, open_loop, serving, warm
from loadtests.triton.model import (
    RequestPool,
    model_version,
    ort_baseline,
    ort_op_profile,
    parity,
    request_pool,
)
from loadtests.triton.report import markdown, plot, verdict
from models.version import PRECISIONS
from runners.triton.repository import model_name

INT8 = model_name("int8")

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["PRECISIONS", "main", "parse_args", "run"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    model_dir, label, meta = model_version(args.tag, args.model_dir)
    seconds, warmup = float(args.seconds), float(args.warmup)
    pool = request_pool(model_dir, args.pool, args.candidates, seed=args.seed)
    result: dict[str, Any] = {
        "model": label,
        "model_dir": str(model_dir),
        "machine": machine(
            platform=platform.platform(), onnxruntime=ort.__version__, load_avg_start=list(os.getloadavg())
        ),
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
        "parity": parity(meta),
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
    models = [model_name(v) for v in PRECISIONS]
    with serving(model_dir, work, "service", SERVICE_CONFIG, models) as server:
        url = server.grpc_url
        out["server_startup_s"] = server.startup_s
        meta_client = grpc_client(url)
        out["machine_triton"] = {"version": (await meta_client.get_server_metadata(as_json=True))["version"]}
        await meta_client.close()
        for m in models:
            await warm(url, m, pool)
        saturation = {}
        for v in PRECISIONS:
            saturation[v] = await closed_loop(url, server, model_name(v), pool, args.users, **closed)
        slowest = min(r["rps"] for r in saturation.values())
        rate = float(args.rate) if args.rate else max(1.0, round(args.rate_fraction * slowest))
        fixed = {}
        for v in PRECISIONS:
            fixed[v] = await open_loop(url, server, model_name(v), pool, rate, seconds, warmup, args.seed)
        out["precision"] = {"saturation": saturation, "fixed_load": fixed, "offered_rps": rate}

        on = {}
        for users in (32, 64):
            if users == args.users and not args.per_user_clients:
                on[str(users)] = saturation["int8"]
            else:
                on[str(users)] = await closed_loop(
                    url, server, INT8, pool, users, seconds, warmup, per_user_clients=False
                )
        generator = {
            "shared": on["64"],
            "per_user": await closed_loop(
                url, server, INT8, pool, 64, seconds, warmup, per_user_clients=True
            ),
        }
        payload = {}
        if args.levers != ["none"]:
            for n in PAYLOADS:
                p = request_pool(model_dir, args.pool, n, seed=args.seed)
                payload[str(n)] = {
                    "mean_candidates": p.mean_candidates,
                    **(await closed_loop(url, server, INT8, p, 64, seconds, warmup, False)),
                }
            payload[str(args.candidates)] = {"mean_candidates": pool.mean_candidates, **on["64"]}
    out["generator"] = generator

    # Scenario 2 again on the tuned rendering (TUNED: small merged runs, one instance per core).
    tuned_config = {**SERVICE_CONFIG, **LEVERS[TUNED]}
    with serving(model_dir, work, "tuned", tuned_config, models) as server:
        for m in models:
            await warm(server.grpc_url, m, pool)
        out["precision"]["saturation_tuned"] = {
            v: await closed_loop(server.grpc_url, server, model_name(v), pool, args.users, **closed)
            for v in PRECISIONS
        }
        out["precision"]["tuned_config"] = LEVERS[TUNED]

    # Batching off: the same rendering without the dynamic_batching block.
    off_config = {**SERVICE_CONFIG, "dynamic_batching": False}
    with serving(model_dir, work, "off", off_config, [INT8]) as server:
        await warm(server.grpc_url, INT8, pool)
        off = {
            str(users): await closed_loop(
                server.grpc_url, server, INT8, pool, users, seconds, warmup, per_user_clients=False
            )
            for users in (32, 64)
        }
    out["batching"] = {"on": on, "off": off, "config_off": {**off_config, "preferred_batch_sizes": []}}

    levers: dict[str, Any] = {"service_default": {"config": {}, **on["64"]}}
    names = list(LEVERS) if args.levers == ["all"] else [n for n in args.levers if n in LEVERS]
    for name in names:
        config = {**SERVICE_CONFIG, **LEVERS[name]}
        with serving(model_dir, work, name, config, [INT8]) as server:
            await warm(server.grpc_url, INT8, pool)
            res = await closed_loop(server.grpc_url, server, INT8, pool, 64, seconds, warmup, False)
        lever_config = {k: list(v) if isinstance(v, tuple) else v for k, v in LEVERS[name].items()}
        levers[name] = {"config": lever_config, **res}
    out["levers"] = levers
    out["payload"] = payload
    return out


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
    result["markdown"] = markdown(result)
    save(args.out, "triton", result, plot)
    return result


if __name__ == "__main__":
    print(main()["markdown"])
