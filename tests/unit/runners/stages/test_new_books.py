"""runners/stages/new_books.py: books added after training, encoded from content, placed in answers."""

from __future__ import annotations

import numpy as np

from models.content import BookRecord, ContentEncoder
from runners.stages.new_books import NewBooks, place
from runners.state.catalog import Book


def test_a_new_book_takes_the_rank_its_retrieval_score_would_have() -> None:
    ranked = np.array([10, 11, 12, 13], np.int64)  # after the ranker
    scores = np.array([4.0, 3.0, 2.0, 1.0], np.float32)
    retrieval = np.array([0.9, 0.7, 0.5, 0.3], np.float32)  # the candidates' retrieval scores
    out, out_scores = place(
        ranked, scores, retrieval, np.array([0.6, 0.95, 0.1]), np.array([100, 101, 102]), 2
    )
    # 0.95 beats every candidate: first; 0.6 beats two: third (after the first insertion); 0.1: over the cap
    assert out.tolist() == [101, 10, 11, 100, 12, 13]
    assert out_scores.tolist() == [4.0, 4.0, 3.0, 2.0, 2.0, 1.0]  # still ordered
    assert place(ranked, scores, retrieval, np.array([0.6]), np.array([100]), 0)[0] is ranked
    last, _ = place(ranked, scores, retrieval, np.array([0.0]), np.array([100]), 1)
    assert last.tolist() == [10, 11, 12, 13, 100]


def encoder() -> ContentEncoder:
    """Two clusters of warm books, told apart by genre and author."""
    records = [BookRecord(f"Dragon {i}", "Ann Wyrm", ("fantasy",)) for i in range(20)]
    records += [BookRecord(f"War {i}", "Bo Annal", ("history",)) for i in range(20)]
    vectors = np.zeros((40, 4), np.float32)
    vectors[:20, 0], vectors[20:, 1] = 1.0, 1.0
    return ContentEncoder.fit(records, vectors)


def test_new_books_are_encoded_once_and_withdrawn_ones_left_out() -> None:
    enc = encoder()
    books = {
        "n1": Book("n1", "Dragon Rising", "Ann Wyrm", ("fantasy",)),
        "n2": Book("n2", "War Again", "Bo Annal", ("history",)),
    }
    cache: dict[Book, np.ndarray] = {}
    new = NewBooks.encode(enc, books, frozenset({"n2"}), n_items=40, dim=4, cache=cache)
    assert [b.item_id for b in new.books] == ["n1"] and new.book(40).item_id == "n1"
    assert int(np.argmax(new.vectors[0])) == 0  # lands in the fantasy cluster
    both = NewBooks.encode(enc, books, frozenset(), n_items=40, dim=4, cache=cache)
    assert len(cache) == 2 and int(np.argmax(both.vectors[1])) == 1
    assert both.eligible(frozenset({"n1"}), None).tolist() == [False, True]
    assert both.eligible(frozenset(), ["Fantasy"]).tolist() == [True, False]
    assert len(NewBooks.encode(None, books, frozenset(), 40, 4, {})) == 0  # an older version: no encoder
