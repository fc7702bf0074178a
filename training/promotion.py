"""When ``python -m training main`` promotes the version it trained: only when it is at least as good as
production on the same dataset (its test NDCG@10 as the selection run measured it), unless forced."""

from __future__ import annotations

from typing import Any

import bentoml

METRIC = ("Folio (retrieve + rank)", "ndcg@10")
TOLERANCE = 1e-9  # "at least as good": equal runs (same data, same seed) promote


def ndcg_on_test(model: bentoml.Model) -> float | None:
    test: Any = model.info.metadata.get("test") or {}
    value = (test.get(METRIC[0]) or {}).get(METRIC[1])
    return None if value is None else float(value)


def verdict(candidate: bentoml.Model, production: bentoml.Model | None) -> tuple[bool, str]:
    """(promote?, why) for ``candidate`` against the current production version."""
    if production is None:
        return True, "no production version yet"
    ours, theirs = candidate.info.labels.get("dataset"), production.info.labels.get("dataset")
    if ours != theirs:
        return (
            True,
            f"production {production.tag} was trained on {theirs!r}, not {ours!r}: nothing to compare",
        )
    new, old = ndcg_on_test(candidate), ndcg_on_test(production)
    if old is None:
        return True, f"production {production.tag} has no test NDCG@10"
    if new is None:
        return False, f"{candidate.tag} has no test NDCG@10 to compare with production's {old:.4f}"
    if new + TOLERANCE >= old:
        return True, f"test NDCG@10 {new:.4f} >= production {production.tag}'s {old:.4f} on {ours!r}"
    return False, f"test NDCG@10 {new:.4f} < production {production.tag}'s {old:.4f} on {ours!r}"
