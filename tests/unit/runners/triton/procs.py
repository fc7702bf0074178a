"""Process and shared-memory probes for the tritonserver lifetime tests (Linux /proc)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

SHM = Path("/dev/shm")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of `pid`, None when it does not exist."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def running(pid: int) -> bool:
    """Exists and is not a zombie (PID 1 here reaps orphans late)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group(pgid: int) -> set[int]:
    """The running members of a process group."""
    members = set()
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] not in ("Z", "X") and stat[1] == pgid:
            members.add(int(entry.name))
    return members


def regions(prefix: str) -> set[str]:
    return {name for name in os.listdir(SHM) if name.startswith(prefix)}


def mapped_regions(pid: int) -> set[str]:
    """The /dev/shm regions `pid` maps."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(f"{SHM}/"):
            names.add(parts[5].removesuffix(" (deleted)")[len(f"{SHM}/") :])
    return names


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll_s)
    return check()
