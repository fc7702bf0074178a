"""The whole benchmark in one command: every scenario of the load-test issue, then docs/benchmarks.md.

    python -m loadtests.bench [--quick] [--only ceiling,triton,retrieval,growth,warm] [--out docs]

`--quick` writes to .folio/bench-quick unless `--out` says otherwise, so a smoke run never replaces
the committed report. `--only` reruns some scenarios; the report keeps the other scenarios' last full
runs (from docs/benchmarks/summary.json), each section naming the date and commit it was measured at.

Each scenario starts what it measures on loopback (bentoml serve, tritonserver), warms up, runs for a
bounded time and stops it; results go to docs/benchmarks/<scenario>.json and .png, and the report to
docs/benchmarks.md (regenerated, not edited by hand). Ratios are measured side by side in one run;
absolute figures depend on the machine, which the report names.

1. ceiling   loadtests/ceiling_bench.py    bare BentoML endpoint vs /recommend cache miss and hit
2-3. triton  loadtests/triton_bench.py     INT8 / FP16 / FP32 on Triton; dynamic batching on vs off
4. retrieval loadtests/retrieval_bench.py  FAISS exact vs ANN on 1M items
5. growth    loadtests/growth_bench.py     p99 and RSS as the catalog and the candidates grow
6. warm      loadtests/warm_bench.py       cache hit rate and p99 after a promotion, warming on vs off
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.harness import report
from runners.platform.processes import ROOT

SCENARIOS = {
    "ceiling": ("loadtests.ceiling_bench", "1. The ceiling: bare BentoML endpoint vs /recommend"),
    "triton": ("loadtests.triton_bench", "2-3. Ranking on Triton: precisions and dynamic batching"),
    "retrieval": ("loadtests.retrieval_bench", "4. Retrieval: FAISS exact vs ANN on 1M items"),
    "growth": ("loadtests.growth_bench", "5. Growth: catalog size and candidates"),
    "warm": ("loadtests.warm_bench", "6. Cache warming after a promotion"),
}
QUICK = {
    "ceiling": ["--seconds", "5", "--fixed-seconds", "10", "--sweep", "25,50"],
    "triton": ["--seconds", "2"],
    "retrieval": ["--items", "100000", "--queries", "300"],
    "growth": ["--sizes", "10000,50000", "--candidates", "100,500", "--seconds", "5"],
    "warm": ["--quick"],
}


def machine() -> dict[str, Any]:
    """The machine, the commit the run measures and when."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # "-dirty": run with uncommitted changes outside docs/ (the reports), so no commit holds that code
    status = ["git", "status", "--porcelain", "--", ".", ":(exclude)docs"]
    changes = subprocess.run(status, cwd=ROOT, capture_output=True, text=True)
    return report.machine(
        commit=commit.stdout.strip() + ("-dirty" if changes.stdout.strip() else ""),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def kept_runs(summary_path: Path) -> dict[str, dict[str, Any]]:
    """The full (not --quick) runs recorded in an earlier summary.json: `--only` reruns some scenarios and
    keeps the others' sections, each labelled with its own date and commit."""
    if not summary_path.exists():
        return {}
    scenarios = json.loads(summary_path.read_text()).get("scenarios", {})
    return {n: r for n, r in scenarios.items() if n in SCENARIOS and "markdown" in r and not r.get("quick")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs and small sizes (a smoke run)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--out", type=Path, help="default: docs, or .folio/bench-quick with --quick")
    parser.add_argument(
        "--args", default="", help="extra flags for the scenarios of --only, e.g. --args='--rps 100' (growth)"
    )
    args = parser.parse_args(argv)
    if unknown := set(args.only.split(",")) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    args.out = args.out or ROOT / (".folio/bench-quick" if args.quick else "docs")
    data_dir = args.out / "benchmarks"
    data_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    runs = {} if args.quick else kept_runs(data_dir / "summary.json")
    extra = shlex.split(args.args)
    for name in args.only.split(","):
        module, _ = SCENARIOS[name]
        started = time.monotonic()
        flags = ["--out", str(data_dir), *(QUICK[name] if args.quick else []), *extra]
        result = importlib.import_module(module).main(flags)
        runs[name] = {
            "args": " ".join(extra),
            "seconds": round(time.monotonic() - started),
            "json": f"benchmarks/{name}.json",
            "commit": info["commit"],
            "date": info["date"],
            "quick": args.quick,
            "markdown": result["markdown"],
        }
    sections = []
    for name, (module, title) in SCENARIOS.items():
        if run := runs.get(name):
            when = f"{run['date']}, commit {run['commit']}, {run['seconds']} s"
            cmd = " ".join(["python -m", module, *([run["args"]] if run.get("args") else [])])
            sections.append(
                f"## {title}\n\n`{cmd}` ({when})\n\n{run['markdown']}\n\n![{name}](benchmarks/{name}.png)\n"
            )
    command = f"python -m loadtests.bench{' --quick' if args.quick else ''}"
    header = (
        f"# Folio benchmarks\n\nGenerated by `{command}` (last run {info['date']}, commit {info['commit']}; "
        "each section names its own run); do not edit by hand. "
        f"Machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, no GPU. "
        "The load generators share the cores with the servers, so the ratios measured side by side in "
        "one run are the figures to compare.\n"
    )
    (args.out / "benchmarks.md").write_text("\n".join([header, *sections]))
    summary = {"machine": info, "quick": args.quick, "scenarios": runs}
    (data_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
