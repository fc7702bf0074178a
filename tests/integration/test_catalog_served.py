"""Catalog changes at runtime through the admin API of a real `bentoml serve` (runners/state/catalog.py):
withdrawn books leave /recommend, /similar and /trending at once (cached answers included) and refuse
feedback; corrected records are served; bad requests change nothing; changes survive a restart; with
Redis, a change taken by one worker is served by every worker within a second."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runners.platform.processes import ServedFolio
from runners.platform.redis_server import RedisServer
from runners.platform.settings import hash_key
from runners.triton.server import TritonServer

pytestmark = pytest.mark.integration
KEY = "catalog-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def client(served: ServedFolio) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=30, headers=AUTH)


def ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


@pytest.fixture()
def embedded_env(model_tag: str, tmp_path: Path) -> dict[str, str]:
    return {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_CACHE_TTL_S": "600",  # on: a withdrawal must not be hidden by a cached answer
        # these tests send ~150 requests in a second or two under one key: the per-key rate limit
        # (tested in tests/unit/runners/http/test_guard.py) must not answer some of them 429
        "FOLIO_RATE_LIMIT_BURST": "10000",
    }


def test_withdraw_restore_and_correct_on_every_endpoint(embedded_env: dict[str, str], tmp_path: Path) -> None:
    with ServedFolio(embedded_env, tmp_path / "a.log") as served, client(served) as c:
        before = c.post("/recommend", json={"user_id": "u1"}).json()
        assert c.post("/recommend", json={"user_id": "u1"}).json()["cached"] is True
        gone = ids(before)[0]
        similar = ids(c.post("/similar", json={"item_id": "b1", "k": 5}).json())
        trending = ids(c.post("/trending", json={"k": 5}).json())
        r = c.post("/admin/catalog/withdraw", json={"item_ids": [gone, similar[0], trending[0]]})
        assert r.status_code == 200, r.text
        assert r.json()["revision"] == 3 and r.json()["withdrawn"] == len({gone, similar[0], trending[0]})
        after = c.post("/recommend", json={"user_id": "u1"}).json()
        assert after["cached"] is False and gone not in ids(after) and len(after["items"]) == 10
        assert similar[0] not in ids(c.post("/similar", json={"item_id": "b1", "k": 5}).json())
        assert trending[0] not in ids(c.post("/trending", json={"k": 5}).json())
        fb = c.post("/feedback", json={"user_id": "u1", "item_id": gone, "event": "click"})
        assert fb.status_code == 409 and "withdrawn" in fb.json()["error"]
        # a corrected record is what every endpoint shows
        shown = ids(after)[0]
        fix = {"item_id": shown, "title": "Corrected Title", "authors": "A. Writer", "genres": ["essays"]}
        assert c.post("/admin/catalog/books", json={"books": [fix]}).status_code == 200
        item = c.post("/recommend", json={"user_id": "u1"}).json()["items"][0]
        assert (item["item_id"], item["title"], item["authors"], item["genres"]) == (
            shown,
            "Corrected Title",
            "A. Writer",
            ["essays"],
        )
        assert c.post("/admin/catalog/restore", json={"item_ids": [gone]}).status_code == 200
        assert (
            c.post("/feedback", json={"user_id": "u9", "item_id": gone, "event": "click"}).status_code == 200
        )
        info = c.post("/info", json={}).json()["catalog"]
        assert info == {"revision": 5, "withdrawn": 2, "added_or_corrected": 1, "log": "local"}
    # durable: a restart serves the same catalog
    with ServedFolio(embedded_env, tmp_path / "b.log") as served, client(served) as c:
        assert c.post("/info", json={}).json()["catalog"]["revision"] == 5
        assert similar[0] not in ids(c.post("/similar", json={"item_id": "b1", "k": 5}).json())
        assert re.search(r"^folio_catalog_revision(\{[^}]*\})? 5\.0$", c.get("/metrics").text, re.M)


def test_bad_catalog_requests_change_nothing(embedded_env: dict[str, str], tmp_path: Path) -> None:
    book = {"item_id": "new-1", "title": "New"}
    bad = [
        ("/admin/catalog/withdraw", {"item_ids": ["b1", "no-such-book"]}, 404, "no-such-book"),
        ("/admin/catalog/restore", {"item_ids": ["no-such-book"]}, 404, "no-such-book"),
        ("/admin/catalog/books", {"books": [book, book]}, 400, "twice"),
        ("/admin/catalog/books", {"books": [{"item_id": "x", "title": "  "}]}, 400, "title"),
        ("/admin/catalog/books", {"books": [{"item_id": "x", "title": "T", "isbn": "1"}]}, 400, "isbn"),
        ("/admin/catalog/books", {"books": [{"item_id": "x", "title": "T", "year": 3000}]}, 400, "year"),
        (
            "/admin/catalog/books",
            {"books": [{"item_id": "x", "title": "T", "description": "d" * 9000}]},
            400,
            "",
        ),
        ("/admin/catalog/books", {"books": []}, 400, "books"),
        ("/admin/catalog/withdraw", {"item_ids": []}, 400, "item_ids"),
    ]
    with ServedFolio(embedded_env, tmp_path / "a.log") as served, client(served) as c:
        for route, body, status, says in bad:
            r = c.post(route, json=body)
            assert r.status_code == status and says in r.text, (route, body, r.text)
        assert c.post("/info", json={}).json()["catalog"]["revision"] == 0
        with httpx.Client(base_url=served.url, timeout=30) as anonymous:
            assert anonymous.post("/admin/catalog/withdraw", json={"item_ids": ["b1"]}).status_code == 401
        # an added book is known: it takes feedback (it is recommended once a version learns it)
        assert c.post("/admin/catalog/books", json={"books": [book]}).json()["added_or_corrected"] == 1
        r = c.post("/feedback", json={"user_id": "u1", "item_id": "new-1", "event": "purchase"})
        assert r.status_code == 200, r.text
        assert c.post("/admin/catalog/withdraw", json={"item_ids": ["new-1"]}).status_code == 200
        # the CLI: books.csv in, refusals out with the server's reason and rc 1
        books = tmp_path / "books.csv"
        books.write_text(
            "book_id,title,authors,original_publication_year,genres\nc1,First,A,2001,x|y\nc2,Second,,,\n"
        )
        env = {**os.environ, "FOLIO_API_KEY": KEY}
        cli = [sys.executable, "-m", "training", "catalog"]
        done = subprocess.run(
            [*cli, "add", "--books", str(books), "--url", served.url], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0 and json.loads(done.stdout)["added_or_corrected"] == 3, done.stderr
        done = subprocess.run(
            [*cli, "withdraw", "c2", "nope", "--url", served.url], env=env, capture_output=True, text=True
        )
        assert done.returncode == 1 and "'nope'" in done.stderr and "HTTP 404" in done.stderr
        done = subprocess.run([*cli, "status", "--url", served.url], env=env, capture_output=True, text=True)
        assert json.loads(done.stdout)["withdrawn"] == 1, (
            done.stdout
        )  # new-1 only: the refused batch changed nothing


def test_a_new_book_reaches_its_readers_without_retraining(
    embedded_env: dict[str, str], planted: dict[str, str], tmp_path: Path
) -> None:
    """Item cold start: a fantasy book added through the API gets a vector from its content (the
    version's encoder) and is recommended to fantasy readers, not to the others; /similar works for it;
    a reader who bought it is not offered it again; withdrawn, it is gone."""
    new = {
        "item_id": "new-f",
        "title": "Fantasy Book of Dragons",
        "authors": "Author 3",
        "genres": ["fantasy"],
    }
    new |= {"year": 1975}
    fantasy = [u for u, g in planted.items() if g == "fantasy"][:30]
    history = [u for u, g in planted.items() if g == "history"][:30]
    with ServedFolio(embedded_env, tmp_path / "a.log") as served, client(served) as c:

        def share(users: list[str]) -> float:  # of the users whose top 5 holds the new book
            answers = [ids(c.post("/recommend", json={"user_id": u, "k": 5}).json()) for u in users]
            return sum("new-f" in a for a in answers) / len(users)

        assert share(fantasy) == 0.0
        assert c.post("/admin/catalog/books", json={"books": [new]}).status_code == 200
        to_fantasy, to_history = share(fantasy), share(history)
        assert to_fantasy >= 0.8 and to_history <= 0.1, (to_fantasy, to_history)
        shown = c.post("/recommend", json={"user_id": fantasy[0], "k": 5}).json()["items"]
        item = next(i for i in shown if i["item_id"] == "new-f")
        assert item["title"] == new["title"] and item["reason"].startswith("new in the catalog")
        neighbours = c.post("/similar", json={"item_id": "new-f", "k": 5}).json()["items"]
        assert sum("fantasy" in i["genres"] for i in neighbours) >= 4, neighbours
        reader = next(u for u in fantasy if "new-f" in ids(c.post("/recommend", json={"user_id": u}).json()))
        assert (
            c.post("/feedback", json={"user_id": reader, "item_id": "new-f", "event": "purchase"}).status_code
            == 200
        )
        assert "new-f" not in ids(c.post("/recommend", json={"user_id": reader}).json())
        assert c.post("/admin/catalog/withdraw", json={"item_ids": ["new-f"]}).status_code == 200
        assert share(fantasy) == 0.0
        assert "new-f" not in ids(c.post("/similar", json={"item_id": "b1", "k": 20}).json())


def test_admin_catalog_is_off_without_keys(model_tag: str, tmp_path: Path) -> None:
    env = {"FOLIO_MODEL_TAG": model_tag, "FOLIO_STATE_DIR": str(tmp_path), "FOLIO_TRITON_URL": "127.0.0.1:1"}
    with ServedFolio(env, tmp_path / "serve.log") as served:
        r = httpx.post(f"{served.url}/admin/catalog/withdraw", json={"item_ids": ["b1"]}, timeout=30)
        assert r.status_code == 403 and "FOLIO_API_KEYS" in r.text


def test_every_worker_serves_a_withdrawal_within_a_second(
    model_tag: str, redis_server: RedisServer, triton_server: TritonServer, tmp_path: Path
) -> None:
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_REDIS_URL": redis_server.url,
        "FOLIO_TRITON_URL": triton_server.grpc_url,
        "FOLIO_WORKERS": "2",
        "FOLIO_API_KEYS": hash_key(KEY),
    }
    with ServedFolio(env, tmp_path / "serve.log") as served:
        pids: set[int] = set()
        tops: set[str] = set()
        for _ in range(8):  # fresh connections spread over the workers; each caches its answer
            with client(served) as fresh:
                body = fresh.post("/recommend", json={"user_id": "u3"}).json()
                tops.add(ids(body)[0])
                pids.add(fresh.post("/info", json={}).json()["worker_pid"])
        assert len(tops) == 1, tops
        gone = tops.pop()
        with client(served) as c:
            assert c.post("/admin/catalog/withdraw", json={"item_ids": [gone]}).status_code == 200
        time.sleep(1.0)
        seen: set[int] = set()
        for _ in range(60):
            with client(served) as fresh:
                assert gone not in ids(fresh.post("/recommend", json={"user_id": "u3"}).json())
                info = fresh.post("/info", json={}).json()
                assert info["catalog"]["revision"] == 1 and info["catalog"]["log"] == "redis"
                seen.add(info["worker_pid"])
            if len(pids | seen) == 2 and len(seen) >= 12:
                break
        assert len(pids | seen) == 2, "the requests did not reach both workers"
        # a book added on one worker is known to every worker within a second (its content vector too)
        with client(served) as c:
            book = {"item_id": "new-r", "title": "Fantasy Book Anew", "genres": ["fantasy"]}
            assert c.post("/admin/catalog/books", json={"books": [book]}).status_code == 200
        time.sleep(1.0)
        answered: set[int] = set()
        for _ in range(60):  # until both workers answered (which one accepts a connection is up to them)
            with client(served) as fresh:
                r = fresh.post("/similar", json={"item_id": "new-r", "k": 3})
                assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
                answered.add(fresh.post("/info", json={}).json()["worker_pid"])
            if len(answered) == 2:
                break
        assert len(answered) == 2, "the requests did not reach both workers"
