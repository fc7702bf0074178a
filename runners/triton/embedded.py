"""An embedded tritonserver for one model version: render its repository, start it, keep it running.

``EmbeddedTriton.start`` first reaps what dead workers left (their tritonservers and shared memory:
runners/triton/reaper.py), renders ``work_dir/model_repository`` (target "cpu") from the version's rankers
and starts the binary (runners/triton/server.py); a start failure is reported, not raised, and the
watchdog keeps trying. The watchdog restarts the process when it is gone (backing off while restarts
fail) and reports each new gRPC url through ``on_restart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from models.version import RankerFiles
from runners.triton.reaper import reap_orphans, remove_dead_work_dirs
from runners.triton.repository import render_triton
from runners.triton.server import TritonServer

log = logging.getLogger(__name__)
WATCHDOG_INTERVAL_S = 0.5


class EmbeddedTriton:
    def __init__(
        self,
        ranker: RankerFiles,
        *,
        work_dir: Path | None,
        on_event: Callable[[str], None],
        on_restart: Callable[[str], Awaitable[None]],
    ) -> None:
        self.ranker = ranker
        self._work_dir_arg = work_dir
        self._work_dir: Path | None = None
        self._on_event, self._on_restart = on_event, on_restart
        self.server: TritonServer | None = None
        self.restarts = 0
        self._watchdog: asyncio.Task[None] | None = None
        self._restart: asyncio.Future[None] | None = None
        self._closing = False

    async def start(self) -> str | None:
        """Start the server; its gRPC url, or None when it failed to start (the watchdog retries)."""
        await asyncio.to_thread(reap_orphans)  # never raises
        if self._work_dir_arg is not None:
            await asyncio.to_thread(remove_dead_work_dirs, self._work_dir_arg.parent)
        self._work_dir = self._work_dir_arg or Path(tempfile.mkdtemp(prefix="folio-ranking-"))
        repo = self._work_dir / "model_repository"
        await asyncio.to_thread(render_triton, self.ranker.directory, repo, target="cpu")
        self.server = TritonServer(log_file=self._work_dir / "tritonserver.log", work_dir=self._work_dir)
        try:
            await asyncio.to_thread(self.server.start, repo)
        except Exception:  # degrade to ONNX Runtime; the watchdog keeps trying
            log.exception("embedded tritonserver failed to start; ranking with ONNX Runtime")
            self._on_event("start_failure")
        self._watchdog = asyncio.create_task(self._watch(), name="folio-triton-watchdog")
        return self.server.grpc_url if self.server.grpc_port else None

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._restart is not None:  # a restart thread can't be cancelled: let it finish, then stop
            with contextlib.suppress(Exception):
                await self._restart

    async def stop(self, timeout_s: float | None = None) -> None:
        """After ``close`` and after the client is closed: stop the process (``TritonServer.stop``),
        remove its work dir."""
        if self.server is not None:
            await asyncio.to_thread(self.server.stop, timeout_s)
        if self._work_dir is not None and self._work_dir_arg is None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    async def _watch(self) -> None:
        """Restart the tritonserver when its process is gone (backs off while restarts fail)."""
        assert self.server is not None
        server, delay = self.server, WATCHDOG_INTERVAL_S
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing or server.is_alive():
                continue
            log.warning("tritonserver is not running; restarting. log tail:\n%s", server.log_tail(20))
            self._restart = asyncio.ensure_future(asyncio.to_thread(server.restart))
            try:  # shielded: close() cancels this task, then waits for the thread before stopping
                await asyncio.shield(self._restart)
            except Exception:
                self._restart = None
                log.exception("tritonserver restart failed")
                self._on_event("start_failure")
                delay = min(delay * 2, 30.0)
                continue
            self._restart = None
            self.restarts += 1
            self._on_event("restart")
            delay = WATCHDOG_INTERVAL_S
            await self._on_restart(server.grpc_url)
            log.info("tritonserver restarted (pid %s, %d restarts)", server.pid, self.restarts)
