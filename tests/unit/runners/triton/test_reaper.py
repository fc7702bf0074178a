"""runners/triton/reaper.py on real processes: what a dead owner left is killed and removed; nothing
unmarked, nothing whose owner lives and no region some process uses is touched."""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.triton import reaper
from runners.triton.server import TritonServer
from tests.unit.runners.triton.conftest import MODELS
from tests.unit.runners.triton.procs import group, mapped_regions, regions, running, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


@pytest.fixture()
def dead_mark() -> str:
    """The mark of a process that has exited (its pid is not reused in the test's lifetime)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    mark = reaper.owner_mark(proc.pid)
    proc.kill()
    proc.wait(10)
    return mark


class Procs:
    """Sleepers started for a test, each SIGKILLed afterwards if still running."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, mark: str | None, *, child_mark: str | None = None, session: bool = True) -> list[int]:
        """A sleeper in a new session (marked with `mark`), with a child of its own when `child_mark` is
        given (marked with it, in the same group). Its pid, then its child's."""
        code = """
            import os, subprocess, sys, time
            env = dict(os.environ)
            env.pop("FOLIO_TRITON_OWNER", None)
            if sys.argv[1]:
                env["FOLIO_TRITON_OWNER"] = sys.argv[1]
                c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
                print(c.pid, flush=True)
            else:
                print("", flush=True)
            time.sleep(60)
        """
        env = {k: v for k, v in os.environ.items() if k != reaper.OWNER_ENV}
        if mark is not None:
            env[reaper.OWNER_ENV] = mark
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), child_mark or ""],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=session,
        )
        self.started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        return [proc.pid, *([int(line)] if line else [])]

    def kill_all(self) -> None:
        for proc in self.started:
            for pid in group(proc.pid) if running(proc.pid) else set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(10)


@pytest.fixture()
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.kill_all()


def test_marks_name_one_process() -> None:
    mine = reaper.owner_mark()
    assert mine.startswith(f"{os.getpid()}:") and reaper.owner_alive(mine)
    pid, start = mine.split(":")
    assert not reaper.owner_alive(f"{pid}:{int(start) + 1}"), "a reused pid has another start time"
    assert not reaper.owner_alive("garbage") and not reaper.owner_alive("")
    assert reaper.shm_prefix(mine, "ab12") == f"folio-triton-{pid}-{start}-ab12-"


def test_orphans_are_killed_with_their_group_and_nothing_else(
    procs: Procs, dead_mark: str, tmp_path: Path
) -> None:
    orphan = procs.start(dead_mark, child_mark=dead_mark)  # a server and its stub: one group
    owned = procs.start(reaper.owner_mark())  # marked, its owner (this test) alive
    unmarked = procs.start(None)
    mixed = procs.start(None, child_mark=dead_mark)  # an unmarked leader with a marked orphan child
    reaped = reaper.reap_orphans(shm_dir=tmp_path)
    assert set(orphan) | {mixed[1]} <= set(reaped.killed)
    assert not set(reaped.killed) & {*owned, *unmarked, mixed[0]}
    assert wait_until(lambda: not any(running(p) for p in [*orphan, mixed[1]]), 5)
    assert all(running(p) for p in [*owned, *unmarked, mixed[0]])


def test_reaping_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom() -> list[int]:
        raise PermissionError("no /proc here")

    monkeypatch.setattr(reaper, "_pids", boom)
    assert reaper.reap_orphans(shm_dir=tmp_path) == reaper.Reaped()


HOLDER = """
    import mmap, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    m = mmap.mmap(fd, 4096)
    os.close(fd)
    held = os.open(sys.argv[2], os.O_RDONLY)
    print("ready", flush=True)
    time.sleep(60)
"""


def make_region(shm: Path, name: str) -> str:
    (shm / name).write_bytes(b"\0" * mmap.PAGESIZE)
    return name


def test_unused_regions_go_used_ones_stay(dead_mark: str, tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    dead_pid, dead_start = dead_mark.split(":")
    live_pid, live_start = reaper.owner_mark().split(":")
    abandoned = make_region(shm, f"folio-triton-{dead_pid}-{dead_start}-aa-uuid1")
    live_owner = make_region(shm, f"folio-triton-{live_pid}-{live_start}-bb-uuid2")
    fresh = make_region(shm, "triton_python_backend_shm_region_uuid3")
    mapped = make_region(shm, "triton_python_backend_shm_region_uuid4")
    held_open = make_region(shm, f"folio-triton-{dead_pid}-{dead_start}-cc-uuid5")
    foreign = make_region(shm, "someone_elses_region")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(shm / mapped), str(shm / held_open)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        # A minute's age rule: only what a dead Folio owner left and no process uses goes now.
        assert reaper.remove_unused_regions(shm_dir=shm, min_age_s=60) == [abandoned]
        time.sleep(0.05)
        # Old enough: every unused backend region goes; used and foreign ones stay.
        assert sorted(reaper.remove_unused_regions(shm_dir=shm, min_age_s=0.01)) == sorted(
            [live_owner, fresh]
        )
        assert sorted(os.listdir(shm)) == sorted([mapped, held_open, foreign])
    finally:
        holder.kill()
        holder.wait(10)
    assert sorted(reaper.remove_unused_regions(shm_dir=shm, min_age_s=0)) == sorted([mapped, held_open])


@pytest.mark.integration
def test_an_orphaned_tritonserver_is_reaped_and_a_live_one_is_not(
    echo_repository: Path, tmp_path: Path, dead_mark: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real tritonserver marked as started by a dead owner (as one was before PDEATHSIG, when its
    worker was SIGKILLed) next to one of a live owner: the orphan, its stubs and, once they are dead,
    its shared memory go; the other server keeps serving with its regions."""
    live = TritonServer(log_file=tmp_path / "live.log").start(echo_repository)
    with monkeypatch.context() as patch:
        patch.setattr(reaper, "owner_mark", lambda pid=None: dead_mark)
        orphan = TritonServer(log_file=tmp_path / "orphan.log").start(echo_repository)
    try:
        assert orphan.pid is not None and live.pid is not None
        orphans, live_members = group(orphan.pid), group(live.pid)
        assert len(orphans) == len(live_members) == 1 + len(MODELS)
        orphan_regions, live_regions = mapped_regions(orphan.pid), mapped_regions(live.pid)
        assert orphan_regions <= regions(f"folio-triton-{dead_mark.replace(':', '-')}-")
        reaped = reaper.reap_orphans()
        assert orphans <= set(reaped.killed) and not live_members & set(reaped.killed)
        assert not group(orphan.pid), "the orphan's group outlived the reaper"
        assert orphan_regions <= set(reaped.removed)
        assert not orphan_regions & set(os.listdir(reaper.SHM_DIR))
        assert group(live.pid) == live_members and live.is_ready()
        assert live_regions <= set(os.listdir(reaper.SHM_DIR))
    finally:
        orphan.stop()
        live.stop()


def test_work_dirs_of_dead_owners_are_removed(dead_mark: str, tmp_path: Path) -> None:
    mine = tmp_path / reaper.work_dir_name("v1")
    dead = tmp_path / f"triton-{dead_mark.replace(':', '-')}-v1"
    other = tmp_path / "triton-123-v1"  # not a work dir name of this scheme: left alone
    for d in (mine, dead, other):
        (d / "model_repository").mkdir(parents=True)
    assert reaper.remove_dead_work_dirs(tmp_path) == [dead]
    assert mine.is_dir() and other.is_dir() and not dead.exists()
    assert reaper.remove_dead_work_dirs(tmp_path / "missing") == []
