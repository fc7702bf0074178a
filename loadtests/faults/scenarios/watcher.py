"""Scenario 8: the model-store watcher with ``versions`` stored versions (the production one and copies
saved as candidates): p99 of the mixed load at a fixed rate with the watcher polling every second
(FOLIO_MODEL_WATCH_S=1) and off (=0), services started one after the other in the same run, off / on
alternating ``watcher_reps`` times. "Within noise" (verdict.within_noise): the best on run's p99 exceeds
the best off run's by no more than the spread between the off runs, 15 % of the best off run, or 2 ms,
whichever is largest."""

from __future__ import annotations

from loadtests.faults.mix import Sample
from loadtests.faults.suite import Suite
from loadtests.faults.verdict import Row, p99_ms, reads_target, row, target, within_noise


def watcher(suite: Suite) -> list[Row]:
    p = suite.profile
    _ = suite.good
    stored = suite.store.count()
    if stored < p.versions:
        suite.store.save_copies(p.versions - stored)
    stored = suite.store.count()
    p99: dict[str, list[float]] = {"off": [], "on": []}
    samples: dict[str, list[Sample]] = {"off": [], "on": []}
    for rep in range(p.watcher_reps):
        for mode, watch in (("off", "0"), ("on", "1")):
            with suite.serve(f"watcher-{mode}-{rep}", follow=True, FOLIO_MODEL_WATCH_S=watch) as served:
                load = suite.load(served.url, p.watcher_s, rate=p.watcher_rate)
            p99[mode].append(p99_ms(load.samples))
            samples[mode] += load.samples
    met, noise = within_noise(p99["on"], p99["off"])
    on, off = min(p99["on"]), min(p99["off"])
    return [
        row(
            f"8. model-store watcher on (1 s) vs off, {stored} versions stored",
            samples["on"],
            None,
            None,
            [
                target(
                    "watcher-on p99 within noise of off",
                    met,
                    f"best run on {on:.1f} ms vs off {off:.1f} ms, noise {noise:.1f} ms",
                    speed=True,
                ),
                reads_target(samples["on"] + samples["off"]),
            ],
            recovery_expected=False,
            rate_rps=p.watcher_rate,
            p99_on_runs_ms=p99["on"],
            p99_off_runs_ms=p99["off"],
            requests_off=len(samples["off"]),
        )
    ]
