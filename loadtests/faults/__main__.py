"""The fault suite in one command: every scenario of issue 14 under mixed load, then docs/reliability.md.

    python -m loadtests.faults [--quick] [--only triton-kill,sigterm,...] [--tag TAG] [--out docs]

Loopback only and bounded in time (the full profile about 15 minutes on 2 cores, --quick about 3).
Each scenario starts what it faults (`bentoml serve` of this checkout with its embedded tritonserver,
redis-server with an append-only file) on free ports, from a copy of the source version (default: the
store's production version) in a model store of its own under a temporary directory, and stops it.
Writes ``<out>/reliability.md`` and ``<out>/reliability/faults.json``; `--quick` and `--only` write to
.folio/faults unless `--out` says otherwise, so a partial run never replaces the committed report.

Scenarios: triton-kill, triton-stall, redis-stop, redis-kill, sigterm, sigkill (worker and whole
service, journal and Redis), promote (truncated, rotted, corrupted INT8), overload (2x, 5x), watcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.faults.render import markdown
from loadtests.faults.suite import FULL, QUICK, Suite
from loadtests.faults.verdict import Row
from loadtests.harness.report import json_default
from runners.platform.processes import ROOT


def run_suite(tag: str | None, only: list[str], quick: bool, work: Path) -> tuple[list[Row], float, str]:
    """(rows, seconds, the source tag) of the scenarios ``only``."""
    from loadtests.faults.scenarios import run
    from runners.stages.served_model import served_tag

    source = served_tag(tag)
    suite = Suite(source, work, QUICK if quick else FULL)
    started, rows = time.monotonic(), []
    for name in only:
        t = time.monotonic()
        rows += run(suite, name)
        print(f"{name}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    return rows, time.monotonic() - started, suite.source_tag


def main(argv: list[str] | None = None) -> list[Row]:
    from loadtests.bench import machine
    from loadtests.faults.scenarios import SCENARIOS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short durations (the test command's profile)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--tag", default=None, help="source version (default: the store's production one)")
    parser.add_argument("--out", type=Path, help="default: docs, or .folio/faults with --quick or --only")
    parser.add_argument("--work", type=Path, help="keep the services' logs, state and store here")
    args = parser.parse_args(argv)
    only = args.only.split(",")
    if unknown := set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    partial = args.quick or set(only) != set(SCENARIOS)
    out = args.out or ROOT / (".folio/faults" if partial else "docs")
    at_start = machine()  # the commit measured; others may commit while the suite runs
    with tempfile.TemporaryDirectory(prefix="folio-faults-") as tmp:
        rows, seconds, source = run_suite(args.tag, only, args.quick, args.work or Path(tmp))
    if (at_end := machine()["commit"]) != at_start["commit"]:
        at_start["commit"] += f" (at the end of the run: {at_end})"
    flags = " ".join(
        ["--quick"] * args.quick + ([f"--only {args.only}"] if set(only) != set(SCENARIOS) else [])
    )
    run: dict[str, Any] = {
        **at_start,
        "command": f"python -m loadtests.faults {flags}".strip(),
        "profile": "quick" if args.quick else "full",
        "seconds": seconds,
        "model": source,
    }
    (out / "reliability").mkdir(parents=True, exist_ok=True)
    (out / "reliability.md").write_text(markdown(rows, run))
    data = {"run": run, "rows": [dataclasses.asdict(r) | {"verdict": r.verdict} for r in rows]}
    (out / "reliability" / "faults.json").write_text(json.dumps(data, indent=1, default=json_default))
    print(f"wrote {out / 'reliability.md'}")
    return rows


if __name__ == "__main__":
    main()
