"""The embedded tritonserver's lifetime under `bentoml serve` (one service for the module, stopped by
the last test): a SIGKILLed worker takes its tritonserver, stubs and shared memory with it, and a
SIGTERM to the service (which BentoML's process manager also sends to the worker's children) leaves
Triton serving through the drain until the worker stops it.

Issue 14, defects 4 and 5. The tests read the processes in /proc: tritonserver leads its own process
group, with its Python-backend stubs in it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from runners.platform.processes import ServedFolio
from tests.integration.test_served import wait_for
from tests.unit.runners.triton.procs import SHM, group, mapped_regions

pytestmark = pytest.mark.integration
DRAIN_S = 3.0


@pytest.fixture(scope="module")
def served(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("triton_lifetime")
    env = {"FOLIO_MODEL_TAG": model_tag, "FOLIO_STATE_DIR": str(tmp / "state"), "FOLIO_DRAIN_S": str(DRAIN_S)}
    with ServedFolio(env, tmp / "serve.log") as server:
        yield server


def info(served: ServedFolio) -> dict:
    return httpx.post(f"{served.url}/info", json={}, timeout=30).json()


def triton_of(served: ServedFolio) -> tuple[int, int]:
    """(worker pid, its tritonserver's pid), once the worker runs a ready Triton."""
    found: dict = {}

    def up() -> bool:
        try:
            found.update(info(served))
        except httpx.HTTPError:
            return False
        return bool(found.get("triton", {}).get("alive")) and found["triton"]["pid"] is not None

    wait_for(up, 120, "a worker with a running tritonserver", served.log_tail)
    worker, triton = found["worker_pid"], found["triton"]["pid"]
    assert psutil.Process(triton).ppid() == worker, "tritonserver is not the worker's child"
    return worker, triton


def ranked_by_triton(served: ServedFolio, user: str) -> bool:
    r = httpx.post(f"{served.url}/recommend", json={"user_id": user, "k": 3}, timeout=30)
    body = r.json()
    return r.status_code == 200 and body["fallback"] == "none" and not body["cached"]


def test_a_killed_worker_leaves_no_triton_behind(served: ServedFolio) -> None:
    worker, triton = triton_of(served)
    members, regions = group(triton), mapped_regions(triton)
    assert len(members) >= 2 and regions, "expected tritonserver, its stubs and their shared memory"
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not group(triton), 15, f"the old tritonserver's group {group(triton)} outlived it")
    new_worker, new_triton = triton_of(served)  # the process manager respawned the worker
    assert new_worker != worker and new_triton != triton
    wait_for(
        lambda: httpx.get(f"{served.url}/readyz", timeout=10).status_code == 200,
        60,
        "readiness after the respawn",
        served.log_tail,
    )
    assert ranked_by_triton(served, "u11")
    assert not regions & set(os.listdir(SHM)), "the old server's shared memory is still in /dev/shm"


def test_sigterm_leaves_triton_serving_through_the_drain(served: ServedFolio) -> None:
    """Stops the module's service: keep this test last."""
    _, triton = triton_of(served)
    members, regions = group(triton), mapped_regions(triton)
    restarts = info(served)["triton"]["restarts"]
    assert served.proc is not None
    os.kill(served.proc.pid, signal.SIGTERM)  # the arbiter: SIGTERM to the worker, then to its children
    time.sleep(1.0)
    assert group(triton) == members, "tritonserver or a stub stopped at the start of the drain"
    assert all(ranked_by_triton(served, f"u{n}") for n in range(20, 25)), "fallbacks during the drain"
    during = info(served)
    assert during["draining"] and during["triton"]["pid"] == triton
    assert during["triton"]["restarts"] == restarts, "the watchdog restarted Triton during the drain"
    served.proc.wait(DRAIN_S + 30)
    wait_for(lambda: not group(triton), 15, f"tritonserver outlived the service: {group(triton)}")
    assert not regions & set(os.listdir(SHM))
    assert "tritonserver is not running; restarting" not in served.log_tail(2000)
