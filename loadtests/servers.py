"""`bentoml serve` as a real child process, for the end-to-end tests and the benchmarks.

Starts a service (Folio by default, or any `module:Class` / Bento tag) on a free loopback port with the
given environment, polls /readyz, fails fast with the server's output when the process dies, and
stops the whole process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from runners.triton.server import free_port

ROOT = Path(__file__).resolve().parents[1]


class ServedFolio:
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
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServedFolio:
        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml), "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"bentoml serve not ready after {self.startup_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ServedFolio:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
