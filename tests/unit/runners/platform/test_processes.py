"""The shared process supervisor (runners/platform/processes.py) on real child processes."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from runners.platform.processes import ChildProcess, StartupError, free_port, log_tail


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_ready_child_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    touch = f"pathlib.Path({str(flag)!r}).touch()"
    code = f"import pathlib, time; print('hello', flush=True); {touch}; time.sleep(60)"
    child = ChildProcess("sleeper", tmp_path / "logs" / "sleeper.log").spawn(python(code))
    waited = child.wait_ready(flag.exists, timeout_s=30)
    assert 0 < waited < 30 and child.alive() and child.pid is not None
    child.stop()
    assert not child.alive() and child.proc is not None and child.proc.returncode == -signal.SIGTERM
    assert "hello" in child.log_tail()
    child.stop()  # stopping twice is harmless


def test_a_child_that_dies_while_starting_fails_fast_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('boom: bad config', flush=True); sys.exit(3)"
    child = ChildProcess("broken", tmp_path / "broken.log").spawn(python(code))
    started = time.monotonic()
    with pytest.raises(StartupError) as info:
        child.wait_ready(lambda: False, timeout_s=60)
    assert time.monotonic() - started < 10
    assert "broken exited with code 3 while starting" in str(info.value)
    assert "boom: bad config" in str(info.value)


def test_a_child_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    child = ChildProcess("slow", tmp_path / "slow.log").spawn(python("import time; time.sleep(60)"))
    with pytest.raises(StartupError, match="slow not ready after 1s"):
        child.wait_ready(lambda: False, timeout_s=1)
    assert not child.alive()


def test_sigterm_ignored_then_killed_with_its_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import signal, subprocess, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(g.pid))\n"
        "time.sleep(60)\n"
    )
    child = ChildProcess("stubborn", tmp_path / "stubborn.log").spawn(python(code))
    child.wait_ready(pid_file.exists, timeout_s=30)
    time.sleep(0.2)  # the pid file is written once the grandchild runs
    grandchild = psutil.Process(int(pid_file.read_text()))
    started = time.monotonic()
    child.stop(timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert child.proc is not None and child.proc.returncode == -signal.SIGKILL
    grandchild.wait(timeout=10)  # killed with the group
    assert not grandchild.is_running()


def test_without_a_group_only_the_child_is_signalled(tmp_path: Path) -> None:
    child = ChildProcess("plain", tmp_path / "plain.log", own_group=False)
    child.spawn(python("import time; time.sleep(60)"))
    assert child.pid is not None and os.getpgid(child.pid) == os.getpgid(0)  # stays in our group
    child.stop()
    assert child.proc is not None and child.proc.returncode == -signal.SIGTERM


def test_log_tail_skips_prefixes_and_survives_a_missing_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("+----+\n| table |\nfirst\nsecond\nthird\n")
    assert log_tail(log, 2) == "second\nthird"
    assert log_tail(log, 10, skip=("+", "|")) == "first\nsecond\nthird"
    assert log_tail(tmp_path / "missing.log") == "<no log>"


def test_what_the_child_left_in_a_session_of_its_own_is_killed_too(tmp_path: Path) -> None:
    """BentoML's workers lead their own session: a worker whose shutdown hangs must not outlive the stop."""
    pid_file = tmp_path / "worker.pid"
    worker = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    code = (
        "import pathlib, subprocess, sys, time; "
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(w.pid)); time.sleep(120)"
    )
    child = ChildProcess("arbiter", tmp_path / "arbiter.log", term_group=True).spawn(python(code))
    child.wait_ready(pid_file.exists, timeout_s=30)
    time.sleep(0.2)
    worker_pid = int(pid_file.read_text())
    assert os.getsid(worker_pid) == worker_pid  # out of the arbiter's group: killpg cannot reach it
    child.stop(timeout_s=5)
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
