"""loadtests.served_new_books without a server: the item split, the same-slots baselines, the scoring."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from loadtests.served_new_books import (
    evaluate_recommend,
    genre_pop_scores,
    read_item_split,
    same_slots,
    write_item_split,
)
from runners.http.schemas import CatalogBooks
from tests.synthetic_catalog import write_catalog
from training.loaders import load_dataset, load_goodbooks


def _column(path: Path, name: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row[name] for row in csv.DictReader(f)]


def test_the_split_holds_books_out_entirely(tmp_path: Path) -> None:
    write_catalog(tmp_path / "src", n_users=200)
    ds = load_dataset(str(tmp_path / "src"))
    cold = write_item_split(ds, tmp_path / "split", 0.1, seed=3)
    out = tmp_path / "split"
    held_ids = {ds.catalog.item_ids[i] for i in cold}
    assert len(held_ids) == round(0.1 * len(ds.catalog))

    books, rated = set(_column(out / "books.csv", "book_id")), _column(out / "ratings.csv", "book_id")
    assert not held_ids & books and not held_ids & set(rated)
    assert books | held_ids == set(ds.catalog.item_ids)

    new_books = json.loads((out / "new_books.json").read_text())
    assert {b["item_id"] for b in new_books} == held_ids
    CatalogBooks.model_validate({"books": new_books})  # what /admin/catalog/books takes
    first = ds.catalog.item_ids.index(new_books[0]["item_id"])
    assert new_books[0]["title"] == ds.catalog.titles[first]
    assert tuple(new_books[0]["genres"]) == ds.catalog.genres[first]

    holdout = _column(out / "holdout.csv", "book_id")
    assert set(holdout) <= held_ids and len(holdout) + len(rated) == len(ds.interactions)
    assert len(holdout) == int(np.isin(ds.interactions.items, cold).sum())

    warm = load_goodbooks(out / "books.csv", out / "ratings.csv")  # the files read back
    assert len(warm.interactions) == len(rated)
    data = read_item_split(out)
    assert data.holdout.nnz == len(set(zip(_column(out / "holdout.csv", "user_id"), holdout, strict=True)))
    with pytest.raises(ValueError):
        write_item_split(ds, tmp_path / "bad", 1.0, seed=3)


def test_same_slots_refills_the_new_books_positions_best_first() -> None:
    served = ["a", "N1", "b", "c", "N2", "d"]
    new = {"N1", "N2", "N3", "N4"}
    assert same_slots(served, new, ["N4", "N3", "N1", "N2"]) == ["a", "N4", "b", "c", "N3", "d"]
    assert same_slots(["a", "b"], new, ["N4"]) == ["a", "b"]  # no new book placed: nothing to fill
    assert same_slots(served, new, ["N2", "N1"]) == ["a", "N2", "b", "c", "N1", "d"]


def test_popularity_in_genre_known_answer() -> None:
    # warm books: 0 (x), 1 (x), 2 (y); new books: A (x), B (y), C (x, y)
    history = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=np.float32))
    warm_g = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float64)
    new_g = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float64)
    # genre popularity: x = (2 + 2) / 2 = 2, y = 1 / 1 = 1; user 1 reads half x, half y
    s = genre_pop_scores(history, np.arange(3), warm_g, new_g)
    np.testing.assert_allclose(s, [[2.0, 0.0, 2.0], [1.0, 0.5, 1.5], [2.0, 0.0, 2.0]])
    # popularity is over every user, whichever users are scored
    np.testing.assert_allclose(genre_pop_scores(history, np.array([1]), warm_g, new_g), [[1.0, 0.5, 1.5]])


def test_the_baselines_get_the_served_slots_and_are_scored_on_new_books_only(tmp_path: Path) -> None:
    out = tmp_path / "split"
    out.mkdir()
    (out / "books.csv").write_text(
        "book_id,title,authors,original_publication_year,genres\nw1,W1,,2000,x\nw2,W2,,2000,y\n"
    )
    (out / "ratings.csv").write_text(
        "user_id,book_id,rating,timestamp\nu,w1,5,1\nu,w1,5,2\nv,w1,5,1\nv,w2,5,2\n"
    )
    books = [
        {"item_id": "nx", "title": "NX", "authors": "", "genres": ["x"], "year": None},
        {"item_id": "ny", "title": "NY", "authors": "", "genres": ["y"], "year": None},
    ]
    (out / "new_books.json").write_text(json.dumps(books))
    (out / "holdout.csv").write_text("user_id,book_id\nu,nx\nv,ny\n")
    data = read_item_split(out)
    # u reads only x: genre-pop puts nx first; the service placed ny at rank 2 (a miss)
    # v reads x and y (x more popular): genre-pop picks nx, the service placed ny at rank 1 (a hit)
    lists = {"u": ["w2", "ny"], "v": ["ny", "w1"]}
    r = evaluate_recommend(data, lists, np.arange(2), seed=0)["rows"]
    folio, genre = r["Folio (served over HTTP)"], r["popularity-in-genre, same slots"]
    assert folio["recall@50"] == 0.5 and genre["recall@50"] == 0.5
    assert folio["ndcg@10"] == pytest.approx(0.5) and genre["ndcg@10"] == pytest.approx(0.5 / np.log2(3))
    assert folio["new_per_list"] == genre["new_per_list"] == 1.0
