"""Scenario 1, the ceiling: a bare BentoML endpoint against Folio's /recommend, same machine, same run.

    python -m loadtests.ceiling_bench [--tag TAG] [--seconds 20] [--users 32] [--out docs/benchmarks]

Each server is started here (`bentoml serve`, one worker, loopback), warmed up, loaded with Locust
(loadtests/locustfile.py, headless, one process) and stopped before the next one starts:

* bare: loadtests/bare_service.py, a constant JSON answer;
* miss: Folio with the result cache off (FOLIO_CACHE_TTL_S=0): every request retrieves 500 candidates,
  ranks them on the embedded Triton (INT8) and applies the rules;
* hit: Folio with the cache on, a few users asked again and again.

Saturation: Locust, closed loop, ``--users`` users with no think time; RPS and latency percentiles.
Fixed load: open loop (loadtests/harness/openloop.py: requests leave on schedule, latency from the due time),
miss at 100 RPS and hit at 300 RPS for ``--fixed-seconds``, and a sweep of offered loads for the
latency-vs-RPS plot. The generators share the 2 cores with the server: the ratios (measured side by
side) are the figures to compare, not the absolute RPS.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.harness.openloop import open_loop
from loadtests.harness.report import figure, save, table
from loadtests.population import HIT_USERS, population
from runners.platform.processes import ROOT, ServedFolio

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def locust(host: str, user_class: str, users: int, seconds: int, work: Path) -> dict:
    """One headless Locust run, closed loop (no pacing); the aggregated row of its stats CSV."""
    prefix = work / f"{user_class}-{users}-{seconds}"
    env = {**os.environ, "FOLIO_LOAD_RPS_PER_USER": ""}
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--csv", str(prefix),
        "--host", host, "--loglevel", "WARNING", user_class,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120)
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    result = {
        "users": users,
        "rps": float(row["Requests/s"]),
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
    }
    if out.returncode not in (0, 1):  # 1: some requests failed, reported in the stats
        raise RuntimeError(f"locust failed ({out.returncode}): {out.stderr[-2000:]}")
    return result


def bodies(user_class: str) -> Callable[[int], dict[str, Any]]:
    """Request bodies of the open-loop runs: the users of the Locust class of the same name."""
    users = population()[0]
    pool = users[:HIT_USERS] if user_class == "RecommendHit" else users
    rng = random.Random(0)
    return lambda _i: {"user_id": rng.choice(pool), "k": 10}


def measure(target: str, env: dict[str, str], user_class: str, args: argparse.Namespace, work: Path) -> dict:
    log = work / f"{user_class}.log"
    with ServedFolio(env, log, target=target) as served:
        locust(served.url, user_class, args.users, 5, work)  # warm-up (caches, Triton, JIT paths)
        result: dict[str, Any] = {
            "saturation": locust(served.url, user_class, args.users, args.seconds, work)
        }
        if user_class == "RecommendMiss":
            result["fixed"] = open_loop(served.url, "/recommend", bodies(user_class), 100, args.fixed_seconds)
            result["sweep"] = [
                open_loop(served.url, "/recommend", bodies(user_class), rps, max(10, args.seconds // 2))
                for rps in args.sweep
            ]
        if user_class == "RecommendHit":
            result["fixed"] = open_loop(served.url, "/recommend", bodies(user_class), 300, args.fixed_seconds)
        if not served.alive():
            raise RuntimeError(f"{target} died under load:\n{served.log_tail()}")
    return result


def markdown(r: dict) -> str:
    bare, miss, hit = (r[k]["saturation"] for k in ("bare", "miss", "hit"))
    servers = [("bare BentoML endpoint", bare), ("/recommend cache miss", miss)]
    servers.append(("/recommend cache hit", hit))
    header = ["server", "RPS at saturation", "ratio to bare", "p50 ms", "p95 ms", "p99 ms", "failures"]
    rows = [
        [name, f"{s['rps']:.0f}", f"{s['rps'] / bare['rps']:.2f}", f"{s['p50_ms']:.0f}", f"{s['p95_ms']:.0f}",
         f"{s['p99_ms']:.0f}", s["failures"]]
        for name, s in servers
    ]  # fmt: skip
    lines = table(header, rows)
    fm, fh = r["miss"]["fixed"], r["hit"]["fixed"]
    lines += [
        "",
        "Fixed load (open loop, loadtests/harness/openloop.py: latency from each request's due time): "
        f"cache miss at {fm['offered_rps']:.0f} RPS for {fm['seconds']:.0f} s: p50 {fm['p50_ms']:.1f} / p99 "
        f"{fm['p99_ms']:.1f} ms, {fm['errors']} errors of {fm['requests']} (target p99 <= 50 ms, 0 errors); "
        f"cache hit at {fh['offered_rps']:.0f} RPS for {fh['seconds']:.0f} s: p50 {fh['p50_ms']:.1f} / p99 "
        f"{fh['p99_ms']:.1f} ms, {fh['errors']} errors (target p99 <= 10 ms).",
        f"Targets: miss >= 0.50 of bare: {miss['rps'] / bare['rps']:.2f}; hit >= 0.85 of bare: "
        f"{hit['rps'] / bare['rps']:.2f}.",
    ]
    if hit["rps"] > bare["rps"]:
        lines.append(
            "The cache hit outruns the bare endpoint: a hit returns the stored JSON bytes as they are, while "
            "the bare endpoint's dict, like every uncached answer, goes through BentoML's output validation "
            "and JSON encoding."
        )
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    with figure(path, 2, (11, 4)) as (left, right):
        sweep = r["miss"]["sweep"]
        offered = [s["offered_rps"] for s in sweep]
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            left.plot(offered, [s[q] for s in sweep], marker="o", label=q.removesuffix("_ms"))
        left.set(xlabel="offered RPS", ylabel="latency (ms)", title="/recommend cache miss: latency vs load")
        left.legend()
        names = ["bare", "miss", "hit"]
        right.bar(names, [r[n]["saturation"]["rps"] for n in names], color=["grey", "tab:blue", "tab:green"])
        right.set(ylabel="requests/s at saturation", title="the ceiling and Folio, same run")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default=None, help="model store tag (default: production)")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--fixed-seconds", type=int, default=60)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument(
        "--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[25, 50, 100, 150, 200]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    from runners.stages.served_model import served_tag

    tag = served_tag(args.tag)
    # the pipeline's ceiling, Locust's users all in flight: admission control (measured by loadtests/faults)
    # would shed the closed loop's excess as cheap 503s and inflate the rate
    folio = {
        "FOLIO_MODEL_TAG": tag,
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_PRECISION": "int8",
        "FOLIO_MAX_IN_FLIGHT": "10000",
        "FOLIO_SHED_LOOP_LAG_S": "0",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {"model": tag, "fixed_seconds": args.fixed_seconds, "users": args.users}
        results["bare"] = measure("loadtests.bare_service:Bare", {}, "BarePing", args, work)
        miss_env = folio | {"FOLIO_CACHE_TTL_S": "0", "FOLIO_STATE_DIR": str(work / "miss")}
        results["miss"] = measure("service:Recommender", miss_env, "RecommendMiss", args, work)
        hit_env = folio | {"FOLIO_STATE_DIR": str(work / "hit")}
        results["hit"] = measure("service:Recommender", hit_env, "RecommendHit", args, work)
    save(args.out, "ceiling", results, plot)
    results["markdown"] = markdown(results)
    print(results["markdown"])
    return results


if __name__ == "__main__":
    main()
