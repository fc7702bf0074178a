"""The closed loop, end to end (issue 12): a running service learns from its own traffic.

A version is trained on the synthetic catalog and served. A new fantasy book is added through the admin
API; most fantasy readers buy it (feedback). `python -m training retrain` exports that feedback, trains a
candidate, measures it against production on the newest purchases held out, and promotes it. The running
service swaps it in (no restart), and fantasy readers who never touched the new book now get it
recommended, while a stream of requests runs throughout without a single failure. Once with the
embedded state (one worker), once with Redis shared by two workers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runners.platform.processes import ROOT, ServedFolio
from runners.platform.redis_server import RedisServer
from runners.platform.settings import hash_key
from tests.integration.test_served import wait_for
from tests.synthetic_catalog import write_catalog

pytestmark = pytest.mark.integration
KEY = "loop-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NEW_BOOK = {"item_id": "new-1", "title": "The Newest Dragon", "authors": "N. Author", "genres": ["fantasy"]}
TRAIN = ["--no-baselines", "--epochs", "20"]


def training(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


class Traffic(threading.Thread):
    """/recommend for a rotating set of users until stopped; keeps every failure."""

    def __init__(self, url: str, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.users = url, users
        self.stop_flag = threading.Event()
        self.sent, self.failures = 0, list[str]()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=AUTH) as c:
            while not self.stop_flag.is_set():
                user = self.users[self.sent % len(self.users)]
                try:
                    r = c.post("/recommend", json={"user_id": user})
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.sent += 1
                time.sleep(0.02)


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("loop") / "shop"
    return out, write_catalog(out)


@pytest.fixture(params=["embedded", "redis"])
def loop_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "home"),
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_MODEL_WATCH_S": "0.5",
        "FOLIO_RATE_LIMIT_RPS": "0",
        # no content-based placement of new books (tests/integration/test_catalog_served.py has it): here
        # the new book must reach readers through what the next version learned from the feedback
        "FOLIO_NEW_BOOKS_PER_LIST": "0",
    }
    env.pop("FOLIO_MODEL_TAG", None)
    if request.param == "embedded":
        yield env
        return
    with RedisServer(tmp_path / "redis") as redis:
        yield env | {"FOLIO_REDIS_URL": redis.url, "FOLIO_WORKERS": "2"}


def served_versions(url: str) -> set[tuple[int, str]]:
    """(worker pid, version) of /info over fresh connections, which spread over the workers."""
    seen = set()
    for _ in range(8):
        info = httpx.post(f"{url}/info", json={}, headers=AUTH, timeout=30).json()
        seen.add((info["worker_pid"], info["model_version"]))
    return seen


def recommended(c: httpx.Client, user: str) -> list[str]:
    r = c.post("/recommend", json={"user_id": user})
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_feedback_on_a_new_book_reaches_the_next_version_without_a_restart(
    books: tuple[Path, dict[str, str]], loop_env: dict[str, str], tmp_path: Path
) -> None:
    shop, planted = books
    training(loop_env, "main", "--dataset", str(shop), *TRAIN, "--out", str(tmp_path / "repo"))
    fantasy = sorted(u for u, g in planted.items() if g == "fantasy")
    readers, others = fantasy[: int(len(fantasy) * 0.8)], fantasy[int(len(fantasy) * 0.8) :]
    with (
        ServedFolio(loop_env, tmp_path / "serve.log") as served,
        httpx.Client(base_url=served.url, timeout=30, headers=AUTH) as c,
    ):
        before = c.post("/info", json={}).json()["model_version"]
        traffic = Traffic(served.url, others + sorted(planted)[:50])
        traffic.start()
        assert c.post("/admin/catalog/books", json={"books": [NEW_BOOK]}).status_code == 200
        assert all(NEW_BOOK["item_id"] not in recommended(c, u) for u in others)  # unknown to the model
        events = [{"user_id": u, "item_id": NEW_BOOK["item_id"], "event": "purchase"} for u in readers]
        for i in range(0, len(events), 50):
            r = c.post("/feedback/batch", json={"events": events[i : i + 50]})
            assert r.status_code == 200, r.text

        out = training(
            loop_env,
            "retrain",
            "--dataset",
            str(shop),
            *TRAIN,
            "--min-holdout-pairs",
            "10",
            "--records",
            str(tmp_path / "records"),
            "--out",
            str(tmp_path / "repo"),
        )
        record = json.loads(out[out.index("{\n") :])
        assert record["decision"] == "promoted", record
        assert record["feedback_export"]["events"] == len(readers)
        assert record["candidate_quality"]["recall@10"] > record["production_quality"]["recall@10"]
        promoted = record["candidate"]
        assert promoted != before

        def swapped() -> bool:
            return {version for _, version in served_versions(served.url)} == {promoted}

        wait_for(swapped, 60, f"the service serving {promoted}", served.log_tail)
        workers = {pid for pid, _ in served_versions(served.url)}
        assert len(workers) == int(loop_env.get("FOLIO_WORKERS", "1")), workers  # every worker swapped
        traffic.stop_flag.set()
        traffic.join(30)
        got = [NEW_BOOK["item_id"] in recommended(c, u) for u in others]
        assert sum(got) >= 0.8 * len(others), f"{sum(got)} of {len(others)} similar readers get the new book"
        info = c.post("/info", json={}).json()
        assert info["model_freshness"]["age_s"] < 600 and info["model_freshness"]["stale"] is False
        age = re.search(r"^folio_model_age_seconds(?:\{[^}]*\})? ([0-9.e+]+)$", c.get("/metrics").text, re.M)
        assert age is not None and 0 <= float(age[1]) < 600
        assert served.alive()  # no restart
    assert traffic.sent > 50 and traffic.failures == [], traffic.failures[:5]
