"""End to end with shared state: `bentoml serve` with TWO workers, a real redis-server and one shared
tritonserver (FOLIO_TRITON_URL). Requests land on either worker, so every check here also checks that
state, cache invalidation and rate limits are shared through Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runners.platform.processes import ServedFolio
from runners.platform.redis_server import RedisServer, dump_all
from runners.triton.server import TritonServer
from tests.integration.test_served import wait_for

pytestmark = pytest.mark.integration
BURST = 40


@pytest.fixture(scope="module")
def served(
    model_tag: str,
    redis_server: RedisServer,
    triton_server: TritonServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("served_redis")
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_REDIS_URL": redis_server.url,
        "FOLIO_TRITON_URL": triton_server.grpc_url,
        "FOLIO_WORKERS": "2",
        "FOLIO_RATE_LIMIT_RPS": "0.01",
        "FOLIO_RATE_LIMIT_BURST": str(BURST),
    }
    with ServedFolio(env, tmp / "serve.log") as server:
        yield server


@pytest.fixture()
def client(served: ServedFolio, redis_server: RedisServer) -> Iterator[httpx.Client]:
    """A client with its own rate-limit bucket (buckets are per client address without API keys)."""
    if not redis_server.is_alive():
        redis_server.start()
    with redis_server.client() as c:
        for key in c.scan_iter("folio:rl:*"):
            c.delete(key)
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def test_two_workers_answer_and_share_feedback(client: httpx.Client) -> None:
    for _ in range(6):  # fresh connections spread over the workers: each caches the cold answer
        with httpx.Client(base_url=client.base_url, timeout=30) as fresh:
            r = fresh.post("/recommend", json={"user_id": "shared"})
            assert r.status_code == 200 and r.json()["cold_start"] is True
    events = [{"user_id": "shared", "item_id": f"b{b}", "event": "purchase"} for b in range(20, 26)]
    r = client.post("/feedback/batch", json={"events": events})
    assert r.status_code == 200 and r.json()["durable"] == "redis"
    for _ in range(6):  # whichever worker answers, the cached cold answer is gone
        with httpx.Client(base_url=client.base_url, timeout=30) as fresh:
            body = fresh.post("/recommend", json={"user_id": "shared", "k": 5}).json()
            assert body["cold_start"] is False, body
            assert not {i["item_id"] for i in body["items"]} & {e["item_id"] for e in events}


def test_rate_limit_is_shared_by_the_workers(client: httpx.Client, served: ServedFolio) -> None:
    statuses, workers = [], set()
    for _ in range(BURST + 20):
        with httpx.Client(base_url=served.url, timeout=30) as fresh:  # new connections spread over workers
            r = fresh.post("/info", json={})
            statuses.append(r.status_code)
            if r.status_code == 200:
                workers.add(r.json()["worker_pid"])
    assert len(workers) == 2, "both workers must have answered for this test to mean anything"
    assert statuses.count(200) == BURST and statuses.count(429) == 20, statuses


def test_forget_leaves_nothing_in_redis(client: httpx.Client, redis_server: RedisServer) -> None:
    user = "gdpr-user-31"
    events = [{"user_id": user, "item_id": f"b{b}", "event": "click"} for b in range(1, 7)]
    assert client.post("/feedback/batch", json={"events": events}).status_code == 200
    assert client.post("/recommend", json={"user_id": user}).json()["cold_start"] is False
    with redis_server.client() as c:
        assert user.encode() in dump_all(c)
    assert client.post("/forget", json={"user_id": user}).status_code == 200
    with redis_server.client() as c:
        assert user.encode() not in dump_all(c)
    body = client.post("/recommend", json={"user_id": user}).json()
    assert body["cold_start"] is True and body["cached"] is False


def test_redis_stopped_still_serves(
    client: httpx.Client, redis_server: RedisServer, served: ServedFolio
) -> None:
    redis_server.stop()
    try:
        for user in ("u1", "u2", "brand-new"):
            r = client.post("/recommend", json={"user_id": user})
            assert r.status_code == 200, r.text
        assert client.post("/trending", json={"k": 3}).status_code == 200
        r = client.post("/feedback", json={"user_id": "u1", "item_id": "b1", "event": "click"})
        assert r.status_code == 503 and "not recorded" in r.text
        state = client.post("/info", json={}).json()["state"]
        assert (state["kind"], state["reachable"], state["breaker"]) == ("redis", False, "open"), state
        assert served.alive()
    finally:
        redis_server.start()
    feedback = {"user_id": "u1", "item_id": "b1", "event": "click"}
    # the state-store breaker lets one probe through once FOLIO_STATE_BREAKER_RESET_S has passed
    wait_for(lambda: client.post("/feedback", json=feedback).status_code == 200, 10, "feedback refused")
    state = client.post("/info", json={}).json()["state"]
    assert state["breaker"] == "closed" and state["durability"]["aof_enabled"] is not None, state


def test_journal_is_unused_with_redis(served: ServedFolio) -> None:
    state_dir = Path(served.env["FOLIO_STATE_DIR"])
    assert not (state_dir / "journal.jsonl").exists()
