"""The benchmark orchestrator's bookkeeping: which earlier runs an `--only` rerun keeps, bad names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import bench


def test_only_full_runs_of_known_scenarios_with_a_section_are_kept(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert bench.kept_runs(summary) == {}  # no earlier run
    run = {"seconds": 1, "commit": "abc", "date": "d", "quick": False, "markdown": "table"}
    summary.write_text(json.dumps({"scenarios": {
        "ceiling": run,
        "triton": {**run, "quick": True},  # a smoke run never stands in for a full one
        "growth": {k: v for k, v in run.items() if k != "markdown"},  # written before sections were kept
        "warp_drive": run,  # no such scenario any more
    }}))  # fmt: skip
    assert bench.kept_runs(summary) == {"ceiling": run}


def test_unknown_scenarios_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "ceiling,warp_drive"])
    assert "warp_drive" in capsys.readouterr().err
