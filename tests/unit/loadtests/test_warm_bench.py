"""loadtests/warm_bench.py's pure parts: the mix is Locust's FolioMix, the windows' hit rate and p99, the
/metrics parsing and the report."""

from __future__ import annotations

import ast
import math
from collections import Counter

import pytest

from loadtests import warm_bench
from loadtests.faults.mix import Answer, Sample
from tests.paths import ROOT


def folio_mix_weights() -> list[int]:
    """The @task weights of FolioMix in loadtests/locustfile.py, in declaration order."""
    tree = ast.parse((ROOT / "loadtests" / "locustfile.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FolioMix")
    return [
        d.args[0].value  # type: ignore[attr-defined]
        for f in cls.body
        if isinstance(f, ast.FunctionDef)
        for d in f.decorator_list
        if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task"
    ]


def test_the_mix_is_folio_mix() -> None:
    assert list(warm_bench.MIX.values()) == folio_mix_weights() == [70, 10, 10, 5, 5]
    users, items = [f"u{i}" for i in range(50)], [f"b{i}" for i in range(20)]
    requests = warm_bench.folio_mix(users, items, 20_000, seed=3)
    again = warm_bench.folio_mix(users, items, 20_000, seed=3)  # the same draws (feedback times aside)
    assert [r.body for r in requests if r.key is None] == [r.body for r in again if r.key is None]
    kinds = Counter(
        "cold" if str(r.body.get("user_id", "")).startswith("cold-") else r.route for r in requests
    )
    shares = {k: n / len(requests) for k, n in kinds.items()}
    assert shares == pytest.approx(
        {"recommend": 0.70, "cold": 0.10, "similar": 0.10, "trending": 0.05, "feedback": 0.05}, abs=0.01
    )
    known = Counter(r.body["user_id"] for r in requests if r.body.get("user_id", "").startswith("u"))
    assert known.most_common(1)[0][0] == "u0" and known["u0"] > 5 * known["u9"]  # Zipf by activity rank
    assert all(r.key is not None for r in requests if r.route == "feedback")


def sample(
    due: float, ms: float, cached: bool | None, route: str = "recommend", cold: bool = False
) -> Sample:
    answer = Answer("200", cold_start=cold if route == "recommend" else None, cached=cached)
    return Sample(route, due, ms / 1000, answer)


def test_window_hit_rate_and_p99() -> None:
    samples = [
        *[sample(1.0 + i / 100, 5.0, True) for i in range(60)],
        *[sample(2.0 + i / 100, 50.0, False) for i in range(20)],
        *[sample(3.0 + i / 100, 5.0, False, cold=True) for i in range(20)],
        *[sample(3.5, 500.0, None, route="similar") for _ in range(3)],
        Sample("recommend", 3.6, 0.01, Answer("503")),
        sample(9.0, 900.0, True),  # outside
    ]
    w = warm_bench.window(samples, 1.0, 4.0)
    assert (w["requests"], w["errors"], w["recommend"], w["failures"]) == (104, 1, 100, {"recommend 503": 1})
    assert w["hit_rate"] == pytest.approx(0.6) and w["known_hit_rate"] == pytest.approx(0.75)
    assert 5.0 < w["p99_recommend_ms"] <= 50.0 < w["p99_all_ms"]
    assert math.isnan(warm_bench.window(samples, 20.0, 30.0)["hit_rate"])


def test_metrics_are_summed_over_the_samples_that_match() -> None:
    text = "\n".join(
        [
            "# HELP folio_cache_warm_users_total Users",
            'folio_cache_warm_users_total{outcome="warmed"} 943.0',
            'folio_cache_warm_users_total{outcome="skipped"} 2.0',
            'folio_cache_warm_users_total_created{outcome="warmed"} 1.7e9',
            "folio_cache_warm_seconds 4.5",
        ]
    )
    assert warm_bench.scraped(text, "folio_cache_warm_users_total", 'outcome="warmed"') == 943.0
    assert warm_bench.scraped(text, "folio_cache_warm_users_total") == 945.0
    assert warm_bench.scraped(text, "folio_cache_warm_seconds") == 4.5
    assert warm_bench.scraped("", "folio_cache_warm_seconds") == 0.0


def test_the_report_compares_on_and_off() -> None:
    def run(name: str, on: bool, hit: float, p99: float) -> dict:
        w = {"hit_rate": hit, "known_hit_rate": hit, "p99_recommend_ms": p99, "p99_all_ms": p99, "errors": 0}
        w = {**w, "failures": {}}
        return {
            "name": name, "warming": on, "promote_to_swap_s": 9.0 if on else 5.0, "load_avg_start": 1.0,
            "load_avg_end": 1.5, "warm": {"users_warmed": 900.0 * on, "seconds": 4.0 * on},
            "steady": w, "deploy": w, "first_10s": w, "first_window": w,
            "warming_window": w if on else None, "shed": {"in_flight": 0.0, "loop_lag": 0.0},
        }  # fmt: skip

    result = {
        "source": "folio:x", "dataset": "ml-100k", "users": 943, "note": "shared machine",
        "profile": warm_bench.FULL.__dict__, "machine": {"cores": 2, "cpu": "cpu"},
        "runs": [run("on-1", True, 0.8, 20.0), run("off-1", False, 0.3, 60.0)],
    }  # fmt: skip
    text = warm_bench.markdown(result)
    assert "Errors" not in text
    assert "| on-1 | on | 9.0 | 900 in 4.0 s | 80.0 %" in text and "| off-1 | off | 5.0 | – | 30.0 %" in text
    assert "hit rate 80.0 % vs 30.0 %" in text and "p99 20.0 vs 60.0 ms" in text
    assert "Note: shared machine" in text
    result["runs"][0]["deploy"] = {
        **result["runs"][0]["deploy"],
        "errors": 2,
        "failures": {"recommend 503": 2},
    }
    result["runs"][0]["shed"]["loop_lag"] = 2.0
    text = warm_bench.markdown(result)
    assert (
        "Errors: on-1: recommend 503 x2 (shed by admission after the promotion: in_flight 0, loop_lag 2)."
        in text
    )
