"""Start-up reaper: the tritonservers that dead Folio workers left behind, and their shared memory.

Folio marks what it starts (runners/triton/server.py):

* every tritonserver gets ``FOLIO_TRITON_OWNER=<pid>:<start>`` in its environment, naming the process
  that owns it; its Python-backend stubs inherit the environment, so they carry the mark too;
* its Python-backend shared-memory regions are named ``folio-triton-<pid>-<start>-<nonce>-<uuid>``
  (the backend's ``shm-region-prefix-name``; unprefixed, the 2.51 backend names them
  ``triton_python_backend_shm_region_<uuid>``).

``<start>`` is the owner's start time in clock ticks since boot (/proc/<pid>/stat, field 22): unlike a
wall-clock create time it never moves, and with the pid it names one process for the life of the host
(a reused pid has another start). An owner is alive while that process runs and is not a zombie.

``reap_orphans()`` (a worker calls it before it starts its own server):

1. kills, with SIGKILL, the marked processes whose owner is dead: the whole process group at once when
   every live member of the group is such a process (tritonserver leads its own session, its stubs are
   in it), else one by one (through a pidfd, after checking it is still the process that was read);
2. removes the Python-backend regions in /dev/shm (either naming) that no live process maps or holds
   open, when they are older than ``min_age_s`` (a starting server creates its region a moment before
   it maps it: never race that) or carry a Folio owner that is dead.

It never touches a process without the mark, nor a marked one whose owner lives, nor a region some
process uses; it never raises (errors are logged). Processes whose /proc entries cannot be read (other
users') are taken to be unmarked and to map nothing of ours; a region we may not unlink stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_ENV = "FOLIO_TRITON_OWNER"
SHM_PREFIX = "folio-triton-"
BACKEND_SHM_PREFIX = "triton_python_backend_shm_region_"  # the 2.51 Python backend's default
SHM_DIR = Path("/dev/shm")
STALE_SHM_S = 60.0
PROC = Path("/proc")
_FOLIO_REGION = re.compile(rf"^{re.escape(SHM_PREFIX)}(\d+)-(\d+)-")
_MARK = re.compile(r"^(\d+):(\d+)$")
_WORK_DIR = re.compile(r"^triton-(\d+)-(\d+)-")


@dataclass(frozen=True)
class _Stat:
    state: str  # R, S, D, Z (zombie), X (dead), ...
    pgrp: int
    start: int  # clock ticks since boot

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


@dataclass
class Reaped:
    """What one sweep did: the pids it killed and the regions it removed."""

    killed: list[int] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ... starttime
    return _Stat(state=fields[0], pgrp=int(fields[2]), start=int(fields[19]))


def owner_mark(pid: int | None = None) -> str:
    """``<pid>:<start>`` of `pid` (default: this process), the value of ``FOLIO_TRITON_OWNER``."""
    pid = os.getpid() if pid is None else pid
    stat = _stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    return f"{pid}:{stat.start}"


def shm_prefix(mark: str, nonce: str) -> str:
    """The Python-backend region prefix of one server of the owner `mark` (`nonce` tells its servers
    apart); the backend appends a uuid per region."""
    pid, start = _parse_mark(mark) or (0, 0)
    return f"{SHM_PREFIX}{pid}-{start}-{nonce}-"


def work_dir_name(version: str) -> str:
    """The name of this process's work directory for an embedded Triton of ``version`` (its rendered
    repository and log): ``remove_dead_work_dirs`` removes it once the process is gone."""
    return f"triton-{owner_mark().replace(':', '-')}-{version}"


def remove_dead_work_dirs(parent: Path) -> list[Path]:
    """Remove the ``work_dir_name`` directories under ``parent`` whose owner no longer runs (a worker
    killed before it could remove its own); never raises."""
    removed = []
    for name in _listdir(parent):
        m = _WORK_DIR.match(name)
        if m and not owner_alive(f"{m[1]}:{m[2]}"):
            shutil.rmtree(parent / name, ignore_errors=True)
            removed.append(parent / name)
    return removed


def owner_alive(mark: str) -> bool:
    """True while the process the mark names runs (False for a malformed mark)."""
    parsed = _parse_mark(mark)
    if parsed is None:
        return False
    stat = _stat(parsed[0])
    return stat is not None and stat.live and stat.start == parsed[1]


def _parse_mark(mark: str) -> tuple[int, int] | None:
    m = _MARK.match(mark)
    return (int(m[1]), int(m[2])) if m else None


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def _mark_of(pid: int) -> str | None:
    try:
        env = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    key = OWNER_ENV.encode() + b"="
    for entry in env.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode(errors="replace")
    return None


def reap_orphans(*, shm_dir: Path = SHM_DIR, min_age_s: float = STALE_SHM_S, wait_s: float = 5.0) -> Reaped:
    """Kill the orphaned Folio tritonservers (with their stubs), then remove unused backend regions."""
    reaped = Reaped()
    try:
        reaped.killed = _kill_orphans(wait_s)
    except Exception:
        log.exception("reaping orphaned tritonservers failed")
    try:
        reaped.removed = remove_unused_regions(shm_dir=shm_dir, min_age_s=min_age_s)
    except Exception:
        log.exception("removing stale Triton shared memory failed")
    return reaped


def _kill_orphans(wait_s: float) -> list[int]:
    stats = {pid: s for pid in _pids() if (s := _stat(pid)) is not None and s.live}
    orphans: dict[int, str] = {}
    for pid in stats:
        mark = _mark_of(pid)
        if mark is not None and pid != os.getpid() and not owner_alive(mark):
            orphans[pid] = mark
    if not orphans:
        return []
    own_group = os.getpgrp()
    for pgrp in {stats[pid].pgrp for pid in orphans}:
        members = {pid for pid, s in stats.items() if s.pgrp == pgrp}
        in_group = sorted(members & orphans.keys())
        log.warning(
            "killing orphaned tritonserver processes %s (group %d; owners gone: %s)",
            in_group,
            pgrp,
            ", ".join(sorted({orphans[pid] for pid in in_group})),
        )
        if pgrp > 1 and pgrp != own_group and members <= orphans.keys():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgrp, signal.SIGKILL)
        else:  # the group holds processes we did not mark: only ours go
            for pid in in_group:
                _kill(pid, stats[pid].start)
    _wait_gone({pid: stats[pid].start for pid in orphans}, wait_s)
    return sorted(orphans)


def _kill(pid: int, start: int) -> None:
    """SIGKILL `pid` if it is still the process that started at `start` (a pidfd pins it first)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        stat = _stat(pid)
        if stat is not None and stat.start == start:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


