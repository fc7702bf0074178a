"""Child processes: one supervisor for every server Folio starts (tritonserver, and in the tests and
benchmarks `bentoml serve` and redis-server).

`ChildProcess` starts a command with its output in a log file, waits until a readiness probe answers
(failing fast, with the log tail, when the process dies while starting; stopped when it is not ready in
time), and stops it: its stop signal (SIGTERM unless it says otherwise), a grace period, then SIGKILL, of
its whole process group when it has one. A child can also be made to die with this process
(`die_with_parent`: PR_SET_PDEATHSIG) and to ignore signals meant for someone else (`blocked_signals`:
BentoML's process manager SIGTERMs a worker's children along with the worker).
`free_port` picks a loopback port that was free a moment ago.

`ServedFolio` is `bentoml serve` of this checkout's service (or any `module:Class` / Bento tag) on a free
port, for the end-to-end tests and the benchmarks; the service never starts it itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psutil

T = TypeVar("T")

log = logging.getLogger(__name__)

LEFT_BEHIND_GRACE_S = 0.5
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
    stubs) down with it. `stop()` sends `stop_signal` to the child (`term_group`: to its whole group),
    waits `stop_timeout_s`, then SIGKILLs the group (or the child); a group's leftovers are killed either
    way.

    `die_with_parent`: the child gets SIGKILL when this process dies, however it dies (SIGKILL included;
    Linux PR_SET_PDEATHSIG, set between fork and exec). `blocked_signals` are blocked in the child (a
    blocked mask survives exec): they stay pending and never reach a program that keeps the mask, so
    pick a `stop_signal` outside them.
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
        stop_signal: signal.Signals = signal.SIGTERM,
        blocked_signals: Collection[signal.Signals] = (),
        die_with_parent: bool = False,
    ) -> None:
        if stop_signal in blocked_signals:
            raise ValueError(f"stop signal {stop_signal.name} is among the blocked signals")
        self.name = name
        self.log_file = log_file
        self.own_group = own_group
        self.term_group = term_group and own_group
        self.stop_timeout_s = stop_timeout_s
        self.tail_skip = tail_skip
        self.stop_signal = stop_signal
        self.blocked_signals = frozenset(blocked_signals)
        self.die_with_parent = die_with_parent
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
        setup = _child_setup(self.blocked_signals, self.die_with_parent)
        with open(self.log_file, "ab" if append else "wb") as out:

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=self.own_group,
                    preexec_fn=setup,
                )

            self.started_at = time.monotonic()
            # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a
            # child that must die with this process is forked by a thread that lives as long as the
            # process (_SPAWNER), never by the caller's, which may be a pool thread that ends sooner.
            self.proc = _SPAWNER.call(popen) if self.die_with_parent else popen()
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
        """The stop signal, wait, then SIGKILL; a no-op when the child is not running. ``timeout_s`` 0:
        SIGKILL at once (nothing left for a graceful exit to finish)."""
        proc = self.proc
        if proc is None:
            return
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        descendants = _descendants(proc.pid)  # before the leader goes: its children are then re-parented
        if proc.poll() is None and timeout_s > 0:
            with contextlib.suppress(ProcessLookupError):
                if self.term_group:
                    os.killpg(proc.pid, self.stop_signal)
                else:
                    proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) ignored %s for %.0fs; killing",
                    self.name,
                    proc.pid,
                    self.stop_signal.name,
                    timeout_s,
                )
        if proc.poll() is None:
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


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's prctl (None off Linux), resolved before any fork: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _child_setup(blocked: frozenset[signal.Signals], die_with_parent: bool) -> Callable[[], None] | None:
    """What runs in the child between fork and exec (None: nothing, so subprocess may use vfork).

    Kept to two system calls: a forked child of a threaded parent must not touch locks other threads
    may have held (no logging, no imports, nothing allocated that needs them)."""
    prctl = _prctl() if die_with_parent else None
    if die_with_parent and prctl is None:
        log.warning("die_with_parent needs Linux (PR_SET_PDEATHSIG); the child may outlive this process")
    if not blocked and prctl is None:
        return None
    parent, sigkill = os.getpid(), int(signal.SIGKILL)
    mask = [int(s) for s in blocked]

    def setup() -> None:
        if mask:
            signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        if prctl is not None:
            if prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
            if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
                os.kill(os.getpid(), sigkill)

    return setup


class _Spawner:
    """A daemon thread that lives as long as the process and runs the calls handed to it.

    Daemon threads are never joined: the thread ends only when the process does, so the children it
    forks with PR_SET_PDEATHSIG are killed at the process's death and not before (a ThreadPoolExecutor's
    threads, asyncio's default executor included, are joined and end at interpreter shutdown, before
    atexit handlers stop the children gracefully). Restarted lazily in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:  # threads do not survive fork
        self._lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        self._thread = None

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on the spawner thread; its result, or its exception raised here."""
        if threading.current_thread() is self._thread:
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="folio-spawner", daemon=True)
                self._thread.start()
        done: Future[object] = Future()
        self._jobs.put((fn, done))
        return done.result()  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed back to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()


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
    alive = _still_running(processes, LEFT_BEHIND_GRACE_S)  # a group member SIGKILLed a moment ago
    for p in alive:
        log.warning("%s left %s (pid %d) running after it stopped; killing it", name, p.name(), p.pid)
        with contextlib.suppress(psutil.Error):
            p.kill()
    _still_running(alive, 10.0)


def _still_running(processes: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    """Those of ``processes`` still running (a zombie is not: init reaps it when it gets to it) after
    waiting up to ``within_s`` for them to go."""
    deadline = time.monotonic() + within_s
    alive = [p for p in processes if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [p for p in alive if _running(p)]
    return alive


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
