"""docs/reliability.md from the fault suite's rows: one table line per scenario, each scenario's targets
and figures, what the measures mean, and what the suite does not cover. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from loadtests.faults.verdict import FeedbackCheck, Row
from loadtests.harness.report import num, table

HEADER = [
    "scenario", "requests", "failed", "fallbacks", "refused (503/429)", "p99 ms", "recovery s",
    "feedback sent / acked / found", "verdict",
]  # fmt: skip

MEANING = """\
How to read it: every scenario runs under open-loop mixed load (80 % /recommend, a quarter of them for users
the version never saw, 10 % /feedback, 5 % /similar, 5 % /trending; Poisson arrivals; the result cache off, so
every /recommend is ranked) against `bentoml serve` of this checkout on loopback, with the fault injected
while the load runs. *requests*: requests sent in the scenario's window; *failed*: answered with an error
other than 503/429, or not answered (refused connection, reset, timeout); *fallbacks*: /recommend answers
whose `fallback` is not "none"; *refused*: 503 or 429 answers; *p99*: of the answered requests, from each
request's due time; *recovery*: seconds from the fault (or its end, for a stall) until the last degraded
answer (failed, refused or fallback); "never": still degraded when the load ended; *feedback*: events sent,
acknowledged (200), and acknowledged events found in the state store (journal or Redis) afterwards.
"""

NOT_COVERED = [
    "Machine or power loss: the suite kills processes, never the host, so the page cache survives every "
    "crash here. The journal's fsync before acknowledging and Redis' `appendfsync everysec` window (up to "
    "1 s of acknowledged feedback lost on a power cut, as the deploy manifests configure it) are not "
    "exercised.",
    "Disk full, read-only or slow disks, and fsync errors.",
    "Network faults between hosts (latency, loss, partitions, DNS): everything runs on loopback on one "
    "machine; an external Triton (FOLIO_TRITON_URL) or a remote Redis is not faulted.",
    "More than one worker (FOLIO_WORKERS > 1), more than one replica, or a load balancer: each scenario "
    "runs one worker; the SIGTERM scenario keeps sending requests through the drain as no load balancer "
    "would once readiness fails.",
    "Redis replication, Sentinel or Cluster failover, and Redis memory limits (maxmemory eviction).",
    "Long runs (hours): slow leaks, journal growth and compaction under load, model age alerts.",
    "A GPU Triton (TensorRT precisions) and Triton's own model-control faults (a model unloaded while "
    "the server stays up).",
    "Clock jumps, hostile clients (covered by tests/integration/test_hostile_http.py and the fuzz tests), "
    "and the admin endpoints under load.",
    "The load generator shares the machine's cores with the service, so the overload figures are "
    "relative to the capacity measured the same way in the same run.",
]


def fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        return num(x, 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0)
    if isinstance(x, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in x.items()) or "none"
    if isinstance(x, list | tuple):
        return ", ".join(map(fmt, x)) or "none"
    return str(x)


def feedback_cell(check: FeedbackCheck | None) -> str:
    if check is None or check.sent == 0:
        return "–"
    found = "?" if check.found is None else str(check.found)
    return f"{check.sent} / {check.acked} / {found}"


def recovery_cell(row: Row) -> str:
    if row.recovery_s is None:
        return "never" if row.figures.get("recovery_expected", True) else "–"
    return fmt(row.recovery_s)


def table_lines(rows: Sequence[Row]) -> list[str]:
    cells = [
        [
            r.scenario, r.requests, r.failed, r.fallbacks, r.refused, fmt(r.p99_ms), recovery_cell(r),
            feedback_cell(r.feedback), r.verdict,
        ]
        for r in rows
    ]  # fmt: skip
    return table(HEADER, cells)


def details(row: Row) -> list[str]:
    lines = [f"### {row.scenario}", ""]
    if row.notes:
        lines += [row.notes, ""]
    for t in row.targets:
        mark = {True: "met", False: "**not met**", None: "not measured"}[t.met]
        lines.append(f"- {t.name}: {mark} ({t.detail})")
    if row.feedback is not None and row.feedback.sent:
        fb = row.feedback
        lines.append(
            f"- feedback: {fb.sent} sent, {fb.acked} acknowledged, {fmt(fb.found)} of those found; "
            f"{fb.refused} refused ({fmt(fb.refused_written)} found); "
            f"{fb.unanswered} unanswered ({fmt(fb.unanswered_written)} found)"
        )
    figures = {k: v for k, v in row.figures.items() if k != "recovery_expected"}
    if figures:
        lines.append("- figures: " + "; ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in figures.items()))
    return [*lines, ""]


def markdown(rows: Sequence[Row], run: dict[str, Any]) -> str:
    met = sum(r.verdict.startswith("met") for r in rows)
    head = [
        "# Folio reliability: the fault suite",
        "",
        f"Generated by `{run['command']}` ({run['date']}, commit {run['commit']}, {run['profile']} profile, "
        f"{run['seconds']:.0f} s); do not edit by hand. Machine: {run['cores']} cores, {run['cpu']}, "
        f"Python {run['python']}, no GPU. Model: {run['model']}. Targets from issue 14; "
        f"{met} of {len(rows)} scenarios meet all of theirs.",
        "",
        *table_lines(rows),
        "",
        MEANING,
        "## Scenarios",
        "",
    ]
    body = [line for r in rows for line in details(r)]
    tail = ["## Not covered", "", *[f"- {n}" for n in NOT_COVERED], ""]
    return "\n".join(head + body + tail)
