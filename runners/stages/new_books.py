"""Books added at runtime that the served version never trained on: item cold start.

A new book's vector comes from the version's content encoder (models/content.py: title, authors, genres,
year and description into the retrieval item space), computed when the catalog changes (a fraction of a
millisecond a book; a book already encoded is not encoded again). New books are in neither the FAISS
index nor the ranker's item tables (they live inside the ONNX graph), so they take a side path that
needs neither:

* ``/recommend`` (a user with a history): a new book scores its cosine with the user vector, which is the
  retrieval score a trained candidate gets. A new book that would be the r-th best of the user's
  retrieval candidates is placed r-th in the ranked list; at most ``per_list`` new books per answer.
* ``/similar``: the neighbours of a new book are the trained books nearest its content vector. New books
  are listed as nobody's neighbours: content vectors sit closer to one another than trained books do and
  would crowd every answer (served on ML-1M, 8.6 of a new book's 10 neighbours were other new books).

Internal indices: a new book is ``n_items + j`` (j: its row here), so the rules downstream (diversity,
the answer's records) treat it like any other index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from models.content import BookRecord, ContentEncoder
from runners.state.catalog import Book


@dataclass(frozen=True)
class NewBooks:
    offset: int  # index of the first new book (the version's n_items)
    books: tuple[Book, ...]
    vectors: np.ndarray  # float32 [m, dim], L2-normalized

    @classmethod
    def none(cls, n_items: int, dim: int) -> NewBooks:
        return cls(n_items, (), np.zeros((0, dim), np.float32))

    @classmethod
    def encode(
        cls,
        encoder: ContentEncoder | None,
        books: Mapping[str, Book],
        withdrawn: frozenset[str],
        n_items: int,
        dim: int,
        cache: dict[Book, np.ndarray],
    ) -> NewBooks:
        """The servable new books (not withdrawn), encoded (``cache`` keeps vectors across changes)."""
        if encoder is None:  # a version saved before content encoders: new books are shown, never recommended
            return cls.none(n_items, dim)
        kept = tuple(b for item, b in sorted(books.items()) if item not in withdrawn)
        todo = [b for b in kept if b not in cache]
        if todo:
            records = [BookRecord(b.title, b.authors, b.genres, b.year, b.description or None) for b in todo]
            for b, v in zip(todo, encoder.encode(records), strict=True):
                cache[b] = v
        vectors = np.stack([cache[b] for b in kept]) if kept else np.zeros((0, dim), np.float32)
        return cls(n_items, kept, vectors.astype(np.float32))

    def __len__(self) -> int:
        return len(self.books)

    def book(self, index: int) -> Book:
        return self.books[index - self.offset]

    def eligible(self, seen_ids: frozenset[str], genres: list[str] | None) -> np.ndarray:
        """bool [m]: not read by the user and in one of ``genres`` (when given)."""
        want = {g.casefold() for g in genres or ()}
        return np.array(
            [
                b.item_id not in seen_ids and (not want or any(g.casefold() in want for g in b.genres))
                for b in self.books
            ],
            dtype=bool,
        )


def place(
    ranked: np.ndarray,
    ranked_scores: np.ndarray,
    candidate_retrieval: np.ndarray,
    new_scores: np.ndarray,
    new_indices: np.ndarray,
    per_list: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert the best ``per_list`` new books into ``ranked`` (trained indices, best first, with their
    ranked scores) at the rank their retrieval score (``new_scores``) would have among the candidates'
    (``candidate_retrieval``). A new book's score is that of the item it is placed before (so a list's
    scores stay ordered). Returns (indices, scores)."""
    if per_list <= 0 or new_scores.size == 0:
        return ranked, ranked_scores
    best = np.argsort(-new_scores, kind="stable")[:per_list]
    descending = -np.sort(-candidate_retrieval)
    slots = np.searchsorted(-descending, -new_scores[best], side="right")  # candidates scoring higher
    out, scores = ranked.tolist(), ranked_scores.tolist()
    for k, j in enumerate(np.argsort(slots, kind="stable")):
        at = min(int(slots[j]) + k, len(out))
        score = scores[at] if at < len(scores) else (scores[-1] if scores else 0.0)
        out.insert(at, int(new_indices[best[j]]))
        scores.insert(at, score)
    return np.asarray(out, np.int64), np.asarray(scores, np.float32)
