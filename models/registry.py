"""Versioning in the BentoML model store: save a version directory (models/version.py) as
``folio:<version>``, list, promote, roll back.

Labels: ``stage`` (candidate | production | retired | rolled-back), ``dataset`` and, once promoted,
``promoted_at`` (UTC ISO time). Production is the model labelled stage=production; rollback walks
back to the most recently promoted version before it.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from models import version

MODEL_NAME = "folio"
MODEL_STORE_ENV = "FOLIO_MODEL_STORE"


def use_configured_store() -> None:
    """FOLIO_MODEL_STORE (a directory): the model store every Folio process reads and writes instead of
    BentoML's (``$BENTOML_HOME/models``, or inside a containerized Bento its own read-only copy). It is
    how a retrain job and the serving replicas share versions: both mount one volume (deploy/README.md).
    Called by the training CLI and by the service once it is built (the version declared at class scope
    for `bentoml build` still comes from the Bento's own store)."""
    if path := os.environ.get(MODEL_STORE_ENV):
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        BentoMLContainer.model_store.set(ModelStore(directory))


class StoreError(RuntimeError):
    pass


def servable_problems(model: bentoml.Model) -> list[str]:
    """Why a stored version must not be served: missing artifacts, failed parity (empty: servable)."""
    problems = [f"missing {a}" for a in version.missing(Path(model.path))]
    parity: Any = model.info.metadata.get("parity") or {}
    return problems + version.parity_problems(parity)


def save(artifacts: Path, labels: dict[str, str], metadata: dict[str, Any]) -> bentoml.Model:
    """Copy a complete artifact directory into a new store version (stage=candidate)."""
    if missing := version.missing(artifacts):
        raise StoreError(f"{artifacts} lacks {', '.join(missing)}: refusing to version an incomplete model")
    with bentoml.models.create(
        MODEL_NAME, labels={"stage": "candidate", **labels}, metadata=metadata
    ) as model:
        for name in version.ARTIFACTS + version.OPTIONAL_ARTIFACTS:
            if (artifacts / name).is_file():
                shutil.copy2(artifacts / name, Path(model.path) / name)
    return model


def _models() -> list[bentoml.Model]:
    try:
        models = bentoml.models.list(MODEL_NAME)
    except bentoml.exceptions.NotFound:  # no version saved yet
        return []
    return sorted(models, key=lambda m: m.info.creation_time)


def get(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag if ":" in tag else f"{MODEL_NAME}:{tag}")
    except bentoml.exceptions.NotFound as exc:
        raise StoreError(f"no model {tag!r} in the store ({bentoml.__name__} home: {store_home()})") from exc
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:  # not a valid tag
        raise StoreError(f"{tag!r} is not a valid model tag: {exc}") from exc


def store_home() -> str:
    return str(BentoMLContainer.model_store.get()._path)


def set_labels(model: bentoml.Model, **labels: str) -> None:
    model.info.labels.update(labels)
    model.flush()  # rewrites model.yaml


def newest() -> bentoml.Model | None:
    models = _models()
    return models[-1] if models else None


def production() -> bentoml.Model | None:
    prod = [m for m in _models() if m.info.labels.get("stage") == "production"]
    return prod[-1] if prod else None


def promote(tag: str, *, keep_time: bool = False) -> bentoml.Model:
    """Label ``tag`` stage=production; the previous production version becomes stage=retired."""
    model = get(tag)
    for m in _models():
        if m.info.labels.get("stage") == "production" and m.tag != model.tag:
            set_labels(m, stage="retired")
    stamp = model.info.labels.get("promoted_at") if keep_time else None
    set_labels(model, stage="production", promoted_at=stamp or datetime.now(UTC).isoformat())
    return model


def rollback() -> bentoml.Model:
    """Back to the version promoted most recently before the current production one."""
    current = production()
    if current is None:
        raise StoreError("no production model to roll back from")
    now = current.info.labels["promoted_at"]
    earlier = [
        m
        for m in _models()
        if m.info.labels.get("stage") == "retired" and m.info.labels.get("promoted_at", "") < now
    ]
    if not earlier:
        raise StoreError(f"{current.tag} is the first production version: nothing to roll back to")
    target = max(earlier, key=lambda m: m.info.labels["promoted_at"])
    set_labels(current, stage="rolled-back")
    return promote(str(target.tag), keep_time=True)


def listing() -> list[dict[str, Any]]:
    rows = []
    for m in _models():
        test: Any = m.info.metadata.get("test", {})
        metrics = test.get("Folio (retrieve + rank)", {})
        rows.append(
            {
                "tag": str(m.tag),
                "stage": m.info.labels.get("stage", ""),
                "dataset": m.info.labels.get("dataset", ""),
                "created": m.info.creation_time.isoformat(timespec="seconds"),
                "ndcg@10": metrics.get("ndcg@10"),
                "promoted_at": m.info.labels.get("promoted_at", ""),
            }
        )
    return rows


def read_json(model: bentoml.Model, name: str) -> Any:
    return json.loads((Path(model.path) / name).read_text())
