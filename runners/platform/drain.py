"""The SIGTERM drain of a serving worker."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class Drain:
    """SIGTERM: readiness turns false at once, the server keeps serving for ``seconds``, then the
    original handler (uvicorn's graceful shutdown: stop accepting, finish in-flight requests, run the
    shutdown hooks that stop Triton) takes over. A second SIGTERM skips the wait."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        original: Any = signal.getsignal(signal.SIGTERM)
        if not callable(original):
            return  # not our process to manage (no handler to chain to)

        def on_term(sig: int, frame: FrameType | None) -> None:
            if self.draining:
                original(sig, frame)
                return
            self.draining = True
            log.info("SIGTERM: draining for %.1fs (readiness is now false)", self.seconds)
            handover: Callable[[], None] = lambda: original(sig, frame)  # noqa: E731
            loop.call_soon_threadsafe(loop.call_later, self.seconds, handover)

        signal.signal(signal.SIGTERM, on_term)
