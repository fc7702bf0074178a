"""Scenario 5, growth: /recommend latency and the stack's memory as the catalog and the candidates grow.

    python -m loadtests.growth_bench [--sizes 10000,100000,1000000] [--candidates 100,500,1000]
        [--candidate-size 100000] [--seconds 20] [--rps 50] [--out docs/benchmarks]

For each catalog size a synthetic version (loadtests/synthetic_model.py; reused when the store already
holds a servable one labelled dataset=synthetic-<n>, else built and timed) is served by `bentoml serve`
(one worker, embedded tritonserver, result cache off: FOLIO_CACHE_TTL_S=0, so every request retrieves,
ranks on Triton INT8 and applies the rules; rate limits off; store polling off), warmed up, then loaded
open loop at ``--rps`` for ``--seconds`` (requests leave on a fixed schedule whatever the answers do;
latency counts from the scheduled send time, so a stalled client or server shows up in it) with known
users (history of at least 5 items) in a shuffled cycle. Candidates: at ``--candidate-size`` the
service is restarted with FOLIO_CANDIDATES set to each of ``--candidates``.

Memory: RSS (and PSS, which splits shared pages between processes) summed over the `bentoml serve`
process tree: the serve supervisor, the worker, the tritonserver it starts and the Python-backend
stubs (one per ranker variant); sampled after start-up, after warm-up and during the load (the maximum
is reported). Writes ``<out>/growth.json`` and ``<out>/growth.png``; ``main`` returns the results with
a "markdown" section. The load generator shares the 2 cores with the server: compare sizes measured in
one run, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.harness.openloop import open_loop
from loadtests.harness.process_tree import MemorySampler
from loadtests.harness.report import figure, save
from loadtests.synthetic_model import build_synthetic_version, find_synthetic_version
from models import registry, version
from runners.platform.processes import ROOT, ServedFolio

log = logging.getLogger("loadtests.growth_bench")
DEFAULT_CANDIDATES = 200  # a trained version's default (training.pipeline.RankerConfig): the catalog sweep
MIN_HISTORY = 5  # FOLIO_COLD_START_THRESHOLD's default: users below it get the popularity path


def load(url: str, users: list[str], rps: float, seconds: float) -> dict[str, Any]:
    """POST /recommend for ``users`` in turn, open loop; the answers' ``fallback`` values counted."""

    def body(i: int) -> dict[str, Any]:
        return {"user_id": users[i % len(users)], "k": 10}

    result = open_loop(url, "/recommend", body, rps, seconds, warmup_s=0.0, tally="fallback")
    result["fallbacks"] = result.pop("tally")["fallback"]
    return result


def known_users(tag: str, limit: int = 5000, seed: int = 0) -> list[str]:
    """Users of the version's histories with at least MIN_HISTORY items (the retrieve + rank path)."""
    path = Path(registry.get(tag).path) / "histories.npz"
    with np.load(path) as h:
        lengths = np.diff(h["indptr"])
        users = [
            str(u) for u, n in zip(h["user_ids"].tolist(), lengths.tolist(), strict=True) if n >= MIN_HISTORY
        ]
    random.Random(seed).shuffle(users)
    return users[:limit]


def version_for(n_items: int) -> tuple[str, dict[str, Any]]:
    """(tag, build info): the stored synthetic version of ``n_items``, built now if there is none."""
    tag = find_synthetic_version(n_items)
    built_now, wall = False, None
    if tag is None:
        log.info("building synthetic-%d", n_items)
        t0 = time.perf_counter()
        tag = build_synthetic_version(n_items)
        built_now, wall = True, time.perf_counter() - t0
    meta = registry.get(tag).info.metadata
    synthetic: Any = meta.get("synthetic", {})
    steps = synthetic.get("build_seconds", {})
    onnx_bytes = synthetic.get("onnx_bytes", {})
    index: Any = meta.get("index", {})
    return tag, {
        "tag": tag,
        "built_now": built_now,
        "build_s": round(wall if wall is not None else sum(steps.values()), 1),
        "build_steps_s": steps,
        "index": index.get("kind"),
        "index_recall@10": index.get("recall@10_vs_exact"),
        "onnx_mb": {k: round(v / 2**20, 1) for k, v in onnx_bytes.items()},
        "store_mb": round(sum(f.stat().st_size for f in Path(registry.get(tag).path).iterdir()) / 2**20, 1),
    }


