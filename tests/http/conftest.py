"""One entry-service app for every test in tests/http (BentoML registers its metrics once a process,
so a second app in the same process fails): the model trained on the synthetic catalog, embedded state
in a temporary directory, the real embedded tritonserver. Package scope: its FOLIO_* variables are set
until the last test here, and never leak into the servers of tests/integration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.http.app import asgi_client


@pytest.fixture(scope="package")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="package")
def env(model_tag: str, state_dir: Path) -> dict[str, str]:
    return {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(state_dir),
        "FOLIO_MAX_PER_GENRE": "10",
        "FOLIO_TRENDING_HALF_LIFE_S": "3600",  # was a time bomb: 500s today below ~28,000 s
        "FOLIO_FEEDBACK_USER_BURST": "50",
        "FOLIO_FEEDBACK_USER_RPS": "0.01",
    }


@pytest.fixture(scope="package")
def client(env: dict[str, str]) -> Iterator[TestClient]:
    with asgi_client(env) as c:
        yield c
