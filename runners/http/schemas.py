"""Request and response bodies of every Folio endpoint (pydantic; the examples show up in /docs).

Each endpoint takes one of these as its whole JSON body. Validation failures are 400s that name the
field and the rule (BentoML's ValidationError handler).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.events import EventName
from runners.stages.ranking import Fallback
from runners.state import catalog
from runners.state.protocol import MAX_ID_CHARS, MAX_VALUE, TS_MAX

# ASCII classes, not \w: JSON Schema's \w (ECMA) is ASCII while Python's and pydantic's are Unicode, so
# a document with \w would not say what the server accepts (the fuzz suite found "eÕ" accepted).
UserId = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_.@:-]+$")
ItemId = Field(min_length=1, max_length=MAX_ID_CHARS)
Genre = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    """Request bodies: unknown fields are refused, and so are NaN / Infinity and values of another JSON
    type than the schema's (no `0` for false, no `"5"` for 5). Subclasses merge this config."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class RecommendRequest(_Strict):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user_id": "42", "k": 10, "exclude_seen": True}},
    )
    user_id: str = UserId
    k: int = Field(10, ge=1, le=100)
    exclude_seen: bool = True
    genres: list[Genre] | None = Field(
        None,
        max_length=50,
        description="only items with one of these genres (at most 50, 64 characters each)",
    )
    variant: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="int8, fp16, fp32 or an A/B variant's name; default: the user's variant",
    )


class Item(BaseModel):
    item_id: str
    title: str
    authors: str
    genres: list[str]
    year: int | None = None
    score: float
    reason: str


class RecommendResponse(BaseModel):
    items: list[Item]
    model_version: str
    variant: str  # the A/B variant that served the user
    precision: str
    cold_start: bool
    fallback: Fallback
    cached: bool
    request_id: str


# The fields of a /recommend answer that belong to the request, not to the recommendation: a cached
# answer is stored without them and served with them prepended (service.py).
PER_REQUEST_FIELDS = {"cached", "request_id", "variant"}


class SimilarRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"example": {"item_id": "50", "k": 5}})
    item_id: str = ItemId
    k: int = Field(10, ge=1, le=100)


class SimilarResponse(BaseModel):
    item_id: str
    items: list[Item]
    model_version: str
    request_id: str


class TrendingRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"example": {"k": 10, "genre": "Drama"}})
    k: int = Field(10, ge=1, le=100)
    genre: Genre | None = None


class TrendingResponse(BaseModel):
    items: list[Item]
    model_version: str
    request_id: str


class FeedbackEvent(_Strict):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user_id": "42", "item_id": "50", "event": "click"}},
    )
    user_id: str = UserId
    item_id: str = ItemId
    event: EventName
    value: float | None = Field(
        None, ge=-MAX_VALUE, le=MAX_VALUE, description="e.g. the rating of a `rate` event"
    )
    ts: float | None = Field(
        None,
        gt=0,
        le=TS_MAX,
        description="unix seconds; default: now. Must lie within FOLIO_FEEDBACK_MAX_AGE_S (default one year) "
        "before the server's clock and FOLIO_FEEDBACK_MAX_SKEW_S (default 300 s) after it, else 400",
    )


class FeedbackBatch(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"events": [{"user_id": "42", "item_id": "50", "event": "rate", "value": 5}]}
        },
    )
    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class FeedbackResponse(BaseModel):
    accepted: int
    durable: Literal["journal", "redis"]
    model_version: str
    request_id: str


class ForgetRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"example": {"user_id": "42"}})
    user_id: str = UserId


class ReloadRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"example": {}})
    tag: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,63}(:[A-Za-z0-9_.-]{1,63})?$",
        description="version to serve, `folio:<version>` or `<version>`; default: the production one",
    )


class ReloadResponse(BaseModel):
    model_version: str
    previous: str
    request_id: str


class ForgetResponse(BaseModel):
    user_id: str
    forgotten: bool
    model_version: str
    request_id: str


class BookIn(_Strict):
    """A book to add, or the full corrected record of a known one (every field replaced)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "item_id": "new-1",
                "title": "The Left Hand of Darkness",
                "authors": "Ursula K. Le Guin",
                "genres": ["science-fiction", "classics"],
                "year": 1969,
                "description": "An envoy on a winter planet.",
            }
        },
    )
    item_id: str = ItemId
    title: str = Field(min_length=1, max_length=catalog.MAX_TITLE_CHARS, pattern=catalog.NOT_BLANK)
    authors: str = Field("", max_length=catalog.MAX_AUTHORS_CHARS)
    genres: list[
        Annotated[str, Field(min_length=1, max_length=catalog.MAX_GENRE_CHARS, pattern=catalog.NOT_BLANK)]
    ] = Field(default_factory=list, max_length=catalog.MAX_GENRES)
    year: int | None = Field(None, ge=catalog.YEAR_MIN, le=catalog.YEAR_MAX)
    description: str = Field("", max_length=catalog.MAX_DESCRIPTION_CHARS)


class CatalogBooks(_Strict):
    model_config = ConfigDict(
        json_schema_extra={"example": {"books": [BookIn.model_config["json_schema_extra"]["example"]]}},  # type: ignore[index]
    )
    books: list[BookIn] = Field(min_length=1, max_length=catalog.MAX_CHANGES)


class CatalogItems(_Strict):
    model_config = ConfigDict(json_schema_extra={"example": {"item_ids": ["50"]}})
    item_ids: list[Annotated[str, ItemId]] = Field(min_length=1, max_length=catalog.MAX_CHANGES)


class CatalogResponse(BaseModel):
    revision: int = Field(description="the catalog revision after the change (0: never changed)")
    changed: int = Field(description="changes written by this request")
    withdrawn: int = Field(description="books withdrawn now, in all")
    added_or_corrected: int = Field(description="books with a record set at runtime, in all")
    model_version: str
    request_id: str
