"""Scenario 6, cache warming: the cache hit rate and p99 in the first minute after a promotion, under the
realistic mix, with warming (runners/serving/warmup.py) on vs off.

    python -m loadtests.warm_bench [--tag folio:<version>] [--rate 50] [--before-s 60] [--after-s 60]
        [--reps 2] [--warm-users 1000] [--quick] [--note TEXT] [--out docs/benchmarks]

(`python -m loadtests.bench --only warm` runs it and writes its section of docs/benchmarks.md.)

Each run starts `bentoml serve` (one worker, embedded tritonserver, result cache on with its default TTL,
rate limits off) following the production version of an isolated copy of the model store
(loadtests/faults/suite.py), with FOLIO_WARM_USERS=<n> (on) or 0 (off), and sends the realistic mix open
loop: the shares of Locust's FolioMix (loadtests/locustfile.py: 70 % /recommend for known users drawn
Zipf by activity as loadtests/population.py draws them, 10 % /recommend for users never seen, 10 %
/similar, 5 % /trending, 5 % /feedback), Poisson arrivals, latency from each request's due time
(loadtests/faults/mix.py, loadtests/harness/openloop.py). After ``--before-s`` (the cache settles) it
promotes a new copy of the version (`python -m training promote`): the service's watcher deploys it,
checks it, warms it (on) and swaps it in; the swap is the due time of the first answer from the new
version, and the load goes on ``--after-s`` past it (plus a margin sized for the slowest swap). Runs
alternate on/off on a fresh service each (on, off, then off, on...), each pair with the same requests.

Per run: promotion-to-swap seconds; the hit rate (share of /recommend 200 answers with "cached": true;
users never seen cannot hit, so the mix's ceiling is about 0.87) and p99 (ms) of /recommend and of every
route in the 30 s before the promotion, between promotion and swap (the deploy and its warming share the
cores with serving), and in the first 10 s and ``--after-s`` after the swap; what the warming reports on
/metrics. Writes ``<out>/warm.json`` and ``<out>/warm.png``; ``main`` returns the results with a
"markdown" section. The load generator shares the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from loadtests.faults.mix import Clock, Request, Sample, drive, feedback_request
from loadtests.faults.suite import FULL as FAULT_PROFILE
from loadtests.faults.suite import Suite
from loadtests.harness.openloop import percentiles, poisson_arrivals
from loadtests.harness.report import figure, machine, num, save, table
from loadtests.population import ZIPF_S
from models import registry, version
from runners.platform.processes import ROOT

log = logging.getLogger("loadtests.warm_bench")
MIX = {"known": 70, "cold": 10, "similar": 10, "trending": 5, "feedback": 5}  # FolioMix's @task weights
EVENTS = ("view", "click", "add_to_cart", "purchase")  # FolioMix's feedback events
STEADY_S = 30.0  # the window before the promotion
FIRST_S = 10.0  # the first seconds after the swap
BIN_S = 5.0  # the figure's resolution


@dataclass(frozen=True)
class Profile:
    rate: float = 50.0  # requests/s of the mix
    before_s: float = 60.0  # load before the promotion
    after_s: float = 60.0  # load measured after the swap
    swap_margin_s: float = 40.0  # load planned for the promotion to reach the swap (beyond: not measured)
    reps: int = 2  # on/off pairs
    warm_users: int = 1000


FULL = Profile()
QUICK = Profile(rate=20.0, before_s=8.0, after_s=10.0, swap_margin_s=30.0, reps=1)


def users_by_activity(directory: Path) -> list[str]:
    """The version's training users by history size, largest first (as loadtests/population.py ranks
    them for the Zipf draw, and as warming picks them)."""
    h = version.read_histories(directory)
    return [str(u) for u in h.user_ids[np.argsort(-np.diff(h.indptr), kind="stable")]]


def folio_mix(users: list[str], items: list[str], n: int, seed: int) -> list[Request]:
    """``n`` requests in FolioMix's shares; known users drawn Zipf(ZIPF_S) by activity rank."""
    rng = random.Random(seed)
    weights = 1.0 / np.arange(1, len(users) + 1) ** ZIPF_S
    zipf = np.random.default_rng(seed).choice(len(users), size=n, p=weights / weights.sum())
    kinds = rng.choices(list(MIX), list(MIX.values()), k=n)
    out = []
    for k, kind in enumerate(kinds):
        if kind == "known":
            out.append(Request("recommend", {"user_id": users[zipf[k]], "k": 10}))
        elif kind == "cold":
            out.append(Request("recommend", {"user_id": f"cold-{seed}-{k}", "k": 10}))
        elif kind == "similar":
            out.append(Request("similar", {"item_id": rng.choice(items), "k": 10}))
        elif kind == "trending":
            out.append(Request("trending", {"k": 10}))
        else:
            out.append(feedback_request(users[zipf[k]], rng.choice(items), rng.choice(EVENTS)))
    return out


