"""training/retrain.py: which feedback is held out, and the gate's decision (the whole loop runs in
tests/integration/test_closed_loop.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.dataset import Catalog, Dataset, Interactions
from training.feedback import COLUMNS
from training.retrain import GateConfig, Quality, decide, fresh_holdout


def base() -> Dataset:
    catalog = Catalog(list("abcdef"), list("ABCDEF"), [""] * 6, [()] * 6, np.zeros(6, np.float32))
    inter = Interactions(
        np.array([0, 0]), np.array([0, 1]), np.array([5.0, 4.0], np.float32), np.ones(2), ["u"]
    )
    return Dataset("shop", catalog, inter)


def rows(*r: tuple[str, str, float, float, str]) -> pd.DataFrame:
    return pd.DataFrame(r, columns=list(COLUMNS))


def test_the_newest_fresh_positive_pairs_are_held_out_with_every_event_of_theirs() -> None:
    fb = rows(
        ("u", "a", 5.0, 100.0, "purchase"),  # already in the base data: not fresh
        ("u", "c", 3.0, 101.0, "view"),
        ("u", "d", 4.0, 102.0, "click"),
        ("v", "e", 5.0, 103.0, "purchase"),  # v's only positive: no history left to recommend from
        ("u", "f", 2.0, 104.0, "rate"),  # not a positive
        ("u", "d", 5.0, 105.0, "purchase"),  # a later event of a held-out pair goes too
        ("w", "zzz", 5.0, 106.0, "purchase"),  # unknown book
    )
    h = fresh_holdout(base(), fb, frozenset(), share=0.5)
    # fresh pairs (u,c) 101, (u,d) 102, (v,e) 103: the newest half (2) are (u,d) and (v,e); v has no other
    assert h.pairs == {"u": {"d"}}
    assert sorted(zip(h.train_rows["book_id"], h.train_rows["timestamp"], strict=True)) == [
        ("a", 100.0),
        ("c", 101.0),
        ("f", 104.0),
        ("zzz", 106.0),
    ]


def test_withdrawn_books_are_not_held_out() -> None:
    fb = rows(("u", "c", 5.0, 1.0, "purchase"), ("u", "d", 5.0, 2.0, "purchase"))
    assert fresh_holdout(base(), fb, frozenset({"d"}), share=0.5).pairs == {"u": {"c"}}
    assert fresh_holdout(base(), rows(), frozenset(), share=0.5).n_pairs == 0


def q(ndcg: float, recall: float) -> Quality:
    return Quality(30, ndcg, recall, [ndcg] * 30, [recall] * 30)


@pytest.mark.parametrize(
    "cand,prod,promote",
    [
        (q(0.30, 0.20), q(0.30, 0.20), True),  # not worse
        (q(0.296, 0.20), q(0.30, 0.20), True),  # within the allowed drop
        (q(0.29, 0.20), q(0.30, 0.20), False),  # NDCG worse beyond it
        (q(0.35, 0.19), q(0.30, 0.20), False),  # recall worse beyond it, even with better NDCG
    ],
)
def test_the_gate_promotes_only_a_candidate_that_is_not_worse(
    cand: Quality, prod: Quality, promote: bool
) -> None:
    ok, reasons = decide(cand, prod, 30, True, GateConfig())
    assert ok is promote and len(reasons) == 2
    assert any("worse" in r for r in reasons) is not promote


def test_no_evidence_keeps_production_unless_told_otherwise() -> None:
    assert decide(None, None, 5, True, GateConfig())[0] is False
    assert decide(None, None, 5, True, GateConfig(promote_without_evidence=True))[0] is True
    assert decide(None, None, 0, False, GateConfig()) == (
        True,
        ["no production version: the candidate is the first"],
    )


@pytest.mark.parametrize("bad", [{"holdout_share": 0.0}, {"min_holdout_pairs": 0}, {"max_ndcg_drop": -0.1}])
def test_gate_thresholds_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        GateConfig(**bad)  # type: ignore[arg-type]