def trained_version(tag: str) -> tuple[str, dict[str, Any]]:
    """(tag, info) of a trained version (``--tags``), in ``version_for``'s shape, plus its item count and
    the candidate count it was trained with (ranker.json)."""
    model = registry.get(tag)
    meta: Any = model.info.metadata
    path = Path(model.path)
    index: Any = meta.get("index", {})
    ranker = json.loads((path / "ranker.json").read_text())
    return tag, {
        "tag": tag,
        "n_items": int(ranker["n_items"]),
        "trained_candidates": int(ranker.get("candidates", DEFAULT_CANDIDATES)),
        "dataset": str(model.info.labels.get("dataset", "?")),
        "built_now": False,
        "build_s": round(float(sum((meta.get("seconds") or {}).values())), 1),
        "index": index.get("kind"),
        "index_recall@10": index.get("recall@10_vs_exact"),
        "onnx_mb": {"int8": round((path / version.ranker_file("int8")).stat().st_size / 2**20, 1)},
        "store_mb": round(sum(f.stat().st_size for f in path.iterdir()) / 2**20, 1),
    }


def measure(tag: str, candidates: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Serve ``tag`` with ``candidates``, warm up, load it open loop, sample memory; stop it."""
    users = known_users(tag)
    state = work / f"state-{tag.split(':')[-1]}-{candidates}"
    state.mkdir(parents=True, exist_ok=True)
    env = {
        "FOLIO_MODEL_TAG": tag,
        "FOLIO_CACHE_TTL_S": "0",
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_STATE_DIR": str(state),
        "FOLIO_CANDIDATES": str(candidates),
        "FOLIO_MODEL_WATCH_S": "0",
        "FOLIO_WORKERS": "1",
        "FOLIO_SHED_LOOP_LAG_S": "0",  # a 100k-item request stalls the loop itself: latency, not shedding
    }
    server = ServedFolio(env, work / f"serve-{tag.split(':')[-1]}-{candidates}.log", startup_timeout_s=900)
    t0 = time.perf_counter()
    server.start()
    startup = time.perf_counter() - t0
    try:
        assert server.proc is not None
        with MemorySampler(server.proc.pid) as mem:
            after_start = mem.take()
            warm = load(server.url, users[::-1], args.rps, args.warmup_seconds)
            after_warm = mem.take()
            load_before = os.getloadavg()[0]
            result = load(server.url, users, args.rps, args.seconds)
            load_after = os.getloadavg()[0]
            mem.take()
        if not server.alive():
            raise RuntimeError(f"bentoml serve died during the load:\n{server.log_tail()}")
    finally:
        server.stop()
    gib = 2**30
    by_name: dict[str, float] = {}
    for p in mem.peak["processes"]:
        by_name[p["name"]] = round(by_name.get(p["name"], 0.0) + p["rss"] / gib, 3)
    return {
        "candidates": candidates,
        "startup_s": round(startup, 1),
        "warmup_errors": warm["errors"],
        **result,
        "rss_gib": round(mem.peak["rss"] / gib, 3),
        "pss_gib": round(mem.peak["pss"] / gib, 3),
        "rss_after_start_gib": round(after_start["rss"] / gib, 3),
        "rss_after_warmup_gib": round(after_warm["rss"] / gib, 3),
        "rss_by_process_gib": by_name,
        "processes": len(mem.peak["processes"]),
        # the machine's 1-minute load average around the load (2 cores; other jobs show up here)
        "loadavg": [round(load_before, 2), round(load_after, 2)],
    }


def plot(sizes: list[dict[str, Any]], cands: list[dict[str, Any]], path: Path) -> None:
    with figure(path, 3, (15, 4.2)) as ax:
        x = [r["n_items"] for r in sizes]
        for key, style in (("p50_ms", "o--"), ("p95_ms", "s--"), ("p99_ms", "o-")):
            ax[0].plot(x, [r[key] for r in sizes], style, label=key.split("_")[0])
        ax[0].set(xscale="log", xlabel="catalog items", ylabel="/recommend latency, ms",
                  title=f"latency vs catalog ({DEFAULT_CANDIDATES} candidates)")  # fmt: skip
        ax[0].legend()
        c = [r["candidates"] for r in cands]
        for key, style in (("p50_ms", "o--"), ("p95_ms", "s--"), ("p99_ms", "o-")):
            ax[1].plot(c, [r[key] for r in cands], style, label=key.split("_")[0])
        n_c = cands[0]["n_items"] if cands else 0
        ax[1].set(xlabel="candidates ranked per request", ylabel="ms",
                  title=f"latency vs candidates ({n_c:,} items)")  # fmt: skip
        ax[1].legend()
        ax[2].plot(x, [r["rss_gib"] for r in sizes], "o-", label="RSS (sum over the tree)")
        ax[2].plot(x, [r["pss_gib"] for r in sizes], "s--", label="PSS (shared pages split)")
        ax[2].set(xscale="log", xlabel="catalog items", ylabel="GiB", title="serving stack memory vs catalog")
        ax[2].legend()
        for a in ax:
            a.grid(alpha=0.3)


def _fallbacks(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row["fallbacks"].items()))


def _saturated(row: dict[str, Any]) -> bool:
    """Answers fell behind the offered rate, or Triton timed out and the fallback ranked."""
    behind = row["completed_rps"] < 0.95 * row["offered_rps"]
    return behind or any(k != "none" for k in row["fallbacks"]) or row["errors"] > 0


def _load(row: dict[str, Any]) -> str:
    return "-".join(f"{x:.1f}" for x in row.get("loadavg", []))


def markdown(result: dict[str, Any]) -> str:
    sizes, cands, rps, secs = result["sizes"], result["candidates"], result["rps"], result["seconds"]
    lines = [
        f"Open loop at {rps:g} requests/s for {secs:g} s per point, cache off (every request retrieves, "
        "ranks on the embedded Triton INT8 and applies the rules), known users, one worker; synthetic "
        f"versions (loadtests/synthetic_model.py) at {DEFAULT_CANDIDATES} candidates, trained versions "
        "(`--tags`, listed first) at the count they were trained with. Memory: the `bentoml serve` tree "
        "(supervisor, worker, tritonserver, Python-backend stubs), peak sample.",
        "",
        "| version | items | index | build s | ONNX int8 MB | start s | p50 ms | p95 ms | p99 ms | rps done "
        "| errors | fallbacks | RSS GiB | PSS GiB | load avg |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in [*result.get("trained", []), *sizes]:
        lines.append(
            f"| {r.get('dataset', 'synthetic')} | {r['n_items']:,} | {r['index']} "
            f"| {r['build_s']:.0f}{'' if r['built_now'] else ' (stored)'} "
            f"| {r['onnx_mb'].get('int8', 0):.0f} | {r['startup_s']:.0f} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['completed_rps']:.1f} | {r['errors']} "
            f"| {_fallbacks(r)} | {r['rss_gib']:.2f} "
            f"| {r['pss_gib']:.2f} | {_load(r)} |"
        )
    if cands:
        lines += [
            "",
            f"Candidates ranked per request, {cands[0]['n_items']:,} items:",
            "",
            "| candidates | p50 ms | p95 ms | p99 ms | rps done | errors | fallbacks | RSS GiB | load avg |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for r in cands:
            lines.append(
                f"| {r['candidates']:,} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {r['completed_rps']:.1f} | {r['errors']} | {_fallbacks(r)} | {r['rss_gib']:.2f} "
                f"| {_load(r)} |"
            )
    lines += ["", result["summary"]]
    return "\n".join(lines)


def summary(sizes: list[dict[str, Any]], cands: list[dict[str, Any]]) -> str:
    """The paragraph on what grows and why, with this run's ratios."""
    if not sizes:
        return ""
    a, b = sizes[0], sizes[-1]
    grow = b["n_items"] / a["n_items"]
    text = [
        f"From {a['n_items']:,} to {b['n_items']:,} items ({grow:.0f}x) p99 went from {a['p99_ms']:.1f} to "
        f"{b['p99_ms']:.1f} ms ({b['p99_ms'] / a['p99_ms']:.2f}x) and p50 from {a['p50_ms']:.1f} to "
        f"{b['p50_ms']:.1f} ms, while the stack's RSS went from {a['rss_gib']:.2f} to {b['rss_gib']:.2f} GiB "
        f"(PSS {a['pss_gib']:.2f} to {b['pss_gib']:.2f})."
    ]
    if b["n_items"] > a["n_items"]:
        per_item = (b["pss_gib"] - a["pss_gib"]) * 2**30 / (b["n_items"] - a["n_items"])
        text.append(f"Memory per item (PSS growth over item growth): {per_item:,.0f} bytes.")
    text.append(
        "Per request, catalog size enters in three places: the FAISS search (exact inner product, linear "
        "in items, up to 100,000 items; IVF-Flat above, which scans nprobe of 4*sqrt(n) lists, so the "
        "vectors it reads grow with sqrt(n)), and two dense boolean masks of n_items built per "
        "request (the excluded items in the recommender and in retrieval), each a few hundred microseconds "
        "at 1M. Ranking cost depends on the candidates, not the catalog: the item tables are gathered by "
        "id inside the ONNX graph."
    )
    text.append(
        "Memory is linear in items and multiplied by copies: the worker holds the catalog as Python "
        "dicts, the retrieval weights (item_in [n, hidden] and the item vectors), the FAISS index "
        "(the vectors again, in IVF lists above 100k), the feature tables, and three in-process ONNX Runtime "
        "fallback sessions, each with its own copy of the item tables; tritonserver runs one Python-backend "
        "stub per variant, each loading its ONNX ranker (item tables again), and the rendered Triton "
        "repository copies the ONNX files to disk."
    )
    hot = [
        f"{r['n_items']:,} items / {r['candidates']} candidates" for r in (*sizes, *cands) if _saturated(r)
    ]
    if hot:
        text.append(
            f"Saturated points ({'; '.join(hot)}): the service fell behind the offered "
            f"{sizes[0]['offered_rps']:g} requests/s or Triton timed out (fallback to in-process ONNX "
            "Runtime); their p95/p99 are queueing time, not service time."
        )
    loads = [x for r in (*sizes, *cands) for x in r.get("loadavg", [])]
    cores = os.cpu_count() or 1
    if loads and max(loads) > cores:
        text.append(
            f"The machine's load average reached {max(loads):.1f} on {cores} cores during the loads: other "
            "jobs shared the CPU, which inflates every latency here and the tails most."
        )
    if len(cands) >= 2:
        c0, c1 = cands[0], cands[-1]
        text.append(
            f"Candidates from {c0['candidates']} to {c1['candidates']}: p99 {c0['p99_ms']:.1f} to "
            f"{c1['p99_ms']:.1f} ms ({c1['p99_ms'] / c0['p99_ms']:.2f}x), p50 {c0['p50_ms']:.1f} to "
            f"{c1['p50_ms']:.1f} ms: the gRPC payload (item ids) and the ranker's work grow linearly with "
            f"them, and so does the FAISS result size."
        )
    return " ".join(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument(
        "--tags", default="", help="trained store versions to measure first (comma-separated)"
    )
    parser.add_argument("--candidates", default="100,500,1000")
    parser.add_argument(
        "--candidate-size", type=int, default=100_000, help="catalog size of the candidates sweep"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    cand_list = [int(c) for c in args.candidates.split(",") if c]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    size_rows: list[dict[str, Any]] = []
    cand_rows: list[dict[str, Any]] = []
    trained_rows: list[dict[str, Any]] = []  # --tags: real versions, kept out of the synthetic sweep
    builds: dict[int, tuple[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="folio-growth-") as tmp:
        work = Path(tmp)
        for tag in [t for t in args.tags.split(",") if t]:
            tag, info = trained_version(tag)
            n, c = info["n_items"], info["trained_candidates"]
            log.info("%s (%s, %d items): serving with its %d trained candidates", tag, info["dataset"], n, c)
            row = {**info, **measure(tag, c, args, work)}
            log.info("%s: p99 %.1f ms, RSS %.2f GiB", tag, row["p99_ms"], row["rss_gib"])
            trained_rows.append(row)
        for n in sizes:
            builds[n] = version_for(n)
            tag, info = builds[n]
            log.info("synthetic-%d: %s; serving with %d candidates", n, info, DEFAULT_CANDIDATES)
            row = {"n_items": n, **info, **measure(tag, DEFAULT_CANDIDATES, args, work)}
            log.info("synthetic-%d: p99 %.1f ms, RSS %.2f GiB", n, row["p99_ms"], row["rss_gib"])
            size_rows.append(row)
        if cand_list:
            n = args.candidate_size
            tag, info = builds[n] if n in builds else version_for(n)
            for c in cand_list:
                row = {"n_items": n, "tag": tag, **measure(tag, c, args, work)}
                log.info("synthetic-%d, %d candidates: p99 %.1f ms", n, c, row["p99_ms"])
                cand_rows.append(row)
    result: dict[str, Any] = {
        "scenario": "growth",
        "rps": args.rps,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "sizes": size_rows,
        "candidates": cand_rows,
        "trained": trained_rows,
        "total_s": round(time.perf_counter() - started, 1),
    }
    result["summary"] = summary(size_rows, cand_rows)
    result["markdown"] = markdown(result)
    save(args.out, "growth", result, lambda _, png: plot(size_rows, cand_rows, png))
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main()
