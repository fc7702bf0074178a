"""runners/state/catalog.py: validation, the shared CatalogContract (run here on LocalCatalog and in
tests/integration/test_redis_catalog.py on a real Redis), journal replay and the per-version view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runners.state.catalog import (
    MAX_TITLE_CHARS,
    Book,
    CatalogChange,
    CatalogLog,
    CatalogState,
    CatalogView,
    LocalCatalog,
)
from tests.contracts.catalog_log import DUNE, Backend, CatalogContract, run


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * (MAX_TITLE_CHARS + 1)}, "title"),
        ({"item_id": ""}, "item_id"),
        ({"genres": ("",)}, "genre"),
        ({"genres": tuple(f"g{i}" for i in range(33))}, "genres"),
        ({"year": 2101}, "year"),
        ({"year": True}, "year"),
        ({"year": 1.5}, "year"),
        ({"description": "x" * 8193}, "description"),
        ({"authors": 5}, "authors"),
    ],
)
def test_book_bounds(kw: dict[str, Any], match: str) -> None:
    fields = {"item_id": "b1", "title": "Dune"} | kw
    with pytest.raises(ValueError, match=match):
        Book(**fields)


def test_change_rules() -> None:
    with pytest.raises(ValueError, match="carries a book"):
        CatalogChange("upsert", "b1")
    with pytest.raises(ValueError, match="carries a book"):
        CatalogChange("withdraw", "b1", DUNE)
    with pytest.raises(ValueError, match="filed under"):
        CatalogChange("upsert", "b2", DUNE)
    with pytest.raises(ValueError, match="op"):
        CatalogChange("delete", "b1")  # type: ignore[arg-type]
    rev, back = CatalogChange.from_dict(CatalogChange("upsert", "b1", DUNE, ts=5.0).to_dict(7))
    assert rev == 7 and back == CatalogChange("upsert", "b1", DUNE, ts=5.0)


def test_view_maps_the_state_onto_a_version() -> None:
    position = {"a": 0, "b": 1, "c": 2}
    state = CatalogState(
        4, {"b": Book("b", "B, corrected"), "new": Book("new", "New")}, frozenset({"c", "zz"})
    )
    view = CatalogView.build(state, position, 3)
    assert view.withdrawn_mask.tolist() == [False, False, True]
    assert view.overrides[1].title == "B, corrected" and set(view.new_books) == {"new"}
    assert view.revision == 4 and view.knows("new", position) and not view.knows("zz", position)


class LocalBackend:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def make(self) -> CatalogLog:
        return LocalCatalog(self.path)


class TestLocalContract(CatalogContract):
    @pytest.fixture()
    def backend(self, tmp_path: Path) -> Backend:
        return LocalBackend(tmp_path / "catalog.jsonl")


def test_replay_skips_bad_lines_and_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    good = [
        CatalogChange("upsert", "b1", DUNE, ts=1.0).to_dict(1),
        CatalogChange("withdraw", "b1", ts=2.0).to_dict(2),
    ]
    bad_title = CatalogChange("upsert", "b1", DUNE, ts=3.0).to_dict(3)
    bad_title["book"]["title"] = ""
    stale = CatalogChange("restore", "b1", ts=4.0).to_dict(2)  # revision not after the last one
    lines = [json.dumps(good[0]), "not json", json.dumps(bad_title), json.dumps(good[1]), json.dumps(stale)]
    path.write_text("\n".join(lines) + "\n" + '{"rev": 9, "op": "resto')  # torn last line
    cat = LocalCatalog(path)
    try:
        state = run(cat.state())
        assert cat.skipped == 4 and state.revision == 2 and state.withdrawn == frozenset({"b1"})
        assert state.books["b1"].title == "Dune"
        assert not path.read_bytes().endswith(b"resto")  # cut off, so the next append starts a line
        assert run(cat.append([CatalogChange("restore", "b1")])) == 3
    finally:
        run(cat.close())
    assert run(LocalCatalog(path).state()).withdrawn == frozenset()


def test_view_of_nothing_withdraws_nothing() -> None:
    view = CatalogView.build(CatalogState(), {"a": 0}, 1)
    assert not view.withdrawn_ids and not np.any(view.withdrawn_mask)
