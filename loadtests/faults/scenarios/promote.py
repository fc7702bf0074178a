"""Scenario 6: broken versions promoted in the store a service follows (FOLIO_MODEL_WATCH_S), under mixed
load: one with a truncated artifact (cut before it was saved, so its checksum is of the cut file), one
whose artifact rotted in the store after it was saved, one whose INT8 ranker's largest weight tensor was
overwritten with random values before it was saved (valid ONNX, finite scores, its checksum is the
corrupt file's: only a parity check against FP32 can tell). The old version must keep serving and
/info's ``last_reload_error`` must say why; the good version is promoted again after each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp

from loadtests.faults import inject
from loadtests.faults.mix import Clock
from loadtests.faults.store import randomize_largest_initializer, rot, truncate
from loadtests.faults.suite import Suite, info, journal_check
from loadtests.faults.verdict import Row, feedback_targets, reads_target, row, target

NAME = "promote"


def _breakages(suite: Suite) -> list[tuple[str, Callable[[], tuple[str, str]]]]:
    store = suite.store

    def truncated() -> tuple[str, str]:
        how: list[str] = []
        tag = store.changed_copy(lambda d: how.append(truncate(Path(d) / "items.faiss")))
        return tag, how[0]

    def rotted() -> tuple[str, str]:
        tag = store.save()
        return tag, rot(store.path(tag) / "ranker_fp32.onnx")

    def corrupted() -> tuple[str, str]:
        how: list[str] = []
        tag = store.changed_copy(
            lambda d: how.append(randomize_largest_initializer(Path(d) / "ranker_int8.onnx"))
        )
        return tag, how[0]

    return [
        ("6a. promote: truncated artifact", truncated),
        ("6b. promote: artifact rotted after save", rotted),
        ("6c. promote: valid ONNX, corrupted INT8 weights", corrupted),
    ]


def promote(suite: Suite) -> list[Row]:
    p, good = suite.profile, suite.good
    rows = []
    with suite.serve(NAME, follow=True, FOLIO_MODEL_WATCH_S=str(p.watch_s)) as served:
        url = served.url
        for title, breakage in _breakages(suite):
            if not inject.wait_until(lambda: (info(url) or {}).get("model_version") == good, 120, 0.5):
                raise RuntimeError(f"{url} does not serve {good} again")
            bad, how = breakage()
            seen: dict = {}

            def decided(bad: str = bad, seen: dict = seen) -> bool:
                now = info(url) or {}
                seen.update(now)
                return now.get("model_version") == bad or bad in (now.get("last_reload_error") or "")

            async def script(
                clock: Clock, _: aiohttp.ClientSession, bad: str = bad, decided: Callable[[], bool] = decided
            ) -> None:
                await asyncio.sleep(p.before_s)
                await asyncio.to_thread(suite.store.promote, bad)
                clock.mark("fault")
                if await inject.await_until(decided, p.promote_wait_s, 0.25):
                    clock.mark("decided")

            load = suite.load(url, p.before_s + p.decide_s, script)
            suite.store.promote(good)  # back to the good version (a no-op for a service that refused bad)
            served_bad = sum(s.answer.model_version == bad for s in load.samples)
            error = seen.get("last_reload_error") or ""
            decided_s = load.marks.get("decided")
            check = journal_check(load.ledger, suite.journal(NAME))
            targets = [
                target(
                    "the old version kept serving",
                    served_bad == 0 and seen.get("model_version") == good,
                    f"{served_bad} answers from {bad}; /info model_version {seen.get('model_version')}",
                ),
                target("last_reload_error says why", bad in error, repr(error[:300]) if error else "null"),
                reads_target(load.samples),
                *feedback_targets(check),
            ]
            rows.append(
                row(
                    title,
                    load.samples,
                    None,
                    check,
                    targets,
                    recovery_expected=False,
                    breakage=how,
                    decided_after_s=None if decided_s is None else decided_s - load.marks["fault"],
                )
            )
    return rows
