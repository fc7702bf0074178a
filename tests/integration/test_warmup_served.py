"""Cache warming on a real `bentoml serve` (runners/serving/warmup.py): after start-up and after a promotion,
the first /recommend of one of the FOLIO_WARM_USERS most active users is a cache hit of the new version,
and that of a user past them is not."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtests.faults.store import IsolatedStore
from models import registry, version
from runners.platform.processes import ServedFolio
from tests.integration.test_served import wait_for

pytestmark = pytest.mark.integration
WARM = 3


def by_activity(path: Path) -> list[str]:
    """Training users by history size, ties in the version's order (as warmup.candidates orders them)."""
    h = version.read_histories(path)
    sizes = np.diff(h.indptr)
    return [str(u) for u in h.user_ids[np.argsort(-sizes, kind="stable")]]


def first_answer(url: str, user: str) -> dict:
    r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_most_active_users_are_cached_before_start_up_and_a_promotion_serve(
    model_tag: str, tmp_path: Path
) -> None:
    stored = registry.get(model_tag)
    store = IsolatedStore(tmp_path / "home", Path(stored.path), json.loads(json.dumps(stored.info.metadata)))
    first = store.save()
    store.promote(first)
    users = by_activity(Path(stored.path))
    env = {
        "BENTOML_HOME": str(store.home),
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_MODEL_WATCH_S": "0.5",
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_WARM_USERS": str(WARM),
    }
    with ServedFolio(env, tmp_path / "serve.log") as served:  # ready: once warmed
        top, past = first_answer(served.url, users[0]), first_answer(served.url, users[WARM])
        assert (top["cached"], top["fallback"], top["model_version"]) == (True, "none", first)
        assert past["cached"] is False

        second = store.save()
        store.promote(second)

        def swapped() -> bool:
            info = httpx.post(f"{served.url}/info", json={}, timeout=30).json()
            return bool(info["model_version"] == second)

        wait_for(swapped, 90, f"{second} served", served.log_tail)
        top = first_answer(served.url, users[1])
        assert (top["cached"], top["model_version"]) == (True, second)
        assert first_answer(served.url, users[WARM + 1])["cached"] is False

        metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
        warmed = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith('folio_cache_warm_users_total{outcome="warmed"')
        ]
        assert warmed and float(warmed[0].split()[-1]) == 2 * WARM, warmed  # start-up and promotion
