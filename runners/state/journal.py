"""Append-only JSON-lines journals on local disk: fsynced appends, torn-tail recovery, sequence numbers,
the embedded store's HMAC key file, and the lock that keeps offline tools off a journal a service has
open. Shared by the local state store and the local catalog log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from runners.state.protocol import StateUnavailable

log = logging.getLogger(__name__)


def local_hash_key(directory: Path) -> bytes:
    """The HMAC key of an embedded store: 32 random bytes in ``directory/user-hash.key`` (mode 0600),
    made once."""
    path = directory / "user-hash.key"
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(directory)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable key: delete it to make a new one")
    return key.encode()


class JournalBusy(RuntimeError):
    """The journal's lock is held the other way: a service has it open, or an offline tool works on it."""


def lock_journal(path: Path, *, exclusive: bool) -> BinaryIO:
    """Hold ``<path>.lock`` (flock, made with its directory if missing) until the returned file is closed:
    shared by a running store (several may share it), exclusive for an offline tool (compaction,
    restore). Never waits: JournalBusy when it is held the other way."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock, "ab")  # noqa: SIM115  (the caller closes it)
    try:
        fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        if exclusive:
            raise JournalBusy(f"{path} is in use (a running service or another tool holds {lock})") from None
        raise JournalBusy(
            f"{path} is locked by an offline tool (backup restore or journal compact holds {lock}): "
            "start the service once it has finished"
        ) from None
    return fh


MAX_SEQ = 2**62


def journal_seq(rec: Mapping[str, Any]) -> int:
    """The sequence number of a journal line (0: written before lines had one); ValueError if malformed."""
    n = rec.get("n", 0)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < MAX_SEQ:
        raise ValueError(f"bad sequence number {n!r}")
    return n


def read_journal(path: Path) -> tuple[list[bytes], bool]:
    """The complete lines of an append-only journal (created, with its directory, when missing), and
    whether a torn last line was cut off the file: it was never acknowledged (no fsync returned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch()
        fsync_dir(path.parent)
        return [], False
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("journal %s: dropping a torn last line (%d B)", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    return data[:end].splitlines(), end < len(data)


class JournalFile:
    """An append-only journal open for appending. ``append`` returns once the payload is fsynced, or
    raises StateUnavailable with the file cut back to what it was (a refused write never comes back on
    replay)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = open(path, "ab")  # noqa: SIM115  (closed in close())

    def tell(self) -> int:
        return self._fh.tell()

    def append(self, payload: bytes) -> None:
        start = self._fh.tell()
        try:
            self._fh.write(payload)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._fh.close()  # drops what is still buffered
            try:
                os.truncate(self.path, start)
                self._fh = open(self.path, "ab")  # noqa: SIM115
            except OSError as again:
                log.error("journal %s could not be restored after a failed write: %s", self.path, again)
            raise StateUnavailable(f"journal {self.path}: write failed: {exc}") from exc

    def adopt(self, fh: BinaryIO) -> None:
        """Append through ``fh`` from now on (the journal was replaced); the old handle is closed."""
        old, self._fh = self._fh, fh
        old.close()

    def close(self) -> None:
        self._fh.close()


def read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def write_synced(path: Path, lines: list[bytes], mode: str) -> None:
    with open(path, mode) as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def replace_synced(path: Path, lines: list[bytes], tmp: Path, mode: int | None = None) -> None:
    """``path`` holds ``lines`` once this returns, or still what it held before: ``tmp`` written and fsynced
    (``mode``: its permissions), renamed over ``path``, the directory fsynced."""
    write_synced(tmp, lines, "wb")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
