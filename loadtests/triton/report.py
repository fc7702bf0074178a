"""The Triton benchmark's verdict against its targets, its markdown section and its figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.harness.report import figure
from loadtests.harness.report import num as _f
from loadtests.triton.config import (
    MERGED,
    SERVICE_CONFIG,
    TARGET_BATCHING_SPEEDUP,
    TARGET_INT8_SPEEDUP,
    TARGET_NDCG_DELTA,
)
from models.version import PRECISIONS


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
    with figure(path, 3, (17, 4.8)) as axes:
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
                top = (rect.get_x() + rect.get_width() / 2, rect.get_height())
                ax.annotate(f"{cps / 1e3:.0f}k cand/s", top, ha="center", va="bottom", fontsize=8)
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
