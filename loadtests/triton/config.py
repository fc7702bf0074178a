"""The renderings and targets of the Triton benchmark (loadtests/triton_bench.py)."""

from __future__ import annotations

from typing import Any

from runners.triton.repository import MAX_CANDIDATES_PER_RUN

SERVICE_CONFIG: dict[str, Any] = {  # render_triton's defaults: what the service serves
    "dynamic_batching": True,
    "max_batch_size": 64,
    "max_queue_delay_us": 100,
    "instances": 1,
    "intra_op_threads": 1,
    "preferred_batch_sizes": (),
    "max_candidates_per_run": MAX_CANDIDATES_PER_RUN,
}
LEVERS: dict[str, dict[str, Any]] = {
    "delay_0us": {"max_queue_delay_us": 0},
    "delay_2000us": {"max_queue_delay_us": 2000},
    "preferred_4_8": {"preferred_batch_sizes": (4, 8)},
    "max_batch_4": {"max_batch_size": 4},
    "max_batch_8": {"max_batch_size": 8},
    "instances_2": {"instances": 2},
    "max_batch_4_instances_2": {"max_batch_size": 4, "instances": 2},
    "intra_op_2": {"intra_op_threads": 2},
    "one_run_per_batch": {"max_candidates_per_run": 1_000_000},  # before: the whole batch in one run
    "one_run_per_request": {"max_candidates_per_run": 1},
    "off_instances_2": {"dynamic_batching": False, "instances": 2},
}
TUNED = "max_batch_4_instances_2"  # the rendering scenario 2 is repeated on (see the levers)
PAYLOADS = (100, 1000)  # candidates per request, the payload lever (besides --candidates)
TARGET_INT8_SPEEDUP, TARGET_NDCG_DELTA, TARGET_BATCHING_SPEEDUP = 1.8, 0.002, 3.0
CALL_TIMEOUT_S = 30.0
MERGED = (1, 2, 4, 8, 16, 32, 64)  # requests merged into one in-process ONNX Runtime run
