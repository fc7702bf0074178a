"""The data of the served measurements: the user split (served_quality) and the item split
(served_new_books) written as Goodbooks-style folders, and read back with their holdout."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from models.features import genre_matrix
from training.artifacts import catalog_json
from training.cold_start_eval import holdout_items
from training.dataset import Catalog, Dataset
from training.fetch import DATASETS, fetch
from training.loaders import load_dataset, load_goodbooks
from training.protocol import PROTOCOLS, prepare, protocol_for, split_counts

BOOK_COLUMNS = ("book_id", "title", "authors", "original_publication_year", "genres")


def holdout_mask(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean per row: held out. Per user, a random order cut by ``split_counts(n, (1 - share, share))``,
    as ``training.protocol.split`` does."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(users.size)
    order = order[np.argsort(users[order], kind="stable")]  # grouped by user, shuffled within
    held = np.zeros(users.size, dtype=bool)
    for rows in np.split(order, np.flatnonzero(np.diff(users[order])) + 1):
        n_train, _ = split_counts(rows.size, (1.0 - share, share))
        held[rows[n_train:]] = True
    return held


def _num(x: float) -> str:
    """A number as loaders read it back: "" for NaN, shortest round-trip digits otherwise."""
    return "" if np.isnan(x) else np.format_float_positional(x, trim="-")


def _text(s: str) -> str:
    return " ".join(s.splitlines()).strip()  # the loaders read one record per physical line, stripped


def write_books(path: Path, cat: Catalog) -> None:
    """``cat`` as a Goodbooks-style books.csv (what load_goodbooks reads back)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(BOOK_COLUMNS)
        for i, t, a, g, y in zip(cat.item_ids, cat.titles, cat.authors, cat.genres, cat.years, strict=True):
            w.writerow([i, _text(t), _text(a), _num(float(y)), "|".join(g)])


def write_ratings(path: Path, ds: Dataset, rows: np.ndarray) -> None:
    """The interactions ``rows`` of ``ds`` (in that order) as a Goodbooks-style ratings.csv."""
    inter, cat = ds.interactions, ds.catalog
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("user_id", "book_id", "rating", "timestamp"))
        for r in rows:
            u, i = inter.user_ids[inter.users[r]], cat.item_ids[inter.items[r]]
            w.writerow((u, i, _num(float(inter.ratings[r])), _num(float(inter.timestamps[r]))))


