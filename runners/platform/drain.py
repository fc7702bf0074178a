"""The SIGTERM drain of a serving worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import psutil

log = logging.getLogger(__name__)
_BODY = b'{"error": "the server is shutting down: retry on another replica"}'
SHUTTING_DOWN = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)
PENDING_READ_S = 0.02  # how long a pending connection may take to send its request before the 503


class Drain:
    """SIGTERM: readiness turns false at once, the server keeps serving for ``seconds``, then stops
    listening (``stop_listening``) and the original handler (uvicorn's graceful shutdown: finish in-flight
    requests, run the shutdown hooks, which stop Triton last) takes over. A second SIGTERM skips the wait.

    The listening socket belongs to BentoML's arbiter too, which keeps it open until every worker has
    exited: without ``stop_listening`` the kernel would go on completing connections nobody accepts
    (they hang, then are reset). BentoML sends SIGTERM to a worker only when the whole service stops,
    and every worker drains for the same time, so closing the shared socket takes nothing from a peer."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        original: Any = signal.getsignal(signal.SIGTERM)
        if not callable(original):
            return  # not our process to manage (no handler to chain to)

        def handover(sig: int, frame: FrameType | None) -> None:
            answered = stop_listening(loop)
            log.info("drain over: stopped listening (%d pending connections answered 503)", answered)
            original(sig, frame)

        def on_term(sig: int, frame: FrameType | None) -> None:
            if self.draining:
                handover(sig, frame)
                return
            self.draining = True
            log.info("SIGTERM: draining for %.1fs (readiness is now false)", self.seconds)
            later: Callable[[], None] = lambda: handover(sig, frame)  # noqa: E731
            loop.call_soon_threadsafe(loop.call_later, self.seconds, later)

        signal.signal(signal.SIGTERM, on_term)


def listening_fds() -> list[int]:
    """This process's listening TCP sockets."""
    conns = psutil.Process().net_connections(kind="tcp")
    return sorted({c.fd for c in conns if c.status == psutil.CONN_LISTEN and c.fd >= 0})


def stop_listening(loop: asyncio.AbstractEventLoop) -> int:
    """Stop accepting on this process's listening sockets: connections the kernel already completed get
    a 503 (Connection: close), later ones are refused at once (``shutdown`` of the shared socket). The
    connections already accepted are untouched: they finish. Returns how many pending were answered."""
    answered = 0
    for fd in listening_fds():
        loop.remove_reader(fd)  # uvicorn's accept loop
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as listener:
            listener.setblocking(False)
            while True:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                answered += _answer_503(conn)
            listener.shutdown(socket.SHUT_RD)
    return answered


def _answer_503(conn: socket.socket) -> int:
    with contextlib.suppress(OSError), conn:
        conn.settimeout(PENDING_READ_S)
        with contextlib.suppress(TimeoutError):
            conn.recv(65536)  # read the request first: closing with it unread would reset the connection
        conn.sendall(SHUTTING_DOWN)
        conn.shutdown(socket.SHUT_WR)
        return 1
    return 0
