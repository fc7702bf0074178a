"""Model lifecycle under traffic, on `bentoml serve` following the store's production version.

The service runs on its own BENTOML_HOME (so promotions here don't touch the session's store); versions
are saved and promoted there through `python -m training`, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.faults.inject import group_gone, tritonservers
from loadtests.faults.store import IsolatedStore as Store
from loadtests.faults.store import randomize_largest_initializer
from models import registry
from runners.platform.processes import ServedFolio
from runners.platform.redis_server import RedisServer
from runners.platform.settings import hash_key
from tests.integration.test_served import wait_for

pytestmark = pytest.mark.integration
KEY = "lifecycle-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def versions(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Store:
    stored = registry.get(model_tag)
    return Store(
        tmp_path_factory.mktemp("home"), Path(stored.path), json.loads(json.dumps(stored.info.metadata))
    )


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    with RedisServer(tmp_path / "redis") as server:
        yield server.url


@pytest.fixture(scope="module")
def first(versions: Store) -> str:
    tag = versions.save()
    versions.promote(tag)
    return tag


def following_production(versions: Store, tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a service that follows the isolated store's production version."""
    return {
        "BENTOML_HOME": str(versions.home),
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_MODEL_WATCH_S": "0.5",
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_RATE_LIMIT_RPS": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def served(versions: Store, first: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    with ServedFolio(following_production(versions, tmp), tmp / "serve.log") as server:
        yield server


def served_version(served: ServedFolio) -> dict:
    return httpx.post(f"{served.url}/info", json={}, headers=AUTH, timeout=30).json()


class Traffic:
    """Requests in a loop from a thread, recording (status, model_version) of each."""

    def __init__(self, url: str) -> None:
        self.url, self.results = url, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                r = client.post("/recommend", json={"user_id": f"u{n % 500}", "k": 5})
                self.results.append((r.status_code, r.json().get("model_version")))
                n += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_promote_and_rollback_under_traffic(served: ServedFolio, versions: Store, first: str) -> None:
    assert served_version(served)["model_version"] == first
    with Traffic(served.url) as traffic:
        second = versions.save()
        versions.promote(second)
        wait_for(
            lambda: served_version(served)["model_version"] == second, 60, "promotion missed", served.log_tail
        )
        time.sleep(1)
        versions.rollback()
        wait_for(
            lambda: served_version(served)["model_version"] == first, 60, "rollback missed", served.log_tail
        )
        time.sleep(1)
    statuses = {s for s, _ in traffic.results}
    seen = [v for _, v in traffic.results]
    assert statuses == {200}, f"failed requests during the swaps: {statuses}"
    assert second in seen and seen[-1] == first and set(seen) == {first, second}, set(seen)


def _broken_missing_artifact(versions: Store) -> str:
    tag = versions.save()
    (versions.path(tag) / "ranker_int8.onnx").unlink()
    return tag


def _broken_parity(versions: Store) -> str:
    parity = json.loads(json.dumps(versions.metadata["parity"]))
    parity["ndcg"]["int8"] = parity["ndcg"]["fp32"] - 0.05
    return versions.save(parity=parity)


def _broken_shapes(versions: Store) -> str:
    def drop_a_book(version: Path) -> None:
        catalog = version / "catalog.json"
        catalog.write_text(json.dumps(json.loads(catalog.read_text())[:-1]))

    return versions.changed_copy(drop_a_book)


def _rotted_after_save(versions: Store) -> str:
    tag = versions.save()
    onnx = versions.path(tag) / "ranker_int8.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    return tag


def _corrupted_weights(versions: Store) -> str:
    return versions.changed_copy(lambda version: randomize_largest_initializer(version / "ranker_int8.onnx"))


@pytest.mark.parametrize(
    ("breakage", "says"),
    [
        (_broken_missing_artifact, "missing ranker_int8.onnx"),
        (_broken_parity, "int8: NDCG@10"),
        (_broken_shapes, "item counts disagree"),
        (_rotted_after_save, "ranker_int8.onnx is corrupted (sha256"),
        (_corrupted_weights, "the int8 ranker disagrees with fp32"),
    ],
)
def test_broken_version_is_refused_and_current_keeps_serving(
    served: ServedFolio,
    versions: Store,
    breakage,
    says: str,  # type: ignore[no-untyped-def]
) -> None:
    current = served_version(served)["model_version"]
    bad = breakage(versions)
    versions.promote(bad)
    try:
        refused = lambda: bad in (served_version(served).get("last_reload_error") or "")  # noqa: E731
        wait_for(refused, 30, "no refusal", served.log_tail)
        info = served_version(served)
        assert info["model_version"] == current and says in info["last_reload_error"]
        assert f"refused to serve {bad}" in served.log_tail(400)
        r = httpx.post(f"{served.url}/recommend", json={"user_id": "u7"}, headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == current
    finally:
        versions.rollback()


def test_admin_reload(served: ServedFolio, versions: Store) -> None:
    url = f"{served.url}/admin/reload"
    assert httpx.post(url, json={}, timeout=30).status_code == 401
    current = served_version(served)["model_version"]
    other = versions.save()
    r = httpx.post(url, json={"tag": other}, headers=AUTH, timeout=120)
    assert r.status_code == 200 and r.json() == {
        "model_version": other,
        "previous": current,
        "request_id": r.headers["x-request-id"],
    }
    bad = _broken_missing_artifact(versions)
    r = httpx.post(url, json={"tag": bad}, headers=AUTH, timeout=120)
    assert r.status_code == 409 and "refused" in r.text and "missing ranker_int8.onnx" in r.text
    back = httpx.post(url, json={}, headers=AUTH, timeout=120)  # back to the production version
    assert back.status_code == 200 and back.json()["model_version"] == current


def test_a_withdrawal_outlives_a_new_version(served: ServedFolio, versions: Store) -> None:
    """Catalog changes live in the state store, not in a version: the next one serves them too."""
    with httpx.Client(base_url=served.url, headers=AUTH, timeout=120) as c:
        current = served_version(served)["model_version"]
        gone = c.post("/recommend", json={"user_id": "u5"}).json()["items"][0]["item_id"]
        assert c.post("/admin/catalog/withdraw", json={"item_ids": [gone]}).status_code == 200
        try:
            other = versions.save()
            assert c.post("/admin/reload", json={"tag": other}).json()["model_version"] == other
            body = c.post("/recommend", json={"user_id": "u5"}).json()
            assert body["model_version"] == other and gone not in [i["item_id"] for i in body["items"]]
            assert c.post("/admin/reload", json={}).json()["model_version"] == current
        finally:
            assert c.post("/admin/catalog/restore", json={"item_ids": [gone]}).status_code == 200


def test_admin_reload_of_the_served_version_is_a_no_op(served: ServedFolio) -> None:
    """Regression: `{"tag": ""}` redeployed the current version with a new tritonserver each time
    (40 calls: worker 223 -> 526 MB, up to 10 tritonservers at once)."""
    url = f"{served.url}/admin/reload"
    current = served_version(served)["model_version"]
    one = lambda: len(tritonservers(served.proc.pid)) == 1  # noqa: E731
    wait_for(one, 60, "the retired deployments of the tests above stop their servers", served.log_tail)
    before = tritonservers(served.proc.pid)
    for tag in [current, current.split(":")[1], None] * 5:
        r = httpx.post(url, json={} if tag is None else {"tag": tag}, headers=AUTH, timeout=120)
        assert r.status_code == 200 and r.json()["model_version"] == r.json()["previous"] == current
    for bad in ("", "a:b:c", "]"):
        assert httpx.post(url, json={"tag": bad}, headers=AUTH, timeout=30).status_code == 400
    assert tritonservers(served.proc.pid) == before


def test_admin_reload_reaches_every_worker(
    versions: Store, first: str, tmp_path: Path, redis_url: str
) -> None:
    env = following_production(versions, tmp_path, FOLIO_WORKERS="2", FOLIO_REDIS_URL=redis_url)
    with ServedFolio(env, tmp_path / "serve.log") as served:

        def versions_by_worker() -> dict[int, str]:
            seen: dict[int, str] = {}
            for _ in range(30):  # new connections spread over the workers
                info = served_version(served)
                seen[info["worker_pid"]] = info["model_version"]
            return seen

        assert len(versions_by_worker()) == 2, "both workers must answer for this test to mean anything"
        other = versions.save()
        r = httpx.post(f"{served.url}/admin/reload", json={"tag": other}, headers=AUTH, timeout=120)
        assert r.status_code == 200 and r.json()["model_version"] == other
        followed = lambda: set(versions_by_worker().values()) == {other}  # noqa: E731
        wait_for(followed, 90, "every worker serves it", served.log_tail)


def test_sigterm_drains_then_stops_triton(model_tag: str, tmp_path: Path) -> None:
    """Readiness turns 503 at once; requests keep succeeding, ranked by Triton (no fallback), during the
    drain; then the worker stops listening: a request after the drain is answered 503 or refused at once,
    never left hanging; the service exits within drain + 2 s and takes tritonserver with it."""
    drain_s = 3.0
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "s"),
        "FOLIO_DRAIN_S": str(drain_s),
    }
    served = ServedFolio(env, tmp_path / "serve.log").start()
    try:
        pid = httpx.post(f"{served.url}/info", json={}, timeout=30).json()["triton"]["pid"]
        outcomes: list[tuple[float, str, float]] = []  # (sent at, outcome, seconds)
        stop = threading.Event()

        def hammer(n: int) -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = httpx.post(f"{served.url}/recommend", json={"user_id": f"u{n}"}, timeout=30)
                    outcome = f"200 {r.json()['fallback']}" if r.status_code == 200 else str(r.status_code)
                except httpx.ConnectError:
                    outcome = "refused"
                except httpx.HTTPError as exc:
                    outcome = f"broken: {exc!r}"
                outcomes.append((sent, outcome, time.monotonic() - sent))
                if outcome != "200 none":
                    time.sleep(0.05)

        threads = [threading.Thread(target=hammer, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert served.proc is not None
        term = time.monotonic()
        os.kill(served.proc.pid, signal.SIGTERM)  # as a process manager would, to the main process only
        deadline = time.monotonic() + 2
        saw_503 = False
        while time.monotonic() < deadline and not saw_503:
            saw_503 = httpx.get(f"{served.url}/readyz", timeout=5).status_code == 503
        assert saw_503, "readiness did not turn 503 on SIGTERM"
        served.proc.wait(60)
        exit_s = time.monotonic() - term
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        during = [o for sent, o, _ in outcomes if term <= sent < term + drain_s - 0.2]
        assert len(during) > 10 and set(during) == {"200 none"}, sorted(set(during))
        after = [(o, round(took, 2)) for sent, o, took in outcomes if sent >= term + drain_s + 0.2]
        assert after and {o for o, _ in after} <= {"503", "refused"}, after
        assert max(took for _, took in after) < 1.0, after  # answered or refused at once, never hung
        assert exit_s < drain_s + 2.0, f"exit took {exit_s:.1f}s after SIGTERM (drain {drain_s}s)"
        wait_for(lambda: group_gone(pid), 30, f"tritonserver {pid} outlived the service", served.log_tail)
    finally:
        served.stop()
