"""Triton's own queue and compute times, re-exported as ``folio_triton_*`` counters.

Each worker scrapes the metrics endpoint of the tritonservers it owns (embedded mode) and adds the
difference since its last scrape, so the counters sum correctly over workers and survive a Triton
restart (a counter that went down restarted from 0). An external Triton is shared by every worker: scrape
it with Prometheus directly (deploy/prometheus/prometheus.yml), not through Folio.
"""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from runners.platform.metrics import TRITON_COMPUTE, TRITON_EXECUTIONS, TRITON_INFERENCES, TRITON_QUEUE

# Triton metric (without _total) -> (folio counter, scale to its unit)
EXPORTED = {
    "nv_inference_queue_duration_us": (TRITON_QUEUE, 1e-6),
    "nv_inference_compute_input_duration_us": (TRITON_COMPUTE, 1e-6),
    "nv_inference_compute_infer_duration_us": (TRITON_COMPUTE, 1e-6),
    "nv_inference_compute_output_duration_us": (TRITON_COMPUTE, 1e-6),
    "nv_inference_request_success": (TRITON_INFERENCES, 1.0),
    "nv_inference_exec_count": (TRITON_EXECUTIONS, 1.0),
}
MAX_BYTES = 4 << 20  # a metrics page is a few kB; refuse anything absurd


def parse(text: str) -> dict[tuple[str, str], float]:
    """{(triton metric, model): value} of the metrics ``EXPORTED`` names, summed over model versions."""
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in EXPORTED:
            continue
        for sample in family.samples:
            key = (family.name, sample.labels.get("model", ""))
            values[key] = values.get(key, 0.0) + sample.value
    return values


class TritonStats:
    """The last values scraped from each server (by metrics URL), and the counters they feed."""

    def __init__(self) -> None:
        self._last: dict[str, dict[tuple[str, str], float]] = {}

    def add(self, url: str, values: dict[tuple[str, str], float]) -> None:
        last = self._last.get(url, {})
        for (name, model), value in values.items():
            before = last.get((name, model), 0.0)
            delta = value - before if value >= before else value  # restarted: counting from 0 again
            if delta > 0:
                counter, scale = EXPORTED[name]
                counter.labels(model=model).inc(delta * scale)
        self._last[url] = values

    def forget_except(self, urls: set[str]) -> None:
        """Drop servers no longer owned (a retired deployment's)."""
        self._last = {u: v for u, v in self._last.items() if u in urls}

    async def scrape(self, url: str, timeout_s: float = 2.0) -> None:
        text = await asyncio.to_thread(_get, url, timeout_s)
        self.add(url, parse(text))


def _get(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # a loopback URL this worker built
        return str(response.read(MAX_BYTES).decode())
