"""Shared fixtures: a synthetic catalog, a run trained on it, and a temporary model store.

BENTOML_HOME points at a temporary store before bentoml is imported, so tests never touch ~/bentoml.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="folio-bentoml-")

import pytest

from models.retrieval import RetrievalConfig
from training.experiment import RunResult, TrainConfig, run
from training.loaders import load_dataset
from training.pipeline import RankerConfig

from .synthetic_catalog import write_catalog

TINY = TrainConfig(
    seed=1,
    retrieval=RetrievalConfig(dim=32, hidden=64, epochs=60, batch_size=64),
    ranker=RankerConfig(candidates=30, width=32, epochs=8, users_per_batch=16),
    ease_regs=(10.0, 100.0),
    knn_ks=(10,),
)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "books"
    write_catalog(out)
    return out


@pytest.fixture(scope="session")
def planted(synthetic_dir: Path) -> dict[str, str]:
    return write_catalog(synthetic_dir)  # deterministic: rewrites the same files


@pytest.fixture(scope="session")
def trained(synthetic_dir: Path) -> RunResult:
    return run(load_dataset(str(synthetic_dir)), TINY)


@pytest.fixture(scope="session")
def artifacts_dir(trained: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.artifacts import write_artifacts

    out = tmp_path_factory.mktemp("artifacts")
    write_artifacts(trained, out)
    return out


@pytest.fixture(scope="session")
def model_tag(trained: RunResult) -> str:
    """The trained run saved as a version in the temporary model store."""
    from training.artifacts import version_run

    return str(version_run(trained, "test").tag)
