"""A circuit breaker: stop calling a backend that keeps failing, probe it again after a pause."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """closed -> open after `failures` consecutive failures; while open, calls are refused for `reset_s`;
    then half-open: ONE probe call is let through; success closes, failure re-opens. A probe that never
    reports (its task was cancelled) is considered lost after another `reset_s`."""

    def __init__(self, failures: int = 3, reset_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if failures < 1 or reset_s < 0:
            raise ValueError("failures must be >= 1 and reset_s >= 0")
        self.failures, self.reset_s, self._clock = failures, reset_s, clock
        self._state = "closed"
        self._consecutive = 0
        self._since = 0.0  # when it opened (open) or when the probe left (half-open)
        self._probe_out = False
        self.opens = 0

    @property
    def state(self) -> str:
        if self._state == "open" and self._clock() - self._since >= self.reset_s:
            return "half_open"
        return self._state

    def allow(self) -> bool:
        now = self._clock()
        if self.state == "closed":
            return True
        if self.state == "half_open" and (not self._probe_out or now - self._since >= self.reset_s):
            self._state, self._since, self._probe_out = "half_open", now, True
            return True
        return False

    def probe_now(self) -> None:
        """The backend says it is back (e.g. reports ready): let one probe through at once instead of
        waiting out the rest of ``reset_s``."""
        if self._state == "open":
            self._since = self._clock() - self.reset_s

    def record_success(self) -> None:
        self._state, self._consecutive, self._probe_out = "closed", 0, False

    def record_failure(self) -> None:
        if self._state == "open":  # a call that was in flight when it opened
            return
        self._consecutive += 1
        if self._state == "half_open" or self._consecutive >= self.failures:
            self._state, self._since, self._probe_out = "open", self._clock(), False
            self.opens += 1
