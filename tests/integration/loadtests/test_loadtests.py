"""The Locust scenarios run headless against real servers and get only successes."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.ceiling_bench import locust
from loadtests.harness.openloop import open_loop
from runners.platform.processes import ServedFolio

pytestmark = pytest.mark.integration


def test_bare_ceiling_endpoint(tmp_path: Path) -> None:
    with ServedFolio({}, tmp_path / "bare.log", target="loadtests.bare_service:Bare") as bare:
        result = locust(bare.url, "BarePing", 4, 3, tmp_path)
    assert result["requests"] > 20 and result["failures"] == 0 and result["rps"] > 0


def test_realistic_mix_succeeds(model_tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOLIO_LOAD_USERS", ",".join(f"u{n}" for n in range(100)))
    monkeypatch.setenv("FOLIO_LOAD_ITEMS", ",".join(f"b{n}" for n in range(60)))
    env = {"FOLIO_MODEL_TAG": model_tag, "FOLIO_STATE_DIR": str(tmp_path / "s"), "FOLIO_RATE_LIMIT_RPS": "0"}
    with ServedFolio(env, tmp_path / "folio.log") as served:
        result = locust(served.url, "FolioMix", 8, 6, tmp_path)
    assert result["requests"] > 30 and result["failures"] == 0, result


def test_open_loop_generator_against_the_bare_endpoint(tmp_path: Path) -> None:
    with ServedFolio({}, tmp_path / "bare.log", target="loadtests.bare_service:Bare") as bare:
        result = open_loop(bare.url, "/ping", lambda _i: {}, rps=50, seconds=2, warmup_s=0.5, tally="status")
        missing = open_loop(bare.url, "/no-such-route", lambda _i: {}, rps=20, seconds=1, warmup_s=0)
    assert result["requests"] == 100 and result["errors"] == 0, result
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["tally"] == {"status": {"ok": 100}}  # warm-up answers are not counted
    assert missing["errors"] == missing["requests"] == 20  # non-200 answers count as errors
    assert missing["error_kinds"] == {"404": 20}
    assert result["completed_rps"] > 40 and missing["completed_rps"] == 0  # only 200 answers count