def window(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """Hit rate and p99 of the requests due in [start, end)."""
    due = [s for s in samples if start <= s.due_s < end]
    rec = [s for s in due if s.route == "recommend" and s.answer.status == "200"]
    known = [s for s in rec if s.answer.cold_start is False]
    ok = [s for s in due if s.answer.status == "200"]

    def share(xs: list[Sample]) -> float:
        return sum(bool(s.answer.cached) for s in xs) / len(xs) if xs else math.nan

    return {
        "seconds": round(end - start, 1),
        "requests": len(due),
        "errors": len(due) - len(ok),
        "failures": dict(Counter(f"{s.route} {s.answer.status}" for s in due if s.answer.status != "200")),
        "recommend": len(rec),
        "hit_rate": share(rec),
        "known_hit_rate": share(known),
        "p99_recommend_ms": percentiles([s.latency_s for s in rec], (99,))["p99_ms"],
        "p99_all_ms": percentiles([s.latency_s for s in ok], (99,))["p99_ms"],
    }


def scraped(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples (those whose labels contain ``label``) in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ") and label in line:
            total += float(line.rsplit(" ", 1)[-1])
    return total


async def _metrics(session: aiohttp.ClientSession) -> str:
    try:
        async with session.get("/metrics") as r:
            return await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return ""


def run_once(suite: Suite, profile: Profile, warm_users: int, name: str, seed: int) -> dict[str, Any]:
    """One service, one promotion under the mix; the run's windows, bins and warming figures."""
    new = suite.store.save()  # saved before the load: only the promotion happens under it
    extra = {"FOLIO_MODEL_WATCH_S": "0.5", "FOLIO_CACHE_TTL_S": "300", "FOLIO_WARM_USERS": str(warm_users)}
    seconds = profile.before_s + profile.swap_margin_s + profile.after_s
    arrivals = poisson_arrivals(profile.rate, seconds, seed=seed)
    model = registry.get(suite.source_tag)
    users = users_by_activity(Path(model.path))
    requests = folio_mix(users, suite.workload.items, len(arrivals), seed)
    scrapes: dict[str, str] = {}

    async def script(clock: Clock, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(profile.before_s)
        scrapes["before"] = await _metrics(session)
        clock.mark("promote")
        await asyncio.to_thread(suite.store.promote, new)
        clock.mark("promoted")
        while not clock.load_done:
            await asyncio.sleep(0.5)
        scrapes["after"] = await _metrics(session)

    load_avg = os.getloadavg()[0]
    with suite.serve(name, follow=True, **extra) as served:
        load = asyncio.run(drive(served.url, requests, arrivals, script, timeout_s=10.0))
        tail = served.log_tail(40)
    swaps = [s.due_s for s in load.samples if s.answer.model_version == new]
    if not swaps:
        raise RuntimeError(f"{name}: {new} never answered within the load\n{tail}")
    promote, swap = load.marks["promote"], min(swaps)
    end = min(swap + profile.after_s, load.seconds)
    before, after = scrapes.get("before", ""), scrapes.get("after", "")
    warmed = scraped(after, "folio_cache_warm_users_total", 'outcome="warmed"') - scraped(
        before, "folio_cache_warm_users_total", 'outcome="warmed"'
    )
    warm_s = scraped(after, "folio_cache_warm_seconds") if warmed else 0.0  # the last warming: this one
    bins = [
        {"t_s": t, **window(load.samples, swap + t, swap + t + BIN_S)}
        for t in np.arange(-STEADY_S, end - swap - 1e-6, BIN_S).tolist()
    ]
    return {
        "name": name,
        "warming": warm_users > 0,
        "warm_users": warm_users,
        "seed": seed,
        "version": new,
        "promote_s": round(promote, 2),
        "promote_to_swap_s": round(swap - promote, 2),
        "after_window_s": round(end - swap, 1),
        "load_avg_start": round(load_avg, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
        "client_lag_p99_ms": round(load.client_lag_ms, 2),
        "steady": window(load.samples, promote - STEADY_S, promote),
        "deploy": window(load.samples, promote, swap),
        "warming_window": window(load.samples, swap - warm_s, swap) if warm_s else None,
        "first_10s": window(load.samples, swap, swap + FIRST_S),
        "first_window": window(load.samples, swap, end),
        "warm": {
            "users_warmed": warmed,
            "seconds": warm_s,
            "runs": {
                r: scraped(after, "folio_cache_warm_runs_total", f'result="{r}"')
                - scraped(before, "folio_cache_warm_runs_total", f'result="{r}"')
                for r in ("complete", "budget", "stopped", "failed")
            },
        },
        "shed": {
            reason: scraped(after, "folio_requests_shed_total", f'reason="{reason}"')
            - scraped(before, "folio_requests_shed_total", f'reason="{reason}"')
            for reason in ("in_flight", "loop_lag")
        },
        "bins": bins,
    }


def pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f} %"


def mean(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(float(v))
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def markdown(result: dict[str, Any]) -> str:
    p, runs = result["profile"], result["runs"]
    after = int(p["after_s"])
    rows = [
        [
            r["name"],
            "on" if r["warming"] else "off",
            num(r["promote_to_swap_s"], 1),
            f"{r['warm']['users_warmed']:.0f} in {r['warm']['seconds']:.1f} s" if r["warming"] else "–",
            pct(r["steady"]["hit_rate"]),
            pct(r["first_10s"]["hit_rate"]),
            pct(r["first_window"]["hit_rate"]),
            pct(r["first_window"]["known_hit_rate"]),
            num(r["steady"]["p99_recommend_ms"], 1),
            num(r["deploy"]["p99_recommend_ms"], 1),
            num(r["warming_window"]["p99_recommend_ms"], 1) if r["warming_window"] else "–",
            num(r["first_10s"]["p99_recommend_ms"], 1),
            num(r["first_window"]["p99_recommend_ms"], 1),
            num(r["first_window"]["p99_all_ms"], 1),
            sum(r[w]["errors"] for w in ("steady", "deploy", "first_window")),
            f"{r['load_avg_start']:.1f}-{r['load_avg_end']:.1f}",
        ]
        for r in runs
    ]
    header = [
        "run", "warming", "promote→swap s", "warmed", "hit before", "hit 0-10 s", f"hit 0-{after} s",
        f"known-user hit 0-{after} s", "p99 before", "p99 promote→swap", "p99 while warming", "p99 0-10 s",
        f"p99 0-{after} s", f"p99 all routes 0-{after} s", "errors", "load avg",
    ]  # fmt: skip
    on = [r for r in runs if r["warming"]]
    warming = [r for r in on if r["warming_window"]]
    off = [r for r in runs if not r["warming"]]
    m = result["machine"]
    lines = [
        f"Model `{result['source']}` ({result['dataset']}, {result['users']} training users); "
        f"`bentoml serve`, one worker, embedded tritonserver, result cache on (TTL 300 s), "
        f"FOLIO_WARM_USERS={p['warm_users']} (on) or 0 (off), default FOLIO_WARM_BUDGET_S. Load: FolioMix's "
        f"shares (loadtests/locustfile.py) open loop at {p['rate']:g} requests/s, Poisson; the promotion "
        f"after {p['before_s']:g} s, then {after} s measured from the swap (the first answer of the new "
        f"version). Runs alternate on/off, a fresh service each, same requests per pair. Hit rate: share "
        f"of /recommend answers with `cached: true` (users never seen cannot hit: the mix's ceiling is "
        f"about 87 %); p99 in ms of /recommend from each request's due time. Machine: {m['cores']} cores, "
        f"{m['cpu']}, shared with other work (load average per run in the table).",
        *([f"Note: {result['note']}"] if result.get("note") else []),
        "",
        *table(header, rows),
        "",
    ]
    windows = ("steady", "deploy", "first_window")

    def failures(r: dict[str, Any]) -> str:
        kinds = ", ".join(f"{k} x{n}" for w in windows for k, n in r[w]["failures"].items())
        shed = ", ".join(f"{k} {v:.0f}" for k, v in r["shed"].items())
        return f"{r['name']}: {kinds} (shed by admission after the promotion: {shed})"

    failed = [failures(r) for r in runs if any(r[w]["failures"] for w in windows)]
    if failed:
        lines += [f"Errors: {'; '.join(failed)}.", ""]
    if on and off:

        def vs(*path: str, digits: int | None = 1) -> str:
            a, b = mean(on, *path), mean(off, *path)
            return f"{pct(a)} vs {pct(b)}" if digits is None else f"{num(a, digits)} vs {num(b, digits)}"

        lines.append(
            f"Mean over {len(on)} run(s) each, first {after} s after the swap, with warming vs without: hit "
            f"rate {vs('first_window', 'hit_rate', digits=None)} (first 10 s: "
            f"{vs('first_10s', 'hit_rate', digits=None)}; before the promotion "
            f"{pct(mean(on + off, 'steady', 'hit_rate'))}), /recommend p99 "
            f"{vs('first_window', 'p99_recommend_ms')} ms (first 10 s: {vs('first_10s', 'p99_recommend_ms')} "
            f"ms). Warming lengthens promotion→swap ({vs('promote_to_swap_s')} s); the old version serves "
            f"meanwhile, at p99 {vs('deploy', 'p99_recommend_ms')} ms from promotion to swap (while the new "
            f"one warmed: {num(mean(warming, 'warming_window', 'p99_recommend_ms'), 1)} ms). With warming "
            "the start-up is warmed too, hence the higher hit rate before the promotion."
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    with figure(path, 2, (11, 3.8)) as (ax_hit, ax_p99):
        for r in result["runs"]:
            t = [b["t_s"] + BIN_S / 2 for b in r["bins"]]
            style = {"color": "tab:green" if r["warming"] else "tab:red", "alpha": 0.8}
            label = f"{r['name']} ({'on' if r['warming'] else 'off'})"
            ax_hit.plot(t, [100 * b["hit_rate"] for b in r["bins"]], label=label, **style)
            ax_p99.plot(t, [b["p99_recommend_ms"] for b in r["bins"]], label=label, **style)
        for ax, title in ((ax_hit, "/recommend cache hit rate, %"), (ax_p99, "/recommend p99, ms")):
            ax.axvline(0, color="grey", lw=0.8, ls="--")
            ax.set_xlabel(f"seconds since the swap ({BIN_S:g} s bins)")
            ax.set_title(title)
        ax_hit.set_ylim(0, 100)
        ax_p99.set_yscale("log")
        ax_hit.legend(fontsize=7)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", help="the version to serve (default: the store's production version)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short, one pair, 20 requests/s")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--before-s", type=float)
    parser.add_argument("--after-s", type=float)
    parser.add_argument("--reps", type=int, help="on/off pairs")
    parser.add_argument(
        "--swap-margin-s", type=float, help="load planned for the promotion to reach the swap"
    )
    parser.add_argument("--warm-users", type=int, help="FOLIO_WARM_USERS of the runs with warming")
    parser.add_argument(
        "--note", default="", help="a line for the report (e.g. what else ran on the machine)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--work", type=Path, help="default: a temporary directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    profile = QUICK if args.quick else FULL
    changes = {
        k: v
        for k, v in {
            "rate": args.rate,
            "before_s": args.before_s,
            "after_s": args.after_s,
            "reps": args.reps,
            "swap_margin_s": args.swap_margin_s,
            "warm_users": args.warm_users,
        }.items()
        if v is not None
    }
    profile = replace(profile, **changes)
    source = registry.get(args.tag) if args.tag else registry.production()
    if source is None:
        raise SystemExit("no production version in the model store: pass --tag or promote one")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="folio-warm-") as tmp:
        suite = Suite(str(source.tag), args.work or Path(tmp), FAULT_PROFILE)
        _ = suite.good  # the store's first production version
        for rep in range(profile.reps):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for on in order:
                name = f"{'on' if on else 'off'}-{rep + 1}"
                log.info(
                    "%s: serving %s, promoting under %g requests/s", name, suite.source_tag, profile.rate
                )
                run = run_once(suite, profile, profile.warm_users if on else 0, name, seed=rep + 1)
                log.info(
                    "%s: swap %.1f s after the promotion; hit rate %.3f in the first %g s, p99 %.1f ms",
                    name,
                    run["promote_to_swap_s"],
                    run["first_window"]["hit_rate"],
                    run["after_window_s"],
                    run["first_window"]["p99_recommend_ms"],
                )
                runs.append(run)
    result: dict[str, Any] = {
        "source": str(source.tag),
        "dataset": str(source.info.labels.get("dataset", "")),
        "users": len(users_by_activity(Path(source.path))),
        "profile": profile.__dict__,
        "quick": args.quick,
        "note": args.note,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started),
        "runs": runs,
    }
    result["markdown"] = markdown(result)
    save(args.out, "warm", result, plot)
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main()
