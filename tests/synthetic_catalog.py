"""A Goodbooks-style catalog with planted preferences: every user reads mostly one genre.

The known answer: a trained pipeline must recommend a user's own genre far above chance (1/3).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

GENRES = ("fantasy", "history", "romance")
BOOKS_PER_GENRE = 20


def genre_of_book(book: int) -> str:
    return GENRES[book // BOOKS_PER_GENRE]


def write_catalog(out: Path, n_users: int = 1000, seed: int = 0) -> dict[str, str]:
    """Write books.csv + ratings.csv into ``out``; returns user_id -> planted genre."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_books = BOOKS_PER_GENRE * len(GENRES)
    with open(out / "books.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["book_id", "title", "authors", "original_publication_year", "genres"])
        for b in range(n_books):
            w.writerow(
                [
                    f"b{b}",
                    f"{genre_of_book(b).title()} Book {b}",
                    f"Author {b % 7}",
                    1950 + b,
                    genre_of_book(b),
                ]
            )
    zipf = 1.0 / np.arange(1, BOOKS_PER_GENRE + 1)
    zipf /= zipf.sum()
    planted: dict[str, str] = {}
    with open(out / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "book_id", "rating", "timestamp"])
        for u in range(n_users):
            g = int(rng.integers(len(GENRES)))
            planted[f"u{u}"] = GENRES[g]
            own = (
                rng.choice(BOOKS_PER_GENRE, size=int(rng.integers(10, 16)), replace=False, p=zipf)
                + g * BOOKS_PER_GENRE
            )
            other = rng.choice(n_books, size=1, replace=False)
            for t, b in enumerate(np.unique(np.concatenate([own, other]))):
                w.writerow([f"u{u}", f"b{b}", int(rng.integers(3, 6)), 1_600_000_000 + t])
    return planted
