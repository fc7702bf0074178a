"""Child processes: one supervisor for every server Folio starts (tritonserver, and in the tests and
benchmarks `bentoml serve` and redis-server).

`ChildProcess` starts a command with its output in a log file, waits until a readiness probe answers
(failing fast, with the log tail, when the process dies while starting; stopped when it is not ready in
time), and stops it: SIGTERM, a grace period, then SIGKILL, of its whole process group when it has one.
`free_port` picks a loopback port that was free a moment ago.

`ServedFolio` is `bentoml serve` of this checkout's service (or any `module:Class` / Bento tag) on a free
port, for the end-to-end tests and the benchmarks; the service never starts it itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the checkout (or the Bento's src): service.py lives here


class Supervised(ABC):
    """A server as a context manager: started on entry, stopped on exit."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StartupError(RuntimeError):
    """The child exited or was not ready in time; the message carries the log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path | None, lines: int = 60, skip: tuple[str, ...] = ()) -> str:
    """The last `lines` lines of a log file, leaving out lines that start with one of `skip`."""
    try:
        text = Path(path).read_text(errors="replace").splitlines() if path is not None else None
    except OSError:
        text = None
    if text is None:
        return "<no log>"
    return "\n".join([line for line in text if not (skip and line.startswith(skip))][-lines:])


class ChildProcess:
    """One child process, its output appended (or written afresh) to `log_file`.

    `own_group`: the child leads a new session, so that `stop()` takes whatever it started (workers,
    stubs) down with it. `stop()` sends SIGTERM to the child (`term_group`: to its whole group), waits
    `stop_timeout_s`, then SIGKILLs the group (or the child); a group's leftovers are killed either way.
    """

    def __init__(
        self,
        name: str,
        log_file: Path,
        *,
        own_group: bool = True,
        term_group: bool = False,
        stop_timeout_s: float = 15.0,
        tail_skip: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.log_file = log_file
        self.own_group = own_group
        self.term_group = term_group and own_group
        self.stop_timeout_s = stop_timeout_s
        self.tail_skip = tail_skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_file, lines, self.tail_skip)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        append: bool = True,
    ) -> ChildProcess:
        """Start `argv` with stdout and stderr in the log file (the parent keeps no handle open)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab" if append else "wb") as out:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=self.own_group,
            )
        return self

    def wait_ready(
        self,
        ready: Callable[[], bool],
        timeout_s: float,
        *,
        poll_s: float = 0.05,
        max_poll_s: float = 0.5,
        error: type[Exception] = StartupError,
    ) -> float:
        """Poll `ready()` until it is true; the seconds since spawn. Raises `error` with the log tail, the
        child stopped, when it exits first or is not ready within `timeout_s` of its start."""
        assert self.proc is not None, "wait_ready() before spawn()"
        deadline = self.started_at + timeout_s
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    why = f"exited with code {code} while starting"
                    break
                if ready():
                    return time.monotonic() - self.started_at
                if time.monotonic() > deadline:
                    why = f"not ready after {timeout_s:.0f}s"
                    break
                time.sleep(poll_s)
                poll_s = min(poll_s * 1.5, max_poll_s)
        except BaseException:  # e.g. KeyboardInterrupt while waiting: leave no half-started server
            self.stop()
            raise
        self.stop()
        raise error(f"{self.name} {why}; log tail:\n{self.log_tail()}")

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, wait, then SIGKILL; a no-op when the child is not running."""
        proc = self.proc
        if proc is None:
            return
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        descendants = _descendants(proc.pid)  # before the leader goes: its children are then re-parented
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.term_group:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing", self.name, proc.pid, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    if self.own_group:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.kill()
                proc.wait(timeout=10)
        if self.own_group:  # children normally exit with the leader; make sure none outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        _kill_left_behind(self.name, descendants)


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_left_behind(name: str, processes: list[psutil.Process]) -> None:
    """SIGKILL what the child started and left running in sessions of its own (BentoML's workers lead
    their own session, so the group kill above misses one whose shutdown hangs)."""
    alive = [p for p in processes if _running(p)]
    for p in alive:
        log.warning("%s left %s (pid %d) running after it stopped; killing it", name, p.name(), p.pid)
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


class ServedFolio(Supervised):
    """`bentoml serve <target>` from the checkout on a free loopback port with `env` (FOLIO_DRAIN_S=0
    unless it says otherwise); ready once /readyz answers 200. Use as a context manager."""

    def __init__(
        self,
        env: dict[str, str],
        log_file: Path,
        startup_timeout_s: float = 180.0,
        target: str = "service:Recommender",
    ) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FOLIO_DRAIN_S": "0", **env}  # tests stop servers at once unless they say
        self.log_file = log_file
        self.startup_timeout_s = startup_timeout_s
        self._child = ChildProcess("bentoml serve", log_file, term_group=True, stop_timeout_s=30.0)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self._child.proc

    def start(self) -> ServedFolio:
        import httpx

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml), "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)]
        self._child.spawn(cmd, env=self.env, cwd=ROOT, append=False)
        self._child.wait_ready(ready, self.startup_timeout_s, poll_s=0.25, max_poll_s=0.25)
        return self

    def log_tail(self, lines: int = 80) -> str:
        return self._child.log_tail(lines)

    def alive(self) -> bool:
        return self._child.alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._child.stop(timeout_s)
