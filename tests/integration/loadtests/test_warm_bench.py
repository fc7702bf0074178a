"""`python -m loadtests.warm_bench` at a tiny size on the synthetic model: a promotion under the mix with
warming on, then off; with warming the new version answers its known users from the cache from the swap
on. (Latency is reported, not asserted: the cores are shared.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import warm_bench

pytestmark = pytest.mark.integration


def test_a_promotion_with_and_without_warming(model_tag: str, tmp_path: Path) -> None:
    flags = ["--tag", model_tag, "--rate", "15", "--before-s", "3", "--after-s", "5", "--swap-margin-s", "12"]
    result = warm_bench.main([*flags, "--reps", "1", "--out", str(tmp_path), "--work", str(tmp_path / "w")])
    on, off = result["runs"]
    assert (on["warming"], off["warming"]) == (True, False)
    assert on["warm"]["users_warmed"] == result["users"] and on["warm"]["runs"]["complete"] == 1
    assert off["warm"]["users_warmed"] == 0
    for run in (on, off):
        assert run["after_window_s"] == 5 and run["first_window"]["recommend"] > 10, run
        windows = [run[w] for w in ("steady", "deploy", "first_window")]
        assert sum(w["errors"] for w in windows) <= 0.01 * sum(w["requests"] for w in windows), run
    assert on["first_window"]["known_hit_rate"] >= 0.8 > off["first_window"]["known_hit_rate"]
    assert json.loads((tmp_path / "warm.json").read_text())["runs"][0]["name"] == "on-1"
    assert (tmp_path / "warm.png").stat().st_size > 0 and "| on-1 | on |" in result["markdown"]
