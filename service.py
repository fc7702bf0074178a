"""Folio's BentoML entry service.

This first cut serves what the offline pipeline versions: the model's identity and metrics (`/info`)
and item-to-item neighbours from its FAISS index (`/similar`). Recommendation, ranking on Triton and
state arrive with the serving issue.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import faiss
import numpy as np
from pydantic import Field

from training import store


def serving_model() -> bentoml.Model:
    """``FOLIO_MODEL_TAG`` if set, else the store's production version."""
    tag = os.environ.get("FOLIO_MODEL_TAG")
    model = store.get(tag) if tag else store.production()
    if model is None:
        raise store.StoreError(
            "no production model in the store: run ./scripts/main.sh or set FOLIO_MODEL_TAG"
        )
    return model


@bentoml.service(traffic={"timeout": 10})
class Recommender:
    def __init__(self) -> None:
        self.model = serving_model()
        path = Path(self.model.path)
        self.index = faiss.read_index(str(path / "items.faiss"))
        self.catalog: list[dict[str, Any]] = json.loads((path / "catalog.json").read_text())
        self.position = {item["item_id"]: i for i, item in enumerate(self.catalog)}

    @bentoml.api
    def info(self) -> dict[str, Any]:
        meta = self.model.info.metadata
        return {
            "model_version": str(self.model.tag),
            "stage": self.model.info.labels.get("stage"),
            "dataset": meta.get("dataset"),
            "test": meta.get("test"),
            "parity": meta.get("parity"),
        }

    @bentoml.api
    def similar(self, item_id: str, k: Annotated[int, Field(ge=1, le=100)] = 10) -> dict[str, Any]:
        pos = self.position.get(item_id)
        if pos is None:
            raise bentoml.exceptions.NotFound(
                f"unknown item_id {item_id!r}: not in the catalog of {self.model.tag}"
            )
        query = np.asarray(self.index.reconstruct(pos), dtype=np.float32)[None, :]
        scores, ids = self.index.search(query, k + 1)
        items = [
            self.catalog[i] | {"score": float(s)}
            for s, i in zip(scores[0], ids[0], strict=True)
            if i != pos and i >= 0
        ][:k]
        return {"item_id": item_id, "items": items, "model_version": str(self.model.tag)}
