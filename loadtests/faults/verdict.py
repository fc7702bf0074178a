"""What a scenario's answers add up to, and whether each of issue 14's targets was met. Pure functions.

An answer is ``ok`` (200), ``refused`` (503 or 429: the service said "not now"; an admission refusal
also carries Retry-After) or ``failed`` (any other status, or no answer: refused connection, reset,
timeout). A fallback is a /recommend 200 whose ``fallback`` is not "none". A `Row` is one line of
docs/reliability.md; its verdict is "met" when every target it checked was met.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests.faults.mix import Answer, FeedbackKey, Ledger, Sample
from loadtests.harness.openloop import percentiles

READS = ("recommend", "similar", "trending")


def outcome(answer: Answer) -> str:
    if answer.status == "200":
        return "ok"
    return "refused" if answer.status in ("503", "429") else "failed"


def is_fallback(sample: Sample) -> bool:
    return sample.route == "recommend" and sample.answer.status == "200" and sample.answer.fallback != "none"


def healthy(sample: Sample) -> bool:
    """Answered 200 by the full pipeline (no fallback)."""
    return sample.answer.status == "200" and not is_fallback(sample)


def p99_ms(samples: Iterable[Sample]) -> float:
    """p99 latency (ms, from the due time) of the answered requests; NaN when none was answered."""
    return percentiles([s.latency_s for s in samples if s.answer.answered], (99,))["p99_ms"]


def counts(samples: Sequence[Sample]) -> dict[str, Any]:
    kinds = Counter(outcome(s.answer) for s in samples)
    return {
        "requests": len(samples),
        "failed": kinds["failed"],
        "refused": kinds["refused"],
        "fallbacks": sum(map(is_fallback, samples)),
        "p99_ms": p99_ms(samples),
        "failures": dict(Counter(s.answer.status for s in samples if outcome(s.answer) == "failed")),
    }


def between(samples: Iterable[Sample], start: float, end: float = math.inf) -> list[Sample]:
    """The samples due in [start, end)."""
    return [s for s in samples if start <= s.due_s < end]


def degraded_period(
    samples: Sequence[Sample], since: float, good: Callable[[Sample], bool] = healthy, gap_s: float = 2.0
) -> tuple[float | None, int]:
    """(seconds, blips): the degraded period is the run of answers that were not ``good`` among those
    answered after ``since``, from the first one on, as long as no ``gap_s`` passes without one; it
    ends with its last answer, ``seconds`` after ``since`` (0: none was degraded; None: no good answer
    came after it, not recovered within the load). ``blips``: degraded answers after the period."""
    after = sorted((s for s in samples if s.done_s >= since), key=lambda s: s.due_s)
    bad = [s for s in after if not good(s)]
    if not bad:
        return 0.0, 0
    period = [bad[0]]
    for s in bad[1:]:
        if s.due_s - period[-1].due_s >= gap_s:
            break
        period.append(s)
    last = period[-1]
    if not any(good(s) for s in after if s.due_s > last.due_s):
        return None, len(bad) - len(period)
    return max(0.0, max(s.done_s for s in period) - since), len(bad) - len(period)


@dataclass(frozen=True)
class FeedbackCheck:
    """Feedback events sent, acknowledged, and how many were found in the store afterwards (None: the
    store could not be read)."""

    sent: int
    acked: int
    found: int | None  # acknowledged events found
    refused: int
    refused_written: int | None
    unanswered: int
    unanswered_written: int | None

    @property
    def lost(self) -> int | None:
        return None if self.found is None else self.acked - self.found


def check_feedback(ledger: Ledger, stored: set[FeedbackKey] | None) -> FeedbackCheck:
    def hits(keys: set[FeedbackKey]) -> int | None:
        return None if stored is None else len(keys & stored)

    return FeedbackCheck(
        ledger.sent,
        len(ledger.acked),
        hits(ledger.acked),
        len(ledger.refused),
        hits(ledger.refused),
        len(ledger.unanswered),
        hits(ledger.unanswered),
    )


@dataclass(frozen=True)
class Target:
    name: str
    met: bool | None  # None: not measured (the reason is in detail)
    detail: str
    speed: bool = False  # a latency or throughput figure: reported here, asserted by no test (noisy cores)


def seconds_text(s: float | None) -> str:
    return "not within the load" if s is None else f"{s:.2f} s"


def target(name: str, met: bool | None, detail: str, *, speed: bool = False) -> Target:
    return Target(name, met, detail, speed)


def feedback_targets(check: FeedbackCheck) -> list[Target]:
    if check.found is None:
        return [target("nothing acknowledged lost", None, "the store could not be read")]
    return [
        target("nothing acknowledged lost", check.lost == 0, f"{check.found} of {check.acked} found"),
        target(
            "nothing refused written",
            check.refused_written == 0,
            f"{check.refused_written} of {check.refused} refused events found",
        ),
    ]


def reads_target(samples: Sequence[Sample]) -> Target:
    """No admitted read failed: every /recommend, /similar, /trending was answered 200 unless refused
    at admission (503 with Retry-After)."""
    reads = [s for s in samples if s.route in READS]
    bad = [
        s
        for s in reads
        if s.answer.status != "200" and not (s.answer.status == "503" and s.answer.retry_after)
    ]
    kinds = dict(Counter(s.answer.status for s in bad))
    return target(
        "no admitted read failed", not bad, f"{len(bad)} of {len(reads)} reads failed {kinds or ''}".strip()
    )


def within_noise(
    on_ms: Sequence[float], off_ms: Sequence[float], floor_ms: float = 2.0
) -> tuple[bool, float]:
    """Whether the best (lowest) of the ``on_ms`` runs exceeds the best of the ``off_ms`` runs by no
    more than the noise: the spread between the off runs, 15 % of the best off run, or ``floor_ms``,
    whichever is largest. The best run of each is the one least disturbed by whatever else shares the
    machine; a cost the watcher adds to every run shows in its best run too."""
    best_on, best_off = min(on_ms), min(off_ms)
    noise = max(max(off_ms) - best_off, 0.15 * best_off, floor_ms)
    return best_on - best_off <= noise, noise


def memory_back(baseline: int, after: int, share: float = 0.10, floor: int = 20 << 20) -> bool:
    """RSS ``after`` the load within ``share`` (at least ``floor`` bytes) of the ``baseline``."""
    return after <= baseline + max(share * baseline, floor)


@dataclass
class Row:
    """One scenario's line of docs/reliability.md, its targets, and figures for its details."""

    scenario: str
    requests: int
    failed: int
    refused: int
    fallbacks: int
    p99_ms: float
    recovery_s: float | None
    feedback: FeedbackCheck | None
    targets: list[Target] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def missed(self) -> list[Target]:
        return [t for t in self.targets if t.met is False]

    @property
    def verdict(self) -> str:
        if not self.targets:
            return "no target checked"
        if self.missed:
            return "not met: " + "; ".join(t.name for t in self.missed)
        if any(t.met is None for t in self.targets):
            return "met (some targets not measured)"
        return "met"


def row(
    scenario: str,
    samples: Sequence[Sample],
    recovery: float | None,
    feedback: FeedbackCheck | None,
    targets: list[Target],
    **figures: Any,
) -> Row:
    c = counts(samples)
    figures = {"failures": c["failures"], **figures}
    return Row(
        scenario, c["requests"], c["failed"], c["refused"], c["fallbacks"], c["p99_ms"], recovery, feedback,
        targets, figures,
    )  # fmt: skip
