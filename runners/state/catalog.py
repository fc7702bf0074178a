"""Runtime catalog changes: books added or corrected, withdrawn and restored without retraining.

A served model version carries the catalog it was trained on. On top of it, the catalog log records
changes made through the admin API (``/admin/catalog/*``, ``python -m training catalog``):

    upsert    a book's record (title, authors, genres, year, description), new or corrected
    withdraw  the book must not be recommended, shown as similar or trending, nor take feedback
    restore   undoes a withdrawal

Every change gets the next *revision* (1, 2, ...). ``CatalogState`` is the result of applying the log:
the latest record of every upserted book and the set of withdrawn ids. It lives in the state store, so
every worker and replica sees the same one (each polls the revision: serving/fleet.py), and outside
the model, so it survives restarts and promotions; the next training run reads the log
(``changes``) and applies it to its dataset.

Two backends of one interface, as in the state store (runners/state/protocol.py): ``LocalCatalog``
(in-process, with an fsynced JSON-lines journal next to the state store's) and ``RedisCatalog``:
    catalog:rev       the revision (INCR)
    catalog:books     hash item id -> Book JSON
    catalog:withdrawn set of item ids
    catalog:log       stream, one entry per change (field "c" = change JSON, with its revision)
A change is validated (``Book`` and ``CatalogChange`` check every bound) before anything is written, is
applied atomically (one Lua script; one fsynced append), and a journal line that fails validation on
replay is skipped and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import redis.asyncio as aioredis

from runners.state.journal import JournalFile, read_journal
from runners.state.protocol import MAX_ID_CHARS, TS_MAX
from runners.state.redis_state import redis_errors

log = logging.getLogger(__name__)

Op = Literal["upsert", "withdraw", "restore"]
OPS: tuple[Op, ...] = ("upsert", "withdraw", "restore")
MAX_TITLE_CHARS = 512
MAX_AUTHORS_CHARS = 1024
MAX_DESCRIPTION_CHARS = 8192
MAX_GENRES = 32
MAX_GENRE_CHARS = 64
YEAR_MIN, YEAR_MAX = -3000, 2100
MAX_CHANGES = 1000  # changes in one request / one write


# "Not only spaces" means a character outside ASCII whitespace: a rule JSON Schema's pattern (NOT_BLANK)
# states the same way in every regex dialect (``\S`` does not: Python counts \x1c..\x1f as spaces,
# ECMA and pydantic's Rust regex do not).
ASCII_SPACES = " \t\n\r\f\v"
NOT_BLANK = r"[^ \t\n\r\f\v]"


def _text(name: str, value: object, limit: int, *, empty: bool) -> str:
    blank = isinstance(value, str) and not value.strip(ASCII_SPACES)
    if not isinstance(value, str) or len(value) > limit or (not empty and blank):
        rule = "a string" if empty else "a non-empty string (not only spaces)"
        raise ValueError(f"{name} must be {rule} of at most {limit} characters")
    return value


def _item_id(value: object) -> None:
    """The rule runners.state.protocol.Event applies to item ids: a non-empty string of bounded length."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ValueError(f"item_id must be a non-empty string of at most {MAX_ID_CHARS} characters")


