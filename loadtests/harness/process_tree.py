"""CPU and memory of a process and its descendants (a server with its workers or Python-backend stubs)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psutil


def tree_cpu_s(proc: psutil.Process | None) -> float:
    """User + system CPU seconds of `proc` and its live children (the Python-backend stubs)."""
    if proc is None:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def tree_memory(pid: int) -> dict[str, Any]:
    """RSS and PSS (bytes) summed over ``pid`` and its descendants, with a per-process breakdown."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss": 0, "pss": 0, "processes": []}
    rows = []
    for p in procs:
        try:
            full = p.memory_full_info()
            name = p.name()
            rows.append({"pid": p.pid, "name": name, "rss": full.rss, "pss": getattr(full, "pss", full.rss)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {
        "rss": sum(r["rss"] for r in rows),
        "pss": sum(r["pss"] for r in rows),
        "processes": rows,
    }


class MemorySampler:
    """Samples tree_memory(pid) every ``interval_s`` in a thread; keeps the sample with the largest RSS."""

    def __init__(self, pid: int, interval_s: float = 2.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak: dict[str, Any] = {"rss": 0, "pss": 0, "processes": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.take()
            self._stop.wait(self.interval_s)

    def take(self) -> dict[str, Any]:
        sample = tree_memory(self.pid)
        if sample["rss"] > self.peak["rss"]:
            self.peak = sample
        return sample

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
