"""`python -m loadtests.served_quality` end to end: split the synthetic catalog (every user reads mostly
one genre), train and serve on the split with `bentoml serve` (API keys and a tight rate limit on), and
evaluate what the service answers against the held-out books."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runners.platform.processes import ROOT, ServedFolio
from runners.platform.settings import hash_key
from tests.conftest import TINY
from tests.synthetic_catalog import write_catalog
from training.artifacts import version_run
from training.experiment import run
from training.loaders import load_dataset

pytestmark = pytest.mark.integration
KEY = "quality-key"
USERS = 200


def cli(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "loadtests.served_quality", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served_quality")
    write_catalog(root / "full")
    done = cli("split", "--dataset", root / "full", "--out", root / "split", "--seed", "7")
    assert done.returncode == 0, done.stderr
    return root / "split"


@pytest.fixture(scope="module")
def split_tag(split_dir: Path) -> str:
    """A model trained on the split's books.csv + ratings.csv only (about 80 s on 2 cores)."""
    return str(version_run(run(load_dataset(str(split_dir)), TINY), "test").tag)


def test_evaluate_scores_the_served_lists(split_dir: Path, split_tag: str, tmp_path: Path) -> None:
    env = {
        "FOLIO_MODEL_TAG": split_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_RATE_LIMIT_RPS": "20",  # 8 requests in flight outpace it: 429s are waited out, not counted
        "FOLIO_RATE_LIMIT_BURST": "20",
    }
    out = tmp_path / "quality.json"
    with ServedFolio(env, tmp_path / "serve.log") as served:
        done = cli(
            "evaluate", "--url", served.url, "--catalog", split_dir, "--users", USERS, "--api-key", KEY,
            "--json", out,
        )  # fmt: skip
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{served.log_tail()}"
        unauthorized = cli("evaluate", "--url", served.url, "--catalog", split_dir, "--users", 20)
    report = json.loads(out.read_text())
    svc = report["service"]
    assert svc["succeeded"] == svc["requests"] == USERS and svc["failed"] == 0, svc
    assert svc["retries_429"] > 0 and svc["unknown_item_ids"] == 0, svc
    assert svc["fallback_share"] == 0 and svc["cold_start_share"] == 0, svc
    assert svc["model_versions"] == {split_tag: USERS}, svc
    rows = report["rows"]
    folio, ease, pop = (rows[n] for n in ("Folio (served over HTTP)", "EASE (same data)", "MostPop"))
    for m in (folio, ease, pop):
        assert m["users"] == USERS and 0 <= m["ndcg@10"] <= m["hit@10"] <= 1 and 0 < m["coverage@10"] <= 1
    # the planted genres are learnable: both learned models far above popularity
    assert folio["ndcg@10"] > 2 * pop["ndcg@10"] and ease["ndcg@10"] > 2 * pop["ndcg@10"], rows
    assert report["ease_reg"] in (100, 250, 500, 1000, 2000)
    assert "| Folio (served over HTTP) |" in done.stdout and "Folio vs EASE, ndcg@10:" in done.stdout
    # without the key every request is a 401: more than 1% failed, so the command fails and says why
    assert unauthorized.returncode == 1 and "20 of 20 /recommend requests" in unauthorized.stderr
    assert "'401': 20" in unauthorized.stderr
