"""`python -m loadtests.served_new_books` end to end: hold a fifth of the synthetic catalog's books out
entirely (every user reads mostly one genre), train and serve on the rest with `bentoml serve`, add the
held-out books through the admin API and score what /recommend and /similar answer for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.served_new_books import REC_ROWS
from runners.platform.processes import ROOT, ServedFolio
from runners.platform.settings import hash_key
from tests.conftest import TINY
from tests.synthetic_catalog import write_catalog
from training.artifacts import version_run
from training.experiment import run
from training.loaders import load_dataset

pytestmark = pytest.mark.integration
KEY = "new-books-key"
USERS = 200


def cli(*args: str | Path | int, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "loadtests.served_new_books", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "FOLIO_API_KEY"} | (
        {"FOLIO_API_KEY": key} if key else {}
    )
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served_new_books")
    write_catalog(root / "full")
    done = cli(
        "split", "--dataset", root / "full", "--out", root / "split", "--item-share", "0.2", "--seed", "7"
    )
    assert done.returncode == 0, done.stderr
    return root / "split"


@pytest.fixture(scope="module")
def split_tag(split_dir: Path) -> str:
    return str(version_run(run(load_dataset(str(split_dir)), TINY), "test").tag)


def test_new_books_are_added_and_scored_over_http(split_dir: Path, split_tag: str, tmp_path: Path) -> None:
    env = {
        "FOLIO_MODEL_TAG": split_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_CACHE_TTL_S": "0",
        "FOLIO_NEW_BOOKS_PER_LIST": "2",
    }
    out = tmp_path / "new_books.json"
    with ServedFolio(env, tmp_path / "serve.log") as served:
        done = cli("evaluate", "--url", served.url, "--catalog", split_dir, "--users", USERS, "--json", out)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{served.log_tail()}"
        wrong_key = cli("evaluate", "--url", served.url, "--catalog", split_dir, key="not-the-key")
    report = json.loads(out.read_text())
    assert report["failed"] == 0 and report["new_books"] == 12
    assert report["admin"]["answers"][0]["added_or_corrected"] == 12
    rec = report["recommend"]
    assert rec["service"]["succeeded"] == USERS and rec["service"]["cold_start_share"] == 0
    folio, genre, rand = (rec["rows"][n] for n in REC_ROWS)
    assert (
        0 < folio["new_per_list"] <= 2
        and folio["new_per_list"] == genre["new_per_list"] == rand["new_per_list"]
    )
    # the planted genres show in the new books' records: the served choice beats chance at equal slots
    assert folio["recall@50"] > rand["recall@50"], rec["rows"]
    sim = report["similar"]
    assert (
        sim["rows"]["Folio /similar (served over HTTP)"]["books"] == 12
        and sim["served_answers"]["unknown_ids"] == 0
    )
    assert "| popularity-in-genre, same slots |" in done.stdout
    assert wrong_key.returncode == 1 and "/admin/catalog/books refused" in wrong_key.stderr
