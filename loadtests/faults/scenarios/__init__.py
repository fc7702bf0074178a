"""The fault scenarios, in the order docs/reliability.md lists them: name -> function(suite) -> rows."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from loadtests.faults.scenarios import overload, promote, redis, shutdown, triton, watcher
from loadtests.faults.suite import Suite
from loadtests.faults.verdict import Row, target

SCENARIOS: dict[str, Callable[[Suite], list[Row]]] = {
    "triton-kill": triton.kill,
    "triton-stall": triton.stall,
    "redis-stop": redis.stop,
    "redis-kill": redis.kill,
    "sigterm": shutdown.sigterm,
    "sigkill": shutdown.sigkills,
    "promote": promote.promote,
    "overload": overload.overload,
    "watcher": watcher.watcher,
}


def run(suite: Suite, name: str) -> list[Row]:
    """The scenario's rows; one row saying why when the scenario itself broke (a service that did not
    start, a store command that failed): reported as a target not met, never skipped."""
    try:
        return SCENARIOS[name](suite)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"[:600]
        traceback.print_exc()
        return [Row(name, 0, 0, 0, 0, float("nan"), None, None, [target("the scenario ran", False, detail)])]
