"""The entry service through its ASGI app, on a model saved to the temporary store."""

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from training.artifacts import version_run


@pytest.fixture(scope="module")
def client(trained, monkeypatch_module) -> Iterator[TestClient]:
    tag = str(version_run(trained, "test").tag)
    monkeypatch_module.setenv("FOLIO_MODEL_TAG", tag)
    from service import Recommender

    with TestClient(Recommender.to_asgi()) as c:
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_info_names_the_served_version(client):
    body = client.post("/info", json={}).json()
    assert body["model_version"].startswith("folio:") and "Folio (retrieve + rank)" in body["test"]


def test_similar_returns_neighbours_mostly_of_the_same_genre(client):
    same = 0
    for item_id, genre in (("b0", "fantasy"), ("b20", "history"), ("b40", "romance")):
        body = client.post("/similar", json={"item_id": item_id, "k": 5}).json()
        assert len(body["items"]) == 5 and all(i["item_id"] != item_id for i in body["items"])
        same += sum(i["genres"] == [genre] for i in body["items"])
    assert same >= 9, f"{same} of 15 neighbours share the genre (chance: 5)"


def test_unknown_item_is_404_and_bad_k_is_4xx(client):
    r = client.post("/similar", json={"item_id": "nope"})
    assert r.status_code == 404 and "unknown item_id" in r.text
    assert client.post("/similar", json={"item_id": "b0", "k": 0}).status_code == 400
