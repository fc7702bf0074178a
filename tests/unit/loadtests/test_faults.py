"""The fault suite's pure parts: the load plan and ledger, figures and verdicts, the report, and reading
feedback back from a journal or a Redis stream."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtests.faults import feedback
from loadtests.faults.mix import MIX, Answer, Ledger, Sample, Workload, feedback_request, parse, plan
from loadtests.faults.render import NOT_COVERED, details, markdown, table_lines
from loadtests.faults.verdict import (
    FeedbackCheck,
    Row,
    check_feedback,
    counts,
    degraded_period,
    feedback_targets,
    memory_back,
    outcome,
    reads_target,
    row,
    target,
    within_noise,
)

WORKLOAD = Workload([f"u{n}" for n in range(50)], [f"b{n}" for n in range(30)])


def sample(
    t: float, status: str = "200", route: str = "recommend", fallback: str | None = "none", **kw
) -> Sample:
    answer = Answer(status, fallback=fallback if status == "200" and route == "recommend" else None, **kw)
    return Sample(route, t, 0.01, answer)


def test_plan_draws_the_mix_and_every_feedback_event_is_unique() -> None:
    requests = plan(WORKLOAD, 4000, seed=1)
    shares = {r: sum(q.route == r for q in requests) / 4000 for r in MIX}
    assert all(abs(shares[r] - MIX[r]) < 0.03 for r in MIX), shares
    keys = [q.key for q in requests if q.route == "feedback"]
    assert None not in keys and len(set(keys)) == len(keys)
    more = [q.key for q in plan(WORKLOAD, 4000, seed=1) if q.key]
    assert not set(keys) & set(more)  # unique across plans of one process too
    cold = [q for q in requests if q.route == "recommend" and q.body["user_id"].startswith("cold-")]
    assert 0.15 < len(cold) / sum(q.route == "recommend" for q in requests) < 0.35
    fb = feedback_request("u1", "b2")
    assert fb.key == ("u1", "b2", fb.body["ts"]) and fb.body["event"] == "click"


def test_ledger_sorts_feedback_by_what_came_back() -> None:
    ledger = Ledger()
    ledger.record(("u", "a", 1.0), Answer("200"))
    ledger.record(("u", "b", 1.0), Answer("503", retry_after=True))
    ledger.record(("u", "c", 1.0), Answer("ServerDisconnectedError"))
    assert (len(ledger.acked), len(ledger.refused), len(ledger.unanswered), ledger.sent) == (1, 1, 1, 3)


def test_parse_reads_recommend_answers_and_keeps_error_bodies() -> None:
    body = json.dumps({"fallback": "onnxruntime", "model_version": "folio:x", "cold_start": False}).encode()
    a = parse("recommend", 200, {}, body)
    assert (a.fallback, a.model_version, a.cold_start) == ("onnxruntime", "folio:x", False)
    refused = parse("feedback", 503, {"retry-after": "1"}, b'{"error": "busy"}')
    assert refused.retry_after and refused.detail == '{"error": "busy"}' and refused.answered
    assert not Answer("ClientConnectorError").answered


def test_outcomes_and_counts() -> None:
    assert [outcome(Answer(s)) for s in ("200", "503", "429", "500", "TimeoutError")] == [
        "ok", "refused", "refused", "failed", "failed",
    ]  # fmt: skip
    samples = [sample(0), sample(1, fallback="onnxruntime"), sample(2, "503"), sample(3, "TimeoutError")]
    c = counts(samples)
    assert (c["requests"], c["failed"], c["refused"], c["fallbacks"]) == (4, 1, 1, 1)
    assert c["failures"] == {"TimeoutError": 1} and c["p99_ms"] == pytest.approx(10.0)


def test_recovery_ends_the_degraded_period_and_counts_later_blips() -> None:
    fallback = [sample(t, fallback="onnxruntime") for t in (1.0, 1.5, 2.0)]
    samples = [sample(0), *fallback, sample(3), sample(4)]
    assert degraded_period(samples, 1.0) == (pytest.approx(1.01), 0)  # answer due at 2 s came at 2.01 s
    assert degraded_period(samples, 2.5) == (0.0, 0)  # nothing degraded after 2.5 s
    blip = [*samples, sample(9, "503"), sample(10)]  # 7 s after the period: a blip, not the period
    assert degraded_period(blip, 1.0) == (pytest.approx(1.01), 1)
    assert degraded_period([*samples, sample(5, "500")], 1.0) == (pytest.approx(1.01), 1)
    assert degraded_period([*fallback, sample(2.5, "500")], 1.0) == (None, 0)  # degraded to the end


def test_feedback_targets_count_acknowledged_losses_and_refused_writes() -> None:
    ledger = Ledger()
    for n in range(3):
        ledger.record(("u", f"b{n}", 1.0), Answer("200"))
    ledger.record(("u", "r", 1.0), Answer("503"))
    check = check_feedback(ledger, {("u", "b0", 1.0), ("u", "b1", 1.0), ("u", "r", 1.0)})
    assert (check.acked, check.found, check.lost, check.refused_written) == (3, 2, 1, 1)
    assert [t.met for t in feedback_targets(check)] == [False, False]
    unread = check_feedback(ledger, None)
    assert unread.lost is None and [t.met for t in feedback_targets(unread)] == [None]


def test_reads_target_excuses_admission_refusals_only() -> None:
    shed = sample(0, "503", retry_after=True)
    assert reads_target([sample(0), shed, sample(1, "200", route="feedback")]).met
    assert not reads_target([sample(0, "503")]).met  # a 503 without Retry-After is a failure
    assert not reads_target([sample(0, "TimeoutError", route="similar")]).met
    assert reads_target([sample(0, "503", route="feedback")]).met  # feedback is not a read


def test_within_noise_and_memory_back() -> None:
    assert within_noise([20.0, 21.0], [19.0, 20.5]) == (True, pytest.approx(2.85))  # 15 % of 19 ms
    assert within_noise([31.8], [18.8])[0] is False  # issue 14's figures
    assert within_noise([10.5], [9.0])[0] is True  # under the 2 ms floor
    assert within_noise([18.0, 63.4], [17.2, 16.7])[0] is True  # one disturbed on run: its best is fine
    assert within_noise([30.0, 31.0], [17.0, 22.0]) == (False, pytest.approx(5.0))  # every on run is slower
    assert memory_back(300 << 20, 320 << 20) and not memory_back(226 << 20, 363 << 20)


def test_a_row_is_met_only_when_every_measured_target_is() -> None:
    samples = [sample(0), sample(1)]
    met = row("s", samples, 0.0, None, [target("a", True, "")])
    assert met.verdict == "met" and met.requests == 2
    assert row("s", samples, None, None, [target("a", True, ""), target("b", None, "")]).verdict.startswith(
        "met (some"
    )
    missed = row("s", samples, None, None, [target("a", False, ""), target("b", False, "")])
    assert missed.verdict == "not met: a; b"


def test_report_renders_one_line_per_row_and_what_is_not_covered() -> None:
    fb = FeedbackCheck(10, 8, 8, 2, 0, 0, 0)
    rows = [
        Row("kill", 100, 0, 3, 0, 12.345, 1.5, fb, [target("t", True, "fine")], {"killed": [1, 2]}),
        Row("stall", 50, 2, 0, 1, math.nan, None, None, [target("t", False, "why")], {}),
        Row("term", 50, 0, 0, 0, 5.0, None, None, [], {"recovery_expected": False}),
    ]
    lines = table_lines(rows)
    assert len(lines) == 2 + 3
    assert lines[2] == "| kill | 100 | 0 | 0 | 3 | 12.3 | 1.50 | 10 / 8 / 8 | met |"
    assert lines[3] == "| stall | 50 | 2 | 1 | 0 | – | never | – | not met: t |"
    assert "| – | – | no target checked |" in lines[4]  # no recovery, no feedback, no target
    assert "- t: **not met** (why)" in details(rows[1])
    assert "- figures: killed 1, 2" in details(rows[0])
    run = {
        "command": "python -m loadtests.faults", "date": "d", "commit": "c", "profile": "full",
        "seconds": 1.0, "cores": 2, "cpu": "cpu", "python": "3.11", "model": "folio:x",
    }  # fmt: skip
    text = markdown(rows, run)
    assert "1 of 3 scenarios meet all of theirs" in text
    assert text.index("## Scenarios") < text.index("## Not covered") and NOT_COVERED[0] in text


def test_journal_keys_read_events_and_skip_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    ev = {"user_id": "u1", "item_id": "b1", "event": "click", "value": None, "ts": 1700000000.1234}
    lines = [
        json.dumps({"op": "ev", "n": 1, "w": 1.0, "e": ev}),
        json.dumps({"op": "forget", "n": 2, "k": "abc"}),
        '{"op": "ev", "n": 3, "e": {"user',
    ]
    path.write_text("\n".join(lines))
    assert feedback.journal_keys(path) == {("u1", "b1", 1700000000.123)}
    assert feedback.journal_keys(tmp_path / "missing.jsonl") == set()


class FakeStream:
    """xrange over (id, fields) entries as redis-py answers it, ``min`` inclusive or "(" exclusive."""

    def __init__(self, n: int) -> None:
        self.entries = [
            (f"{i}-0".encode(), {b"e": json.dumps({"user_id": f"u{i}", "item_id": "b", "ts": i}).encode()})
            for i in range(1, n + 1)
        ] + [(f"{n + 1}-0".encode(), {b"f": b"tombstone"})]

    def xrange(self, name: str, min: str = "-", count: int | None = None) -> list:
        assert name == "folio:feedback"
        start = 0 if min == "-" else int(min.strip("(").split("-")[0]) + (1 if min.startswith("(") else 0)
        rows = [e for e in self.entries if int(e[0].split(b"-")[0]) >= start]
        return rows[:count]


def test_redis_keys_page_through_the_stream() -> None:
    keys = feedback.redis_keys(FakeStream(25), page=10)  # type: ignore[arg-type]
    assert keys == {(f"u{i}", "b", float(i)) for i in range(1, 26)}