def write_split(ds: Dataset, out: Path, share: float, seed: int) -> np.ndarray:
    """Write books.csv, ratings.csv (kept rows, file order) and holdout.csv; returns the held-out mask."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout share must be in (0, 1), got {share}")
    inter, cat = ds.interactions, ds.catalog
    held = holdout_mask(inter.users, share, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_books(out / "books.csv", cat)
    write_ratings(out / "ratings.csv", ds, np.flatnonzero(~held))
    write_holdout(out / "holdout.csv", ds, held)
    return held


def write_holdout(path: Path, ds: Dataset, held: np.ndarray) -> None:
    """holdout.csv: (user_id, book_id) of the interactions ``held`` (bool per row) marks."""
    inter, cat = ds.interactions, ds.catalog
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("user_id", "book_id"))
        w.writerows(
            (inter.user_ids[inter.users[r]], cat.item_ids[inter.items[r]]) for r in np.flatnonzero(held)
        )


def prepared_dataset(name: str, data_dir: Path) -> Dataset:
    """The dataset (fetched when it is a known one) after its evaluation protocol (training.protocol)."""
    if name in DATASETS:
        fetch(name, data_dir)
    raw = load_dataset(name, data_dir)
    return prepare(raw, protocol_for(raw.name))


def warn_if_protocol_folder(out: Path) -> None:
    if out.resolve().name in PROTOCOLS:
        print(
            f"warning: training on a folder named {out.resolve().name!r} applies that dataset's "
            "protocol again; rename the folder",
            file=sys.stderr,
        )


@dataclass(frozen=True)
class EvalData:
    """ratings.csv (binary users x items) and holdout.csv in the same index space."""

    user_ids: list[str]  # ratings.csv users, then holdout-only users
    train: sp.csr_matrix
    target: sp.csr_matrix


def read_pairs(
    path: Path, user_ids: list[str], items: dict[str, int], unknown: Callable[[str], str]
) -> tuple[list[int], list[int]]:
    """(user rows, item columns) of a holdout.csv; users missing from ``user_ids`` are appended to it. A
    book missing from ``items`` is a ValueError naming the line (``unknown(book_id)`` says why)."""
    users = {u: n for n, u in enumerate(user_ids)}
    rows, cols = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            u, b = rec["user_id"].strip(), rec["book_id"].strip()
            if b not in items:
                raise ValueError(f"{path}:{line}: {unknown(b)}")
            if u not in users:
                users[u] = len(user_ids)
                user_ids.append(u)
            rows.append(users[u])
            cols.append(items[b])
    return rows, cols


def read_holdout(path: Path, ds: Dataset) -> EvalData:
    """holdout.csv (user_id, book_id) against the catalog loaded from books.csv + ratings.csv.

    Unknown books raise ValueError; held-out pairs also in ratings.csv are dropped (no one may
    recommend them)."""
    user_ids = list(ds.interactions.user_ids)
    items = {b: n for n, b in enumerate(ds.catalog.item_ids)}
    rows, cols = read_pairs(path, user_ids, items, lambda b: f"unknown book_id {b!r}")
    shape = (len(user_ids), len(ds.catalog))
    inter = ds.interactions
    train = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.users, inter.items)), shape=shape)
    target = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    train.data[:], target.data[:] = 1.0, 1.0
    target = (target - target.multiply(train)).tocsr()
    target.eliminate_zeros()
    return EvalData(user_ids, train, target)


def write_item_split(ds: Dataset, out: Path, share: float, seed: int) -> np.ndarray:
    """Write books.csv + ratings.csv (the books not held out), new_books.json and holdout.csv; returns
    the held-out item indices of ``ds`` (sorted)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"item share must be in (0, 1), got {share}")
    cat, inter = ds.catalog, ds.interactions
    cold = holdout_items(len(cat), share, seed)
    if not 0 < cold.size < len(cat):
        raise ValueError(f"item share {share} of {len(cat)} items holds out {cold.size}: nothing to measure")
    is_cold = np.zeros(len(cat), dtype=bool)
    is_cold[cold] = True
    held = is_cold[inter.items]
    out.mkdir(parents=True, exist_ok=True)
    write_books(out / "books.csv", cat.subset(np.flatnonzero(~is_cold)))
    write_ratings(out / "ratings.csv", ds, np.flatnonzero(~held))
    (out / "new_books.json").write_text(json.dumps(catalog_json(cat.subset(cold)), indent=1) + "\n")
    write_holdout(out / "holdout.csv", ds, held)
    return cold


@dataclass(frozen=True)
class ItemSplit:
    warm: Dataset  # books.csv + ratings.csv
    history: sp.csr_matrix  # binary, ratings.csv users x books.csv books
    new_books: list[dict[str, Any]]  # new_books.json
    new_ids: list[str]
    holdout: sp.csr_matrix  # binary, users (ratings.csv users, then holdout-only ones) x new books
    user_ids: list[str]


def read_item_split(folder: Path) -> ItemSplit:
    ds = load_goodbooks(folder / "books.csv", folder / "ratings.csv")
    new_books = json.loads((folder / "new_books.json").read_text())
    new_ids = [b["item_id"] for b in new_books]
    col = {b: n for n, b in enumerate(new_ids)}
    user_ids = list(ds.interactions.user_ids)
    rows, cols = read_pairs(
        folder / "holdout.csv", user_ids, col, lambda b: f"{b!r} is not in new_books.json"
    )
    holdout = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_ids), len(new_ids))
    )
    holdout.data[:] = 1.0
    inter = ds.interactions
    history = sp.csr_matrix(
        (np.ones(len(inter), np.float32), (inter.users, inter.items)),
        shape=(len(user_ids), len(ds.catalog)),
    )
    history.data[:] = 1.0
    return ItemSplit(ds, history, new_books, new_ids, holdout, user_ids)


def genre_matrices(data: ItemSplit, new_books: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """float64 one-hot genres of the books.csv books and of ``new_books``, over books.csv's genres."""
    vocab = tuple(data.warm.catalog.genre_vocab)
    warm = genre_matrix(data.warm.catalog.genres, vocab).astype(np.float64)
    new = genre_matrix([tuple(b["genres"]) for b in new_books], vocab).astype(np.float64)
    return warm, new