@dataclass(frozen=True)
class Book:
    """A book's record as the catalog serves it. Construction checks every bound."""

    item_id: str
    title: str
    authors: str = ""
    genres: tuple[str, ...] = ()
    year: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _item_id(self.item_id)
        _text("title", self.title, MAX_TITLE_CHARS, empty=False)
        _text("authors", self.authors, MAX_AUTHORS_CHARS, empty=True)
        _text("description", self.description, MAX_DESCRIPTION_CHARS, empty=True)
        genres = tuple(self.genres)
        if len(genres) > MAX_GENRES:
            raise ValueError(f"genres: at most {MAX_GENRES}, got {len(genres)}")
        for g in genres:
            _text("each genre", g, MAX_GENRE_CHARS, empty=False)
        object.__setattr__(self, "genres", tuple(dict.fromkeys(genres)))
        year = self.year
        if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
            raise ValueError(f"year must be an integer or null, got {year!r}")
        if year is not None and not YEAR_MIN <= year <= YEAR_MAX:
            raise ValueError(f"year must be in [{YEAR_MIN}, {YEAR_MAX}], got {year}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Book:
        return cls(**{**d, "genres": tuple(d.get("genres") or ())})

    def record(self) -> dict[str, Any]:
        """The fields a served catalog entry has (training/artifacts.catalog_json's shape)."""
        return {
            "item_id": self.item_id,
            "title": self.title,
            "authors": self.authors,
            "genres": list(self.genres),
            "year": self.year,
        }


@dataclass(frozen=True)
class CatalogChange:
    """One entry of the log; ``book`` is set for upserts only."""

    op: Op
    item_id: str
    book: Book | None = None
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        _item_id(self.item_id)
        if (self.op == "upsert") != (self.book is not None):
            raise ValueError("an upsert carries a book, other changes none")
        if self.book is not None and self.book.item_id != self.item_id:
            raise ValueError(f"book {self.book.item_id!r} filed under item_id {self.item_id!r}")
        object.__setattr__(self, "ts", float(self.ts))
        if not 0 < self.ts <= TS_MAX:
            raise ValueError(f"ts must be unix seconds in (0, {TS_MAX:.0f}], got {self.ts!r}")

    def to_dict(self, revision: int) -> dict[str, Any]:
        return {"rev": revision, "op": self.op, "item_id": self.item_id, "ts": self.ts} | (
            {"book": asdict(self.book)} if self.book else {}
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> tuple[int, CatalogChange]:
        rev = d["rev"]
        if isinstance(rev, bool) or not isinstance(rev, int) or rev < 1:
            raise ValueError(f"rev must be a positive integer, got {rev!r}")
        book = Book.from_dict(d["book"]) if d.get("book") is not None else None
        return rev, cls(d["op"], d["item_id"], book, d["ts"])


@dataclass(frozen=True)
class CatalogState:
    """The log applied: every upserted book's latest record and the withdrawn ids, at ``revision``."""

    revision: int = 0
    books: Mapping[str, Book] = field(default_factory=dict)
    withdrawn: frozenset[str] = frozenset()

    def apply(self, revision: int, changes: Iterable[CatalogChange]) -> CatalogState:
        books, withdrawn = dict(self.books), set(self.withdrawn)
        for c in changes:
            if c.op == "upsert":
                assert c.book is not None
                books[c.item_id] = c.book
            elif c.op == "withdraw":
                withdrawn.add(c.item_id)
            else:
                withdrawn.discard(c.item_id)
        return CatalogState(revision, books, frozenset(withdrawn))


class CatalogLog(Protocol):
    kind: str

    async def append(self, changes: Sequence[CatalogChange]) -> int: ...  # -> the new revision
    async def revision(self) -> int: ...
    async def state(self) -> CatalogState: ...
    async def changes(self, after: int = 0) -> list[tuple[int, CatalogChange]]: ...
    async def close(self) -> None: ...


def _check(changes: Sequence[CatalogChange]) -> None:
    if not 1 <= len(changes) <= MAX_CHANGES:
        raise ValueError(f"1 to {MAX_CHANGES} changes at a time, got {len(changes)}")


class LocalCatalog:
    """One process: the state in memory, every change in an fsynced JSON-lines journal (replayed on start)."""

    kind = "local"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.skipped = 0  # journal lines that failed validation on replay
        self._state = CatalogState()
        self._lock = asyncio.Lock()
        self._replay()
        self._journal = JournalFile(self.path)

    def _replay(self) -> None:
        lines, torn = read_journal(self.path)
        self.skipped += torn
        for rev, change in self._parse(lines, warn=True):
            self._state = self._state.apply(rev, [change])

    def _parse(self, lines: list[bytes], *, warn: bool) -> Iterator[tuple[int, CatalogChange]]:
        """The valid changes of journal lines, in order; a bad line (or a revision that does not
        increase) is skipped, counted and logged when ``warn``."""
        last = 0
        for n, line in enumerate(lines, 1):
            try:
                rev, change = CatalogChange.from_dict(json.loads(line))
                if rev <= last:
                    raise ValueError(f"revision {rev} after {last}")
            except (ValueError, KeyError, TypeError) as exc:
                if warn:
                    self.skipped += 1
                    log.warning("catalog journal %s line %d unreadable, skipped: %s", self.path, n, exc)
                continue
            last = rev
            yield rev, change

    async def append(self, changes: Sequence[CatalogChange]) -> int:
        _check(changes)
        async with self._lock:
            first = self._state.revision + 1
            numbered = list(enumerate(changes, first))
            payload = "".join(json.dumps(c.to_dict(r)) + "\n" for r, c in numbered).encode()
            await asyncio.to_thread(self._journal.append, payload)
            self._state = self._state.apply(numbered[-1][0], changes)
            return self._state.revision

    async def revision(self) -> int:
        return self._state.revision

    async def state(self) -> CatalogState:
        return self._state

    async def changes(self, after: int = 0) -> list[tuple[int, CatalogChange]]:
        async with self._lock:  # no append in between: every line read is complete
            data = await asyncio.to_thread(self.path.read_bytes)
        return [(r, c) for r, c in self._parse(data.splitlines(), warn=False) if r > after]

    async def close(self) -> None:
        self._journal.close()


# KEYS: rev, books, withdrawn, log. ARGV: count, then (op, item id, change JSON without rev) per change.
# Returns the new revision. Each change's log entry carries its revision.
_APPLY = """
local n = tonumber(ARGV[1])
local rev = 0
for i = 0, n - 1 do
  local op, item, body = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  rev = redis.call('INCR', KEYS[1])
  if op == 'upsert' then
    redis.call('HSET', KEYS[2], item, cjson.encode(cjson.decode(body)['book']))
  elseif op == 'withdraw' then
    redis.call('SADD', KEYS[3], item)
  else
    redis.call('SREM', KEYS[3], item)
  end
  redis.call('XADD', KEYS[4], '*', 'c', body, 'rev', rev)
end
return rev
"""


class RedisCatalog:
    """The catalog log in Redis, shared by every worker and replica (module doc for the keys)."""

    kind = "redis"

    def __init__(self, client: aioredis.Redis, url: str, prefix: str = "folio:") -> None:
        self._r, self.url, self.prefix = client, url, prefix
        self._apply = self._r.register_script(_APPLY)

    def _k(self, name: str) -> str:
        return f"{self.prefix}catalog:{name}"

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.url)

    async def append(self, changes: Sequence[CatalogChange]) -> int:
        _check(changes)
        args: list[str | int] = [len(changes)]
        for c in changes:
            body = c.to_dict(0)
            del body["rev"]
            args += [c.op, c.item_id, json.dumps(body)]
        keys = [self._k(k) for k in ("rev", "books", "withdrawn", "log")]
        with self._guard():
            return int(await self._apply(keys=keys, args=args))

    async def revision(self) -> int:
        with self._guard():
            return int(await self._r.get(self._k("rev")) or 0)

    async def state(self) -> CatalogState:
        with self._guard():
            async with self._r.pipeline(transaction=True) as p:
                p.get(self._k("rev"))
                p.hgetall(self._k("books"))
                p.smembers(self._k("withdrawn"))
                rev, books, withdrawn = await p.execute()
        good: dict[str, Book] = {}
        for item, raw in cast(dict[str, str], books).items():
            try:
                good[item] = Book.from_dict(json.loads(raw))
            except (ValueError, KeyError, TypeError) as exc:  # written by something else: skip, never fail
                log.warning("catalog: unreadable book %r in redis skipped: %s", item, exc)
        return CatalogState(int(rev or 0), good, frozenset(str(w) for w in withdrawn))

    async def changes(self, after: int = 0) -> list[tuple[int, CatalogChange]]:
        out: list[tuple[int, CatalogChange]] = []
        start = "-"
        with self._guard():
            while True:
                rows = cast(
                    list[tuple[str, dict[str, str]]], await self._r.xrange(self._k("log"), start, count=1000)
                )
                for _, fields in rows:
                    if int(fields["rev"]) > after:
                        out.append(
                            CatalogChange.from_dict({**json.loads(fields["c"]), "rev": int(fields["rev"])})
                        )
                if len(rows) < 1000:
                    return out
                start = "(" + rows[-1][0]

    async def close(self) -> None:
        return None  # the client belongs to the state store


def open_catalog(state: object, journal_path: Path) -> CatalogLog:
    """The catalog log next to a state store: in its Redis, or a journal beside its local one."""
    from runners.state.redis_state import RedisState

    if isinstance(state, RedisState):
        return RedisCatalog(state.client, state.url, state.prefix)
    return LocalCatalog(journal_path)


@dataclass(frozen=True)
class CatalogView:
    """A ``CatalogState`` seen from one served model version: which of its positions are withdrawn, the
    corrected records of its books, and the books it does not know (added since it was trained)."""

    revision: int
    withdrawn_mask: np.ndarray  # bool [n_items]: positions not to recommend, show, or take feedback for
    withdrawn_ids: frozenset[str]
    overrides: Mapping[int, Book]  # position -> corrected record
    new_books: Mapping[str, Book]  # item id -> record, not in the version's catalog

    @classmethod
    def build(cls, state: CatalogState, position: Mapping[str, int], n_items: int) -> CatalogView:
        mask = np.zeros(n_items, dtype=bool)
        for item in state.withdrawn:
            if (pos := position.get(item)) is not None:
                mask[pos] = True
        overrides = {position[i]: b for i, b in state.books.items() if i in position}
        new = {i: b for i, b in state.books.items() if i not in position}
        return cls(state.revision, mask, state.withdrawn, overrides, new)

    def knows(self, item_id: str, position: Mapping[str, int]) -> bool:
        return item_id in position or item_id in self.new_books
