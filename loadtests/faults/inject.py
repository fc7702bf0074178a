"""Fault injection on loopback: finding a service's processes (its worker, the embedded tritonserver and
its Python-backend stubs, as descendants of `bentoml serve`), signalling them, and checking what a
killed process left behind (live processes of its group, Python-backend shared memory in /dev/shm)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil

SHM = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [p for p in psutil.Process(pid).children(recursive=True) if alive(p.pid)]
    return []


def _cmdline(p: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return p.cmdline()
    return []


def workers(server_pid: int) -> list[int]:
    """The BentoML worker processes under `bentoml serve` (pid ``server_pid``)."""
    return [p.pid for p in descendants(server_pid) if "_bentoml_impl.worker.service" in " ".join(_cmdline(p))]


def tritonservers(pid: int) -> set[int]:
    """The live tritonserver processes under ``pid`` (one that exits while being listed is not live)."""
    found = set()
    for p in descendants(pid):
        with contextlib.suppress(psutil.Error):
            if p.name() == "tritonserver":
                found.add(p.pid)
    return found


def group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (a tritonserver leads its own, with its stubs)."""
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and alive(p.pid):
                members.append(p.pid)
    return members


def process_gone(pid: int) -> bool:
    return not alive(pid)


def group_gone(pgid: int) -> bool:
    """No live process left in the group (a tritonserver and its Python-backend stubs)."""
    return not group(pgid)


def shm_regions(pids: Iterable[int]) -> set[str]:
    """The Python-backend shared-memory regions named on the command lines of ``pids`` (the stubs')."""
    names = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            names |= {a for a in _cmdline(psutil.Process(pid)) if a.startswith(SHM_PREFIX)}
    return names


def leftover_shm(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if (SHM / n).exists())


def send(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def clean_up(pids: Iterable[int], shm: Iterable[str]) -> None:
    """SIGKILL what a fault left running (processes the suite's service started) and remove the named
    shared-memory regions it left."""
    send(pids, signal.SIGKILL)
    for name in leftover_shm(shm):
        with contextlib.suppress(OSError):
            (SHM / name).unlink()


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` for the block, SIGCONT after it (whatever happens inside)."""
    send(pids, signal.SIGSTOP)
    try:
        yield
    finally:
        send(pids, signal.SIGCONT)


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


async def await_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    """`wait_until` off the event loop (the load keeps its schedule)."""
    return await asyncio.to_thread(wait_until, check, timeout_s, poll_s)
