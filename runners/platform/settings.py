"""Folio's serving configuration: one pydantic-settings class, environment prefix ``FOLIO_``.

Validated once at start-up; a wrong value fails with a message naming the variable (``load_settings``).
No secret has a default: ``FOLIO_API_KEYS`` holds sha256 hex digests of the keys, never the keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.version import PRECISIONS


class SettingsError(RuntimeError):
    """A FOLIO_* setting is invalid; the message names it and the rule."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOLIO_", extra="ignore")

    # what is served
    model_tag: str | None = Field(None, description="store tag to serve; default: the production version")
    precision: str = Field("int8", description="default ranker variant: int8 | fp16 | fp32")
    variants: str | None = Field(
        None, description="A/B variants: JSON or @path (see runners/serving/variants.py)"
    )
    model_watch_s: float = Field(5.0, ge=0, description="poll the store for a new production version; 0: off")
    new_books_per_list: int = Field(
        2, ge=0, le=50, description="at most this many books added after training in one /recommend answer"
    )
    model_max_age_s: float = Field(
        86400.0, gt=0, description="freshness budget: /info reports a served version older than this as stale"
    )
    coverage_window_s: float = Field(
        600.0, ge=10, le=7 * 86400, description="sliding window of folio_catalog_coverage_ratio, seconds"
    )
    catalog_poll_s: float = Field(
        0.25, gt=0, le=1.0, description="how often a worker checks for catalog changes made elsewhere"
    )
    drain_s: float = Field(5.0, ge=0, le=600, description="on SIGTERM: seconds of not-ready before shutdown")
    # components
    triton_url: str | None = Field(
        None, description="host:port of an external Triton (gRPC); unset: embedded"
    )
    triton_timeout_s: float = Field(0.5, gt=0, le=30)
    breaker_failures: int = Field(3, ge=1, le=1000)
    breaker_reset_s: float = Field(5.0, gt=0, le=3600)
    # admission and the state store's capacity (docs/reliability.md)
    max_in_flight: int = Field(
        16,
        ge=1,
        le=10_000,
        description="requests a worker serves at once; more get 503 with Retry-After at once (/recommend "
        "may use all of it, other routes 3/4)",
    )
    shed_loop_lag_s: float = Field(
        0.010,
        ge=0,
        le=10,
        description="refuse new requests (503 + Retry-After) while the worker's event loop has run this "
        "many seconds late on each of its last 3 wakes (5 ms apart); 0: off",
    )
    state_timeout_s: float = Field(
        0.5, gt=0, le=30, description="Redis socket timeout, and the longest wait for a pooled connection"
    )
    state_pool_size: int | None = Field(
        None, ge=1, le=100_000, description="Redis connections per worker; unset: 2 x max_in_flight + 16"
    )
    state_breaker_failures: int = Field(
        3, ge=1, le=1000, description="consecutive state-store failures that open its breaker"
    )
    state_breaker_reset_s: float = Field(
        2.0, gt=0, le=3600, description="seconds the state-store breaker stays open before one probe"
    )
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes (use Redis when > 1)")
    numeric_threads: int = Field(
        1, ge=1, le=256, description="BLAS / OpenMP threads per worker (scale with workers, not this)"
    )
    redis_url: str | None = Field(None, description="redis://...; unset: in-process state + local journal")
    state_dir: Path = Field(Path(".folio/state"), description="journal + embedded Triton work files")
    # local journal compaction (runners/state/compaction.py; docs/operations.md "Backups and restore")
    journal_compact_bytes: int = Field(
        64 * 2**20,
        ge=2**16,
        le=2**40,
        description="compact the local feedback journal at start-up once it is this large, and while "
        "serving each time it passes this size or doubles since the last compaction",
    )
    journal_keep_unexported: int = Field(
        1_000_000,
        ge=1000,
        le=10**9,
        description="journal lines a compaction keeps for the feedback export past its checkpoint (as "
        "Redis's stream keeps its newest 1,000,000): export at least that often",
    )
    # recommendation behaviour
    candidates: int | None = Field(
        None,
        ge=10,
        le=5000,
        description="candidates handed to the ranker; unset: the count the served version was trained on "
        "(its rank features assume it)",
    )
    cold_start_threshold: int = Field(5, ge=0, le=1000)
    max_per_genre: int = Field(
        100, ge=1, le=100, description="hard cap on items per primary genre in a top-k (100: no cap)"
    )
    diversity_penalty: float | None = Field(
        None,
        ge=0,
        le=100,
        description="genre diversity, in ranks per item already shown from the same genre (0: off; "
        "unset: the value the served version chose on validation; models/diversity.py)",
    )
    trending_half_life_s: float = Field(86400.0, ge=60, le=365 * 86400)
    max_history: int = Field(500, ge=1, le=100_000)
    # feedback accepted: timestamps within [now - max_age, now + max_skew]; events per user (token bucket)
    feedback_max_age_s: float = Field(
        365 * 86400.0,
        ge=60,
        le=100 * 365 * 86400.0,
        description="oldest accepted event ts, seconds before now",
    )
    feedback_max_skew_s: float = Field(
        300.0, ge=0, le=86400, description="how far ahead of the server's clock an event ts may be"
    )
    feedback_user_rps: float = Field(10.0, ge=0, le=1e6, description="events per second per user; 0: off")
    feedback_user_burst: int = Field(1000, ge=1, le=1_000_000, description="events a user may send at once")
    # cache
    cache_ttl_s: float = Field(300.0, ge=0, le=86400)
    l1_size: int = Field(10_000, ge=0, le=10_000_000)
    # cache warming (runners/serving/warmup.py): after a deploy (start-up, promotion, rollback), before it
    # takes traffic
    warm_users: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="precompute the default /recommend answer of this many most active users into the "
        "cache of a newly deployed version (at most FOLIO_L1_SIZE); 0: off",
    )
    warm_budget_s: float = Field(
        20.0,
        gt=0,
        le=600,
        description="the longest one warming runs: start-up readiness and a promotion's swap wait at most "
        "this long for it",
    )
    # security
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="sha256 hex digests of accepted API keys (JSON list or comma list)"
    )
    rate_limit_rps: float = Field(
        50.0, ge=0, le=1e6, description="per-key token refill rate; 0 turns rate limits off"
    )
    rate_limit_burst: int = Field(100, ge=1, le=1_000_000)
    user_hash_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="HMAC key for the forgotten-user set; unset: generated (state dir, or stored in Redis)",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, le=100_000_000)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IPs/CIDRs of reverse proxies whose X-Forwarded-For/-Proto are believed; empty: none",
    )
    request_head_timeout_s: float = Field(
        10.0, gt=0, le=300, description="seconds a connection may take to send a complete request head"
    )
    # tracing (runners/platform/tracing.py): BentoML's OpenTelemetry tracing, off by default
    tracing_exporter: Literal["none", "otlp"] = Field(
        "none", description="none: no spans exported; otlp: OTLP over HTTP to FOLIO_TRACING_ENDPOINT"
    )
    tracing_endpoint: str | None = Field(
        None, description="the collector's OTLP/HTTP URL, e.g. http://otel-collector:4318 (/v1/traces added)"
    )
    tracing_sample_rate: float = Field(
        0.01, ge=0, le=1, description="share of requests traced (a sampled traceparent header is followed)"
    )

    @model_validator(mode="after")
    def _tracing_endpoint(self) -> Settings:
        if self.tracing_exporter == "otlp" and not self.tracing_endpoint:
            raise ValueError("FOLIO_TRACING_EXPORTER=otlp needs FOLIO_TRACING_ENDPOINT (the collector's URL)")
        return self

    @field_validator("tracing_endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP over HTTP)")
        return v or None

    @model_validator(mode="after")
    def _decay_stays_finite(self) -> Settings:
        # a trending score is at most 2**(skew / half-life) times its weight (runners/state/protocol.py)
        if self.feedback_max_skew_s / self.trending_half_life_s > 64:
            raise ValueError("FOLIO_FEEDBACK_MAX_SKEW_S must be at most 64 x FOLIO_TRENDING_HALF_LIFE_S")
        return self

    @field_validator("rate_limit_rps", "feedback_user_rps")
    @classmethod
    def _rate(cls, v: float) -> float:
        if 0 < v < 1e-3:  # bucket expiry times must stay integers Redis can read
            raise ValueError("must be 0 (off) or at least 0.001 per second")
        return v

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v not in PRECISIONS:
            raise ValueError(f"must be one of {', '.join(PRECISIONS)}")
        return v

    @field_validator("api_keys", "trusted_proxies", mode="before")
    @classmethod
    def _list_from_text(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, v: list[str]) -> list[str]:
        for k in v:
            if len(k) != 64 or any(c not in "0123456789abcdef" for c in k.lower()):
                raise ValueError("each entry must be the sha256 hex digest of a key (see `hash_key`)")
        return [k.lower() for k in v]

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ValueError(f"{p!r} is not an IP address or CIDR network ('*' is refused)") from None
        return v

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: str | None) -> str | None:
        from runners.serving.variants import VariantConfig

        try:
            VariantConfig.parse(v, "int8", None)
        except (OSError, ValueError) as exc:
            raise ValueError(f"not a valid variants config: {exc}") from None
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v or None

    def public_hash(self) -> str:
        """A short hash of the configuration for /info (secrets hashed already, URLs without passwords)."""
        data = self.model_dump(mode="json")
        data["redis_url"] = bool(self.redis_url)
        data["user_hash_key"] = bool(self.user_hash_key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def hash_key(key: str) -> str:
    """What FOLIO_API_KEYS holds for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            (f"FOLIO_{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "") + e["msg"]
            for e in exc.errors()
        )
        raise SettingsError(f"invalid Folio configuration: {problems}") from None
