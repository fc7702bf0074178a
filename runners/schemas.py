"""Request and response bodies of every Folio endpoint (pydantic; the examples show up in /docs).

Each endpoint takes one of these as its whole JSON body. Validation failures are 400s that name the
field and the rule (BentoML's ValidationError handler).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runners.settings import PRECISIONS
from runners.store import EVENTS

UserId = Field(min_length=1, max_length=128, pattern=r"^[\w.@:-]+$")
ItemId = Field(min_length=1, max_length=128)
Fallback = Literal["none", "onnxruntime", "popularity"]
EventName = Literal["view", "click", "add_to_cart", "purchase", "rate"]
assert set(PRECISIONS) == {"int8", "fp16", "fp32"} and set(EVENTS) == set(EventName.__args__)  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"user_id": "42", "k": 10, "exclude_seen": True}},
    )
    user_id: str = UserId
    k: int = Field(10, ge=1, le=100)
    exclude_seen: bool = True
    genres: list[str] | None = Field(None, max_length=50, description="only items with one of these genres")
    variant: str | None = Field(
        None,
        pattern=r"^[\w.-]{1,64}$",
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
    variant: str = "default"
    precision: str
    cold_start: bool
    fallback: Fallback
    cached: bool
    request_id: str


class SimilarRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"item_id": "50", "k": 5}})
    item_id: str = ItemId
    k: int = Field(10, ge=1, le=100)


class SimilarResponse(BaseModel):
    item_id: str
    items: list[Item]
    model_version: str
    request_id: str


class TrendingRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"k": 10, "genre": "Drama"}})
    k: int = Field(10, ge=1, le=100)
    genre: str | None = Field(None, max_length=64)


class TrendingResponse(BaseModel):
    items: list[Item]
    model_version: str
    request_id: str


class FeedbackEvent(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"user_id": "42", "item_id": "50", "event": "click"}},
    )
    user_id: str = UserId
    item_id: str = ItemId
    event: EventName
    value: float | None = Field(None, ge=-1e6, le=1e6, description="e.g. the rating of a `rate` event")
    ts: float | None = Field(None, ge=0, description="unix seconds; default: now")


class FeedbackBatch(_Strict):
    model_config = ConfigDict(
        extra="forbid",
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
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"user_id": "42"}})
    user_id: str = UserId


class ReloadRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {}})
    tag: str | None = Field(None, max_length=128, description="version to serve; default: the production one")


class ReloadResponse(BaseModel):
    model_version: str
    previous: str
    request_id: str


class ForgetResponse(BaseModel):
    user_id: str
    forgotten: bool
    model_version: str
    request_id: str
