"""Hostile input through the entry service's ASGI app (real embedded tritonserver, embedded state).

Each test is a regression test for a finding of the hostile-input probe (issue 10): what is refused
is refused with a 4xx that says why, and nothing refused reaches the journal; no accepted input can
make the service unable to start again, or overflow the trending decay.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from runners.http.schemas import RecommendRequest
from runners.platform.processes import ServedFolio
from runners.stages.pipeline import cache_params

pytestmark = pytest.mark.integration  # starts the real tritonserver
DAY = 86400.0


def journal(state_dir: Path) -> bytes:
    return (state_dir / "journal.jsonl").read_bytes()


def event(user: str = "h1", item: str = "b1", **kw: object) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "event": "purchase", **kw}


@pytest.mark.parametrize(
    "ts",
    [
        2e9,  # after 2028-10-21: the 500 after the fsync, then a crash-looping replay
        time.time() + 30 * DAY,  # trending poisoning: #1 of /trending for 30 days
        time.time() + 140 * DAY,
        time.time() - 2 * 365 * DAY,  # older than the default window
        0,  # was silently stored as "now"
        -5,
        5e9,
    ],
)
def test_timestamps_outside_the_window_are_refused_and_nothing_is_written(
    client: TestClient, state_dir: Path, ts: float
) -> None:
    before = journal(state_dir)
    r = client.post("/feedback", json=event(ts=ts))
    assert r.status_code == 400, r.text
    assert "ts" in r.text
    batch = [event(user=f"batch-{i}", item=f"b{i % 50}") for i in range(999)] + [event(ts=ts)]
    r = client.post("/feedback/batch", json={"events": batch})
    assert r.status_code == 400, r.text
    assert journal(state_dir) == before


@pytest.mark.parametrize("raw", ["1e309", "Infinity", "-Infinity", "NaN"])
def test_non_finite_numbers_are_refused(client: TestClient, state_dir: Path, raw: str) -> None:
    before = journal(state_dir)
    for field in ("ts", "value"):
        body = f'{{"user_id": "h2", "item_id": "b1", "event": "rate", "{field}": {raw}}}'
        r = client.post("/feedback", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
    assert journal(state_dir) == before


def test_trending_and_new_users_stay_sane_with_a_short_half_life(client: TestClient) -> None:
    now = time.time()
    assert client.post("/feedback", json=event(user="h3", item="b7", ts=now + 250)).status_code == 200
    assert client.post("/feedback", json=event(user="h4", item="b8", ts=now - 300 * DAY)).status_code == 200
    top = client.post("/trending", json={"k": 100}).json()["items"]
    scores = [i["score"] for i in top]
    assert all(math.isfinite(s) for s in scores) and max(scores) < 1e6
    cold = client.post("/recommend", json={"user_id": "brand-new"})
    assert cold.status_code == 200 and cold.json()["cold_start"]
    assert len({i["item_id"] for i in cold.json()["items"]}) == 10


def test_feedback_limit_counts_events_not_requests(client: TestClient, state_dir: Path) -> None:
    before = journal(state_dir)
    too_many = [event(user="flooder", item=f"b{i}") for i in range(51)]
    r = client.post("/feedback/batch", json={"events": too_many})
    assert r.status_code == 400 and "FOLIO_FEEDBACK_USER_BURST=50" in r.text
    assert journal(state_dir) == before
    assert client.post("/feedback/batch", json={"events": too_many[:50]}).status_code == 200
    r = client.post("/feedback", json=event(user="flooder"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    mixed = [event(user="flooder"), event(user="someone-else")]  # all or nothing: nobody is charged
    assert client.post("/feedback/batch", json={"events": mixed}).status_code == 429
    assert (
        client.post("/feedback/batch", json={"events": [event(user="someone-else")] * 50}).status_code == 200
    )


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/recommend", {"user_id": "u1", "genres": ["x" * 65]}),
        ("/recommend", {"user_id": "u1", "genres": ["fantasy"] * 51}),
        ("/recommend", {"user_id": "u1", "genres": [""]}),
        ("/trending", {"genre": "g" * 65}),
        ("/feedback", event(item="b" * 129)),
        ("/feedback", event(user="u" * 129)),
        ("/admin/reload", {"tag": "a:b:c"}),
        ("/admin/reload", {"tag": "]"}),
        ("/admin/reload", {"tag": ""}),
    ],
)
def test_over_long_or_malformed_strings_are_400(client: TestClient, route: str, body: dict) -> None:
    r = client.post(route, json=body)
    assert r.status_code == 400, r.text


def test_cache_keys_have_a_fixed_size() -> None:
    small = cache_params(RecommendRequest(user_id="u", genres=None), "int8", 0)
    large = cache_params(
        RecommendRequest(user_id="u", genres=[f"{i:02d}" * 32 for i in range(50)]), "int8", 0
    )
    assert len(small) == len(large) == 32 and small != large
    assert cache_params(RecommendRequest(user_id="u"), "int8", 1) != small  # a catalog change: a new key


def test_forget_keeps_the_journal_writable(client: TestClient, state_dir: Path) -> None:
    assert client.post("/feedback", json=event(user="forget-then-write")).status_code == 200
    assert client.post("/forget", json={"user_id": "forget-then-write"}).status_code == 200
    assert client.post("/forget", json={"user_id": "never-seen-x"}).status_code == 200
    assert client.post("/feedback", json=event(user="after-forget")).status_code == 200
    assert b"after-forget" in journal(state_dir)


def test_the_service_starts_again_after_all_of_the_above(
    client: TestClient, env: dict[str, str], state_dir: Path, tmp_path: Path
) -> None:
    """A restart replays the journal written so far (a copy, with its hash key), plus planted bad lines."""
    assert client.post("/feedback", json=event(user="before-restart", item="b3")).status_code == 200
    copy = tmp_path / "state"
    copy.mkdir()
    for name in ("journal.jsonl", "user-hash.key"):
        shutil.copy(state_dir / name, copy / name)
    with open(copy / "journal.jsonl", "a") as f:
        bad = {"op": "ev", "w": 5.0, "e": {**event(), "value": None, "ts": 1e309, "variant": None}}
        f.write(json.dumps(bad) + "\n" + '{"op": "ev", "w": 5.0, "e": {"user_id": 7}}\n')
    with ServedFolio({**env, "FOLIO_STATE_DIR": str(copy)}, tmp_path / "restart.log") as again:
        assert httpx.post(f"{again.url}/trending", json={"k": 5}, timeout=30).status_code == 200
        body = httpx.post(f"{again.url}/recommend", json={"user_id": "before-restart"}, timeout=30).json()
        assert body["cold_start"] is True and "b3" not in {i["item_id"] for i in body["items"]}
        assert "2 line(s) skipped on replay" in again.log_tail(400)
