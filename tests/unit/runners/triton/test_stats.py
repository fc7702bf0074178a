from __future__ import annotations

import pytest

from runners.platform.metrics import TRITON_COMPUTE, TRITON_EXECUTIONS, TRITON_INFERENCES, TRITON_QUEUE
from runners.triton.stats import TritonStats, parse

PAGE = """# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="ranker_int8",version="1"}} {ok}
nv_inference_request_success{{model="ranker_fp32",version="1"}} 0
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{{model="ranker_int8",version="1"}} {execs}
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="ranker_int8",version="1"}} {queue}
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{{model="ranker_int8",version="1"}} {infer}
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{{model="ranker_int8",version="1"}} 1000
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{{model="ranker_int8",version="1"}} 1000
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{{gpu_uuid="x"}} 0.5
"""


def page(ok: int, execs: int, queue: int, infer: int) -> str:
    return PAGE.format(ok=ok, execs=execs, queue=queue, infer=infer)


def value(counter, model: str = "ranker_int8") -> float:  # type: ignore[no-untyped-def]
    return float(counter.labels(model=model)._value.get())


def test_parse_keeps_the_exported_metrics_per_model() -> None:
    values = parse(page(ok=5, execs=2, queue=300, infer=4000))
    assert values[("nv_inference_request_success", "ranker_int8")] == 5
    assert values[("nv_inference_queue_duration_us", "ranker_int8")] == 300
    assert ("nv_gpu_utilization", "") not in values


def test_counters_grow_by_the_difference_and_survive_a_restart() -> None:
    stats = TritonStats()
    before = [value(c) for c in (TRITON_INFERENCES, TRITON_EXECUTIONS, TRITON_QUEUE, TRITON_COMPUTE)]

    def grown() -> list[float]:
        now = [value(c) for c in (TRITON_INFERENCES, TRITON_EXECUTIONS, TRITON_QUEUE, TRITON_COMPUTE)]
        return [a - b for a, b in zip(now, before, strict=True)]

    stats.add("u", parse(page(ok=10, execs=4, queue=2_000_000, infer=1_000_000)))
    assert grown() == pytest.approx([10, 4, 2.0, 1.002])
    stats.add("u", parse(page(ok=15, execs=6, queue=3_000_000, infer=1_000_000)))
    assert grown() == pytest.approx([15, 6, 3.0, 1.002])
    # Triton restarted: its counters start from 0 again, and count on top of what was seen.
    stats.add("u", parse(page(ok=2, execs=1, queue=500_000, infer=0)))
    assert grown() == pytest.approx([17, 7, 3.5, 1.002])
    stats.forget_except(set())
    stats.add("u", parse(page(ok=1, execs=1, queue=0, infer=0)))  # a new server on that URL: all of it
    assert grown()[0] == pytest.approx(18)
