"""ChildProcess's lifetime options on real processes: the stop signal, blocked signals, and a child
that dies with its parent (PR_SET_PDEATHSIG) even when the thread that started it is gone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from runners.platform.processes import ROOT, ChildProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def blocked_mask(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # init reaps orphans late here
    except psutil.NoSuchProcess:
        return True


def test_stop_sends_the_configured_signal(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    code = f"""
        import pathlib, signal, sys, time
        signal.signal(signal.SIGINT, lambda *_: sys.exit(7))
        pathlib.Path({str(flag)!r}).touch()
        time.sleep(60)
    """
    child = ChildProcess("int", tmp_path / "int.log", stop_signal=signal.SIGINT).spawn(python(code))
    child.wait_ready(flag.exists, timeout_s=30)
    started = time.monotonic()
    child.stop(timeout_s=20)
    assert time.monotonic() - started < 10
    assert child.proc is not None and child.proc.returncode == 7  # its SIGINT handler ran: no SIGKILL


def test_a_blocked_sigterm_survives_exec_and_is_ignored(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    child = ChildProcess(
        "shielded", tmp_path / "s.log", stop_signal=signal.SIGINT, blocked_signals={signal.SIGTERM}
    ).spawn(python(code))
    child.wait_ready(flag.exists, timeout_s=30)
    assert child.pid is not None
    assert blocked_mask(child.pid) & (1 << (signal.SIGTERM - 1))
    os.kill(child.pid, signal.SIGTERM)
    os.killpg(child.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert child.alive(), "SIGTERM reached a child that blocks it"
    child.stop(timeout_s=20)  # SIGINT: KeyboardInterrupt, and Python exits "killed by SIGINT"
    assert not child.alive() and child.proc is not None and child.proc.returncode == -signal.SIGINT


def test_the_stop_signal_cannot_be_a_blocked_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SIGTERM"):
        ChildProcess("bad", tmp_path / "b.log", blocked_signals={signal.SIGTERM})


def test_children_without_options_are_unchanged(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    child = ChildProcess("plain", tmp_path / "p.log").spawn(python(code))
    child.wait_ready(flag.exists, timeout_s=30)
    assert child.pid is not None
    assert not blocked_mask(child.pid) & (1 << (signal.SIGTERM - 1))
    child.stop()
    assert child.proc is not None and child.proc.returncode == -signal.SIGTERM


# The parent starts the child from a short-lived thread (as asyncio.to_thread may), lets that thread end,
# then prints the child's pid and waits to be killed.
PARENT = """
    import sys, threading, time
    from pathlib import Path
    from runners.platform.processes import ChildProcess

    box = []
    def start():
        child = ChildProcess("sleeper", Path(sys.argv[1]), die_with_parent=sys.argv[2] == "1")
        box.append(child.spawn([sys.executable, "-c", "import time; time.sleep(120)"]))
    t = threading.Thread(target=start)
    t.start()
    t.join()
    time.sleep(0.5)  # the starting thread is gone: the child must still run
    print(box[0].pid, int(box[0].alive()), flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def orphan_pids() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test (the children a test expects to outlive their parent)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_parent(tmp_path: Path, die_with_parent: bool) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [*python(PARENT), str(tmp_path / "child.log"), "1" if die_with_parent else "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert parent.stdout is not None
    pid, alive = parent.stdout.readline().split()
    assert alive == "1", "the child died with the thread that started it"
    return parent, int(pid)


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_child_dies_with_its_parent_only_when_asked(
    tmp_path: Path, die_with_parent: bool, orphan_pids: list[int]
) -> None:
    parent, child = start_parent(tmp_path, die_with_parent)
    orphan_pids.append(child)
    parent.kill()
    parent.wait(10)
    if die_with_parent:
        assert wait_until(lambda: gone(child), 5), "the child outlived its SIGKILLed parent"
    else:  # the control: without the option the child is orphaned (what this option fixes)
        time.sleep(1)
        assert not gone(child)
