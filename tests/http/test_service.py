"""The entry service through its ASGI app (lifespan included: the embedded tritonserver is real).

The model is the one trained on the synthetic catalog (tests/synthetic_catalog.py: every user reads
mostly one genre), saved to the temporary store. State is the embedded kind (in-process + journal).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from runners.platform.settings import load_settings
from runners.serving.fleet import Fleet
from runners.state.protocol import StateBusy, StateUnavailable
from tests.synthetic_catalog import genre_of_book

pytestmark = pytest.mark.integration  # starts the real tritonserver


def recommend(client: TestClient, **body) -> dict:
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_known_users_get_their_planted_genre(client: TestClient, planted: dict[str, str]) -> None:
    own = total = 0
    for user in [f"u{u}" for u in range(20)]:
        body = recommend(client, user_id=user, k=3)
        assert body["fallback"] == "none" and not body["cold_start"] and body["precision"] == "int8"
        assert body["model_version"] == client.post("/info", json={}).json()["model_version"]
        own += sum(genre_of_book(int(i["item_id"][1:])) == planted[user] for i in body["items"])
        total += len(body["items"])
    assert own / total >= 0.8, f"{own}/{total} recommendations in the planted genre (chance: 1/3)"


def test_response_shape_reasons_and_cache(client: TestClient) -> None:
    first = recommend(client, user_id="u5", k=7, variant="fp16")
    assert len(first["items"]) == 7 and first["precision"] == "fp16" and first["cached"] is False
    assert all(i["reason"].startswith("because you read ") for i in first["items"])
    again = recommend(client, user_id="u5", k=7, variant="fp16")
    assert again["cached"] is True and again["items"] == first["items"]
    assert again["request_id"] != first["request_id"]


def test_feedback_moves_a_new_user_out_of_cold_start(client: TestClient) -> None:
    cold = recommend(client, user_id="newbie", k=5)
    assert cold["cold_start"] is True and all(i["reason"].startswith("popular") for i in cold["items"])
    romance = [f"b{b}" for b in range(40, 46)]
    r = client.post(
        "/feedback/batch",
        json={"events": [{"user_id": "newbie", "item_id": b, "event": "purchase"} for b in romance]},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 6 and r.json()["durable"] == "journal"
    warm = recommend(client, user_id="newbie", k=5)
    assert warm["cold_start"] is False and warm["cached"] is False
    ids = [i["item_id"] for i in warm["items"]]
    assert not set(ids) & set(romance), "seen items must be dropped"
    assert sum(genre_of_book(int(i[1:])) == "romance" for i in ids) >= 4


def test_cold_start_follows_a_genre_hint(client: TestClient) -> None:
    body = recommend(client, user_id="hinted", k=5, genres=["History"])
    assert body["cold_start"] and all("history" in i["genres"] for i in body["items"])
    assert all(i["reason"] == "popular in history" for i in body["items"])


def test_genre_filter_applies_to_known_users(client: TestClient) -> None:
    body = recommend(client, user_id="u3", k=5, genres=["fantasy"])
    assert body["items"] and all(i["genres"] == ["fantasy"] for i in body["items"])


def test_trending_reacts_to_feedback(client: TestClient) -> None:
    events = [{"user_id": f"t{n}", "item_id": "b59", "event": "purchase"} for n in range(200)]
    assert client.post("/feedback/batch", json={"events": events}).status_code == 200
    top = client.post("/trending", json={"k": 3}).json()["items"]
    assert top[0]["item_id"] == "b59"
    hist = client.post("/trending", json={"k": 3, "genre": "history"}).json()["items"]
    assert hist and all("history" in i["genres"] for i in hist)


def test_similar(client: TestClient) -> None:
    same = 0
    for item_id, genre in (("b0", "fantasy"), ("b20", "history"), ("b40", "romance")):
        body = client.post("/similar", json={"item_id": item_id, "k": 5}).json()
        assert len(body["items"]) == 5 and all(i["item_id"] != item_id for i in body["items"])
        same += sum(i["genres"] == [genre] for i in body["items"])
    assert same >= 9, f"{same} of 15 neighbours share the genre (chance: 5)"


@pytest.mark.parametrize(
    ("route", "body", "status", "says"),
    [
        ("/similar", {"item_id": "nope"}, 404, "unknown item_id"),
        ("/similar", {"item_id": "b0", "k": 0}, 400, "k"),
        ("/recommend", {"user_id": "u1", "k": 101}, 400, "k"),
        ("/recommend", {"user_id": ""}, 400, "user_id"),
        ("/recommend", {"user_id": "u1", "variant": "int4"}, 400, "variant"),
        ("/recommend", {"user_id": "u1", "colour": "red"}, 400, "colour"),
        ("/feedback", {"user_id": "u1", "item_id": "b1", "event": "like"}, 400, "event"),
        ("/feedback", {"user_id": "u1", "item_id": "zzz", "event": "click"}, 404, "nothing recorded"),
        ("/feedback/batch", {"events": []}, 400, "events"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, route: str, body: dict, status: int, says: str) -> None:
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    assert says in r.text


def test_oversized_batch_is_refused_whole(client: TestClient, state_dir: Path) -> None:
    events = [{"user_id": "big", "item_id": "b1", "event": "view"}] * 1001
    assert client.post("/feedback/batch", json={"events": events}).status_code == 400
    assert "big" not in (state_dir / "journal.jsonl").read_text()


def test_forget_leaves_nothing_behind(client: TestClient, state_dir: Path) -> None:
    user = "forget-me-7"
    events = [{"user_id": user, "item_id": f"b{b}", "event": "click"} for b in range(20, 27)]
    assert client.post("/feedback/batch", json={"events": events}).status_code == 200
    assert recommend(client, user_id=user)["cold_start"] is False
    assert user in (state_dir / "journal.jsonl").read_text()
    r = client.post("/forget", json={"user_id": user})
    assert r.status_code == 200 and r.json()["forgotten"] is True
    deadline = time.monotonic() + 10  # the journal is compacted in the background, off the request
    while user in (state_dir / "journal.jsonl").read_text():
        assert time.monotonic() < deadline, "the forgotten user's lines are still in the journal"
        time.sleep(0.05)
    body = recommend(client, user_id=user)
    assert body["cold_start"] is True and body["cached"] is False


def test_health_and_info(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    info = client.post("/info", json={}).json()
    assert info["triton"]["mode"] == "embedded" and info["state"] == {"kind": "local", "reachable": True}
    assert len(info["config_hash"]) == 12  # /metrics is checked on `bentoml serve` (tests/integration)


def test_request_id_is_echoed(client: TestClient) -> None:
    r = client.post("/recommend", json={"user_id": "u9"}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"


def test_wrong_setting_fails_at_start_naming_it(model_tag: str) -> None:
    from runners.platform.settings import SettingsError

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOLIO_PRECISION", "int4")
        load_settings.cache_clear()
        with pytest.raises(SettingsError, match="FOLIO_PRECISION"):
            load_settings()
    load_settings.cache_clear()


@pytest.mark.parametrize(
    "error, says, retry_after",
    [
        (StateBusy("redis at x: busy"), "the state store is busy: feedback was not recorded", "1"),
        (StateUnavailable("redis at x: down"), "the state store is unreachable: feedback was not", None),
    ],
)
def test_a_state_store_that_cannot_write_is_a_503_saying_which(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception, says: str, retry_after: str | None
) -> None:
    async def refuse(*args: object) -> None:
        raise error

    monkeypatch.setattr(Fleet, "feedback", refuse)
    r = client.post("/feedback", json={"user_id": "u1", "item_id": "b1", "event": "click"})
    assert r.status_code == 503 and says in r.json()["error"], r.text
    assert r.headers.get("retry-after") == retry_after