def _wait_gone(processes: dict[int, int], wait_s: float) -> None:
    """Until each process is gone or a zombie (init reaps orphans when it gets to it)."""
    deadline = time.monotonic() + wait_s
    while processes and time.monotonic() < deadline:
        processes = {
            pid: start
            for pid, start in processes.items()
            if (s := _stat(pid)) is not None and s.live and s.start == start
        }
        if processes:
            time.sleep(0.05)
    if processes:
        log.warning("orphaned tritonserver processes %s still running after SIGKILL", sorted(processes))


def regions_in_use(shm_dir: Path = SHM_DIR) -> set[str]:
    """Names of the regions in `shm_dir` that a live process maps or holds open."""
    used: set[str] = set()
    prefix = f"{shm_dir}/"
    for pid in _pids():
        base = PROC / str(pid)
        with contextlib.suppress(OSError), open(base / "maps", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith(prefix):
                    used.add(parts[5].rstrip("\n").removesuffix(" (deleted)")[len(prefix) :])
        with contextlib.suppress(OSError):
            for fd in os.listdir(base / "fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(base / "fd" / fd)
                    if target.startswith(prefix):
                        used.add(target[len(prefix) :])
    return used


def remove_unused_regions(
    *, shm_dir: Path = SHM_DIR, min_age_s: float = STALE_SHM_S, prefixes: Iterable[str] | None = None
) -> list[str]:
    """Remove the Python-backend regions no live process uses and that are older than `min_age_s` or
    belong to a dead Folio owner; `prefixes`: only the regions with these prefixes (their owner's
    servers known gone, e.g. a stopped server's own, with ``min_age_s=0``). The names removed."""
    candidates = [
        name
        for name in _listdir(shm_dir)
        if name.startswith(tuple(prefixes) if prefixes is not None else (SHM_PREFIX, BACKEND_SHM_PREFIX))
    ]
    if not candidates:
        return []
    used = regions_in_use(shm_dir)
    now, removed = time.time(), []
    for name in candidates:
        if name in used:
            continue
        path = shm_dir / name
        try:
            st = path.stat()
        except OSError:
            continue
        owner = _FOLIO_REGION.match(name)
        stale = now - max(st.st_mtime, st.st_ctime) >= min_age_s
        abandoned = owner is not None and not owner_alive(f"{owner[1]}:{owner[2]}")
        if not (stale or abandoned):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. another user's region in the sticky /dev/shm
            log.debug("cannot remove %s: %s", path, exc)
            continue
        removed.append(name)
    if removed:  # a server's own, once it is stopped, are expected; anyone else's were leaked
        level = logging.INFO if prefixes is not None else logging.WARNING
        log.log(level, "removed %d unused Triton shared-memory regions from %s", len(removed), shm_dir)
    return removed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
