"""The deploy smoke test's verdicts (runners/serving/parity_probe.py); the real probe runs in
tests/integration/test_deploy_checks.py."""

import math

from runners.serving.parity_probe import PrecisionReport, problems

PARITY = {"top10_agreement": {"fp32": 1.0, "fp16": 0.99, "int8": 0.95}}


def report(precision, agreement=1.0, drift=0.01, fallback="none", diff=None):
    return PrecisionReport(precision, fallback, agreement, drift, diff)


def healthy():
    return [report("int8", 0.93), report("fp16", 0.99), report("fp32", 1.0, 0.0, diff=1e-6)]


def test_rankers_that_agree_with_fp32_pass():
    assert problems(healthy(), PARITY, "127.0.0.1:1") == []


def test_agreement_below_the_exported_parity_is_refused():
    found = problems([report("int8", 0.80)], PARITY, None)
    assert found == [
        "the int8 ranker disagrees with fp32: top-10 agreement 0.80 on the probe set, below 0.85 "
        "(export measured 0.95)"
    ]


def test_without_recorded_parity_the_floor_applies():
    assert problems([report("int8", 0.75)], {}, None) == []
    assert "below 0.70 (export measured None)" in problems([report("int8", 0.5)], None, None)[0]


def test_score_drift_is_refused_even_when_the_top_agrees():
    found = problems([report("fp16", 0.99, drift=0.9)], PARITY, None)
    assert found == [
        "the fp16 ranker's scores drift from fp32 by 0.90 standard deviations on the probe set "
        "(tolerance 0.25)"
    ]


def test_a_triton_serving_other_rankers_is_named():
    found = problems([report("fp32", diff=0.5)], PARITY, "10.0.0.1:8001")
    assert found and "Triton at 10.0.0.1:8001 serves other rankers" in found[0]


def test_a_ranker_that_does_not_score_is_refused():
    assert problems([report("int8", 0.0, math.inf, "popularity")], PARITY, None) == [
        "the int8 ranker does not score (popularity)"
    ]
