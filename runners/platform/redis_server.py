"""A real `redis-server` for the tests and the fault suite (loadtests/faults): free port, readiness polled,
fails fast if it dies. Test and benchmark code, like ServedFolio; the service never starts it.

Use `with RedisServer(tmp_path) as server:` (under pytest, skips the test when redis-server is not on
PATH; elsewhere a RuntimeError says so), connect to `server.url`, and call `server.stop()` then
`server.start()` to take Redis away and bring it back on the same port. Without `appendfsync` nothing is
persisted (it comes back empty); with it ("always", "everysec" as the deploy manifests, "no") Redis keeps
an append-only file in `workdir` and replays it when started again, so a SIGKILL of `server.pid` followed
by `start()` is a crash and a restart on the same AOF.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import redis

from runners.platform.processes import ChildProcess, Supervised, free_port


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        why = "redis-server is not on PATH (install redis to run the Redis integration tests)"
        if "pytest" in sys.modules:  # a test: skipped, not failed, where Redis is not installed
            import pytest

            pytest.skip(why)
        raise RuntimeError(why)
    return path


class RedisServer(Supervised):
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        startup_timeout_s: float = 10.0,
        appendfsync: str | None = None,
    ) -> None:
        self.binary = redis_server_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.appendfsync = appendfsync
        self.log_path = self.workdir / f"redis-{self.port}.log"
        self._child = ChildProcess(f"redis-server on port {self.port}", self.log_path, own_group=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0)

    def log_tail(self, lines: int = 60) -> str:
        return self._child.log_tail(lines)

    def is_alive(self) -> bool:
        return self._child.alive()

    def start(self) -> RedisServer:
        if self.is_alive():
            return self

        def ready() -> bool:
            try:
                with self.client() as c:
                    return bool(c.ping())
            except redis.RedisError:
                return False

        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.appendfsync is None:
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        self._child.spawn([*args, "--dir", str(self.workdir)])
        self._child.wait_ready(ready, self.startup_timeout_s, poll_s=0.02, max_poll_s=0.02)
        return self

    def stop(self) -> None:
        self._child.stop(10.0)


def dump_all(client: redis.Redis) -> bytes:
    """Every key and every value in the database, whatever its type."""
    out: list[Any] = []
    readers: dict[str, Any] = {
        "string": client.get,
        "list": lambda k: client.lrange(k, 0, -1),
        "hash": client.hgetall,
        "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        "stream": client.xrange,
        "set": client.smembers,
    }
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        out.append((key, kind, readers[kind](key)))  # KeyError on a type we do not dump: fails the test
    return repr(out).encode()
