"""Who and what the load generators ask for: known user ids by activity (Zipf weights) and item ids.

Ids come from ``FOLIO_LOAD_USERS`` / ``FOLIO_LOAD_ITEMS`` (comma-separated, or a ``@file`` with one id a
line), else from the local store's production version. No Locust import here: the asyncio generators
use it too (importing Locust monkey-patches the process for gevent).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np

ZIPF_S = 1.1
HIT_USERS = 20  # the cache-hit scenarios ask for the most active users only


def _ids(env: str) -> list[str] | None:
    value = os.environ.get(env)
    if not value:
        return None
    if value.startswith("@"):
        return [line.strip() for line in Path(value[1:]).read_text().splitlines() if line.strip()]
    return [v.strip() for v in value.split(",") if v.strip()]


@cache
def population() -> tuple[list[str], np.ndarray, list[str]]:
    """(users by activity, their Zipf probabilities, item ids)."""
    users, items = _ids("FOLIO_LOAD_USERS"), _ids("FOLIO_LOAD_ITEMS")
    if users is None or items is None:
        from models import registry

        model = registry.production()
        if model is None:
            raise RuntimeError("set FOLIO_LOAD_USERS and FOLIO_LOAD_ITEMS, or promote a model locally")
        path = Path(model.path)
        with np.load(path / "histories.npz") as h:
            counts = np.diff(h["indptr"])
            order = np.argsort(-counts, kind="stable")
            users = users or [str(u) for u in h["user_ids"][order]]
        items = items or [c["item_id"] for c in json.loads((path / "catalog.json").read_text())]
    weights = 1.0 / np.arange(1, len(users) + 1) ** ZIPF_S
    return users, weights / weights.sum(), items
