"""Backups and restore end to end (training/backup.py; docs/operations.md, "Backups and restore").

Local state: a `bentoml serve` on its own model store takes acknowledged feedback and forgets, compacts
its journal while serving (part of it exported), and is backed up while it runs with
`python -m training backup create`; `backup restore` puts the backup into a new state directory and an
empty model store, and a fresh `bentoml serve` comes up from it: the production version, every
acknowledged event (in the restored export files or in the journal, the next export proves it: each one
exactly once), the forgotten users still forgotten.

Redis: a real redis-server (AOF on, as deployed) written through RedisState, backed up as an RDB, restored
into an empty data directory and started with `--appendonly yes`: every acknowledged event is there.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from loadtests.faults.store import IsolatedStore
from models import registry
from runners.platform.processes import ROOT, ServedFolio
from runners.platform.redis_server import RedisServer
from runners.platform.settings import Settings
from runners.state.feedback_log import RedisLog
from runners.state.protocol import Event
from runners.state.redis_state import RedisState
from tests.integration.test_served import wait_for
from training.backup import create_backup, restore_backup

pytestmark = pytest.mark.integration
FORGOTTEN = {"user-3", "user-12"}


def cli(env: dict[str, str], *args: str) -> dict:
    """`python -m training ...` with ``env`` (the service's settings): its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def post(served: ServedFolio, route: str, body: dict) -> dict:
    r = httpx.post(f"{served.url}{route}", json=body, timeout=30)
    assert r.status_code == 200, (route, r.status_code, r.text)
    return dict(r.json())


def exported_events(feedback_dir: Path) -> list[tuple[str, str, str]]:
    rows = []
    for path in sorted(feedback_dir.glob("feedback-*.csv")):
        with open(path) as f:
            rows += [(r["user_id"], r["book_id"], r["timestamp"]) for r in csv.DictReader(f)]
    return rows


@pytest.fixture()
def store(model_tag: str, tmp_path: Path) -> IsolatedStore:
    stored = registry.get(model_tag)
    s = IsolatedStore(tmp_path / "home-a", Path(stored.path), json.loads(json.dumps(stored.info.metadata)))
    s.promote(s.save())
    return s


def test_a_fresh_service_comes_up_from_a_backup_with_every_acknowledged_event(
    store: IsolatedStore, tmp_path: Path
) -> None:
    production = store.run(
        sys.executable, "-c", "from models import registry; print(registry.production_tag())"
    )
    common = {
        "FOLIO_TRITON_URL": "127.0.0.1:1",  # ranking falls back in process: no Triton to start here
        "FOLIO_MAX_HISTORY": "5",  # exported events beyond a history of 5 may go from the journal
        "FOLIO_JOURNAL_COMPACT_BYTES": "65536",
        "FOLIO_FEEDBACK_USER_RPS": "0",
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_CACHE_TTL_S": "0",
    }
    env_a = {**common, "BENTOML_HOME": str(store.home), "FOLIO_STATE_DIR": str(tmp_path / "state-a")}
    journal = tmp_path / "state-a" / "journal.jsonl"
    now = time.time()
    acked: list[tuple[str, str, float]] = []

    def send(users: range, per_user: int) -> None:
        events = [
            {
                "user_id": f"user-{u}",
                "item_id": f"b{(u * 7 + i) % 60}",
                "event": "click",
                "ts": now - len(acked) - i,
            }
            for u in users
            for i in range(per_user)
        ]
        for start in range(0, len(events), 500):
            chunk = events[start : start + 500]
            assert post(served, "/feedback/batch", {"events": chunk})["accepted"] == len(chunk)
            acked.extend((e["user_id"], e["item_id"], e["ts"]) for e in chunk)

    with ServedFolio(env_a, tmp_path / "a.log") as served:
        send(range(20), 20)  # 400 events, about 70 kB of journal: past the compaction threshold
        assert post(served, "/forget", {"user_id": "user-3"})["forgotten"] is True
        first = cli(env_a, "feedback", "export")["feedback_export"]
        assert first["events"] == 380  # user-3's events were forgotten before this export
        send(range(10, 30), 20)  # 400 more: the journal passes the threshold again, with 380 exported
        wait_for(  # user-0's first 15 events were exported and are not in its history of 5: gone
            lambda: min(json.loads(line).get("n", 99) for line in journal.read_bytes().splitlines()) > 15,
            30,
            "the service did not compact its journal",
            served.log_tail,
        )
        assert post(served, "/forget", {"user_id": "user-12"})["forgotten"] is True  # not yet exported
        made = cli(env_a, "backup", "create", str(tmp_path / "backup"), "--latest", "0")["backup_create"]
        assert made["production"] == production and made["models"] == [production]
        assert made["state"]["kind"] == "local" and made["feedback_checkpoints"]["journal"][0] == 401

    # a new machine: empty state directory, empty model store
    env_b = {**common, "BENTOML_HOME": str(tmp_path / "home-b"), "FOLIO_STATE_DIR": str(tmp_path / "state-b")}
    assert cli(env_b, "backup", "verify", str(tmp_path / "backup"))["backup_verify"]["files"] >= 4
    restored = cli(env_b, "backup", "restore", str(tmp_path / "backup"))["backup_restore"]
    assert restored["models_imported"] == [production] and restored["production"] == production

    with ServedFolio(env_b, tmp_path / "b.log") as served:
        assert post(served, "/info", {})["model_version"] == production
        for u in (0, 15, 29):
            body = post(served, "/recommend", {"user_id": f"user-{u}"})
            held = [item for user, item, _ in acked if user == f"user-{u}"][-5:]  # FOLIO_MAX_HISTORY
            assert body["cold_start"] is False and not {i["item_id"] for i in body["items"]} & set(held), u
        for user in FORGOTTEN:  # still forgotten: no history, nothing of theirs in the files
            assert post(served, "/recommend", {"user_id": user})["cold_start"] is True
        # every acknowledged event of a user not forgotten: in the restored export files or in the
        # restored journal, which the next export reads: each exactly once
        cli(env_b, "feedback", "export")
        rows = exported_events(tmp_path / "state-b" / "feedback")
        want = sorted((u, i, repr(ts)) for u, i, ts in acked if u not in FORGOTTEN)
        assert sorted((u, i, repr(float(ts))) for u, i, ts in rows) == want
        state_files = b"".join(p.read_bytes() for p in (tmp_path / "state-b").rglob("*") if p.is_file())
        assert not any(f'"{u}"'.encode() in state_files or f"{u},".encode() in state_files for u in FORGOTTEN)
        assert post(served, "/feedback", {"user_id": "after", "item_id": "b1", "event": "click"})["accepted"]


@pytest.fixture()
def empty_store(tmp_path: Path) -> Iterator[None]:
    previous = BentoMLContainer.model_store.get()
    BentoMLContainer.model_store.set(ModelStore(tmp_path / "no-models"))
    yield
    BentoMLContainer.model_store.set(previous)


def test_redis_state_restores_into_a_data_directory_redis_starts_from_with_aof(
    tmp_path: Path, empty_store: None
) -> None:
    events = [
        Event(f"user-{u}", f"b{i}", "click", None, 1_790_000_000.0 + 100 * u + i)
        for u in range(20)
        for i in range(8)
    ]

    async def write(url: str) -> None:
        s = await RedisState.connect(url)
        for start in range(0, len(events), 40):
            await s.append_events(events[start : start + 40], [1.0] * 40)
        for user in FORGOTTEN:
            await s.forget(user)
        await s.close()

    async def read(url: str) -> tuple[dict[str, list[str]], set[str]]:
        s = RedisState(url)
        try:
            hist = {f"user-{u}": [e.item_id for e in await s.history(f"user-{u}")] for u in range(20)}
            return hist, {f"user-{u}" for u in range(20) if await s.is_forgotten(f"user-{u}")}
        finally:
            await s.close()

    with RedisServer(tmp_path / "redis-a", appendfsync="everysec") as redis_a:
        asyncio.run(write(redis_a.url))
        before = asyncio.run(read(redis_a.url))
        settings = Settings(redis_url=redis_a.url, state_dir=tmp_path / "state-a")
        made = create_backup(tmp_path / "backup", settings, tmp_path / "state-a" / "feedback", latest=0)
        assert made["state"] == {"kind": "redis", "where": redis_a.url} and made["models"] == []
    assert before[1] == FORGOTTEN and len(before[0]["user-0"]) == 8

    target = Settings(redis_url="redis://127.0.0.1:1/0", state_dir=tmp_path / "state-b")
    out = restore_backup(tmp_path / "backup", target, tmp_path / "state-b" / "feedback", tmp_path / "redis-b")
    assert out["redis"]["keys"] > 0 and (tmp_path / "redis-b" / "appendonlydir").is_dir()
    with RedisServer(tmp_path / "redis-b", appendfsync="everysec") as redis_b:  # --appendonly yes
        assert asyncio.run(read(redis_b.url)) == before
        log = RedisLog(redis_b.url, None)
        records = log.read_after(None).records
        log.close()
        stream = sorted((r.event.user_id, r.event.item_id, r.event.ts) for r in records if r.event)
        assert stream == sorted((e.user_id, e.item_id, e.ts) for e in events if e.user_id not in FORGOTTEN)
        assert len([r for r in records if r.forgotten]) == len(FORGOTTEN)
