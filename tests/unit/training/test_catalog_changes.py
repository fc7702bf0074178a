"""training/catalog_changes.py: the next training run applies the service's catalog log."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from runners.platform.settings import load_settings
from runners.state.catalog import Book, CatalogChange, CatalogState, LocalCatalog
from training.catalog_changes import apply_catalog_changes, configured_catalog_state
from training.dataset import Catalog, Dataset, Interactions


def dataset() -> Dataset:
    catalog = Catalog(["a", "b"], ["A", "B"], ["x", ""], [("g",), ()], np.array([2000.0, np.nan], np.float32))
    inter = Interactions(np.array([0]), np.array([1]), np.array([4.0], np.float32), np.array([1.0]), ["u"])
    return Dataset("shop", catalog, inter, {"books": "books.csv"})


def test_corrections_replace_records_and_added_books_are_appended() -> None:
    state = CatalogState(
        7, {"b": Book("b", "B2", "Writer", ("h",), 1999), "new": Book("new", "N")}, frozenset({"a"})
    )
    out = apply_catalog_changes(dataset(), state)
    c = out.catalog
    assert c.item_ids == ["a", "b", "new"] and c.titles == ["A", "B2", "N"]
    assert c.authors == ["x", "Writer", ""] and c.genres == [("g",), ("h",), ()]
    assert c.years[1] == 1999 and math.isnan(float(c.years[2]))
    assert out.interactions.items.tolist() == [1]  # the interactions are untouched
    assert out.source == {"books": "books.csv", "catalog_revision": "7"}  # withdrawn "a" stays


def test_nothing_to_apply_keeps_the_dataset() -> None:
    ds = dataset()
    assert apply_catalog_changes(ds, CatalogState(3, {}, frozenset({"a"}))) is ds


def test_reads_the_configured_local_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOLIO_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("FOLIO_REDIS_URL", raising=False)
    load_settings.cache_clear()
    try:
        assert configured_catalog_state() == CatalogState()  # no log yet: nothing, and none created
        assert not (tmp_path / "catalog.jsonl").exists()

        async def write() -> None:
            log = LocalCatalog(tmp_path / "catalog.jsonl")
            await log.append([CatalogChange("upsert", "b", Book("b", "B2")), CatalogChange("withdraw", "a")])
            await log.close()

        asyncio.run(write())
        state = configured_catalog_state()
        assert state.revision == 2 and state.withdrawn == frozenset({"a"}) and state.books["b"].title == "B2"
    finally:
        load_settings.cache_clear()
