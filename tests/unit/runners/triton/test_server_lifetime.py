"""The real tritonserver's lifetime (runners/triton/server.py): it dies with its owner, a SIGTERM meant
for its owner's process tree does not stop it, and its owner stops it gracefully, leaving nothing."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from runners.platform.processes import ROOT
from runners.triton import reaper
from runners.triton.server import TritonServer
from tests.unit.runners.triton.conftest import MODELS
from tests.unit.runners.triton.procs import group, mapped_regions, regions, running, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics"),
]


def echo(server: TritonServer, model: str = MODELS[0]) -> np.ndarray:
    x = np.arange(3, dtype=np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        inp = grpcclient.InferInput("x", [3], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], client_timeout=30).as_numpy("y")
    assert result is not None
    return result


def prefix_of(owner_pid: int) -> str:
    return f"{reaper.SHM_PREFIX}{owner_pid}-"


# An owner as a BentoML worker is one: it starts the server from asyncio's default executor, prints
# the server's pid once it is ready, and serves on.
OWNER = """
    import asyncio, sys
    from pathlib import Path
    from runners.triton.server import TritonServer

    async def main():
        server = TritonServer(log_file=Path(sys.argv[2]))
        await asyncio.to_thread(server.start, Path(sys.argv[1]))
        print(server.pid, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
"""


def test_a_killed_owner_takes_its_triton_and_stubs_with_it(echo_repository: Path, tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), str(echo_repository), str(tmp_path / "t.log")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    pid = 0
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline() or 0)
        assert pid, f"the owner failed to start its server:\n{(tmp_path / 't.log').read_text()[-3000:]}"
        members = group(pid)
        assert len(members) == 1 + len(MODELS), f"expected the server and one stub per model: {members}"
        assert mapped_regions(pid) and mapped_regions(pid) <= regions(prefix_of(owner.pid))
        owner.kill()
        owner.wait(10)
        assert wait_until(lambda: not group(pid), 10), f"left running: {group(pid)}"
        reaper.remove_unused_regions()  # what the next worker's reaper does (the stubs unlink them anyway)
        assert not regions(prefix_of(owner.pid))
    finally:
        owner.kill()
        if pid and group(pid):
            os.killpg(pid, signal.SIGKILL)


def test_sigterm_to_its_process_tree_does_not_stop_it_and_stop_is_graceful(
    echo_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = TritonServer(log_file=tmp_path / "t.log", stop_timeout_s=15)
    with server.start(echo_repository):
        assert server.pid is not None
        pid, members = server.pid, group(server.pid)
        own = mapped_regions(pid)
        assert len(members) == 1 + len(MODELS) and own
        os.kill(pid, signal.SIGTERM)  # what BentoML's process manager sends a worker's children
        os.killpg(pid, signal.SIGTERM)  # and the stubs, had it sent it to the group
        time.sleep(1.5)
        assert group(pid) == members, "a SIGTERM stopped tritonserver or a stub"
        assert server.is_ready()
        np.testing.assert_array_equal(echo(server), np.arange(3, dtype=np.float32))
        caplog.set_level(logging.WARNING, logger="runners.platform.processes")
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    assert took < 10, f"stop took {took:.1f}s"
    assert not [r for r in caplog.records if "killing" in r.getMessage()], "stop() had to SIGKILL"
    log = (tmp_path / "t.log").read_text()
    assert "Signal (2) received" in log and "Signal (15)" not in log
    assert not any(running(p) for p in members)
    assert not (own & set(os.listdir(reaper.SHM_DIR))), "the graceful stop left shared memory"


def test_stop_removes_what_a_killed_server_left(echo_repository: Path, tmp_path: Path) -> None:
    server = TritonServer(log_file=tmp_path / "t.log")
    server.start(echo_repository)
    try:
        assert server.pid is not None
        own = mapped_regions(server.pid)
        os.killpg(server.pid, signal.SIGKILL)  # server and stubs at once: nobody unlinks the regions
        assert wait_until(lambda: not server.is_alive(), 10)
        assert own <= set(os.listdir(reaper.SHM_DIR)), "expected the killed server to leave its regions"
    finally:
        server.stop()
    assert not (own & set(os.listdir(reaper.SHM_DIR)))


def test_restart_after_a_crash_serves_again(echo_repository: Path, tmp_path: Path) -> None:
    """The watchdog's path: the lifetime options and the per-start shm prefix survive a restart."""
    with TritonServer(log_file=tmp_path / "t.log").start(echo_repository) as server:
        assert server.pid is not None
        first, before = server.pid, mapped_regions(server.pid)
        os.killpg(first, signal.SIGKILL)
        assert wait_until(lambda: not server.is_alive(), 10)
        server.restart()
        assert server.pid != first and server.is_ready()
        assert not (before & set(os.listdir(reaper.SHM_DIR))), "restart kept the crashed server's regions"
        np.testing.assert_array_equal(echo(server, MODELS[1]), np.arange(3, dtype=np.float32))
