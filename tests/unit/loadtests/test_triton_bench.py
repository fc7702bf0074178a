"""Smoke test of loadtests/triton_bench.py: the whole benchmark with tiny durations on the test model.

Starts the real tritonserver twice (batching on, batching off; no levers), so it is an integration test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import triton_bench

pytestmark = pytest.mark.integration


def test_benchmark_writes_results_with_batched_executions(artifacts_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = triton_bench.main(
        ["--model-dir", str(artifacts_dir), "--seconds", "1", "--warmup", "0.5", "--levers", "none",
         "--pool", "64", "--out", str(out)]
    )  # fmt: skip

    saved = json.loads((out / "triton.json").read_text())
    png = (out / "triton.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert saved["model_dir"] == str(artifacts_dir)
    assert saved["settings"]["requests"].startswith("retrieval")  # the fixture has the retrieval artifacts
    assert saved["settings"]["mean_candidates"] > 0

    precision = saved["precision"]
    for variant in triton_bench.PRECISIONS:
        sat, fixed = precision["saturation"][variant], precision["fixed_load"][variant]
        assert sat["rps"] > 0 and sat["candidates_per_s"] > 0 and sat["errors"] == 0
        assert fixed["requests"] > 0 and fixed["p99_ms"] > 0 and fixed["errors"] == 0
        assert saved["ort_in_process"][variant]["batch_1"]["candidates_per_s"] > 0
        # Triton counted the measured requests for this model.
        assert sat["triton"]["inferences"] > 0

    on, off = saved["batching"]["on"], saved["batching"]["off"]
    for users in ("32", "64"):
        assert on[users]["candidates_per_s"] > 0 and off[users]["candidates_per_s"] > 0
        assert off[users]["triton"]["avg_batch"] == pytest.approx(1.0)  # default scheduler: 1 per execution
    # 32 closed-loop users against one model instance: the dynamic batcher merges requests.
    assert on["32"]["triton"]["avg_batch"] > 1.0
    assert on["32"]["triton"]["executions"] < on["32"]["triton"]["inferences"]

    verdict = saved["verdict"]
    assert verdict["int8_vs_fp32_triton"] > 0 and verdict["batching_on_vs_off"]["64"] > 0
    assert isinstance(verdict["int8_target_met"], bool) and isinstance(verdict["batching_target_met"], bool)
    profile = saved["ort_profile"]
    for variant in triton_bench.PRECISIONS:
        row = profile[variant]
        assert row["matmul_us"] > 0 and row["other_us"] > 0
        assert row["total_us"] == pytest.approx(row["matmul_us"] + row["qdq_us"] + row["other_us"])
    assert profile["fp32"]["qdq_us"] == 0 < profile["int8"]["qdq_us"]  # only INT8 (de)quantizes
    assert "### Ranking through Triton" in result["markdown"] and "profiler" in result["markdown"]
    assert "### Verdict" in result["markdown"]
    assert result["markdown"] == saved["markdown"]


def test_unknown_lever_is_rejected() -> None:
    with pytest.raises(SystemExit):
        triton_bench.parse_args(["--levers", "warp_drive"])
