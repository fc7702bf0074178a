"""A/B variants: which model version and ranker precision serve which user.

``FOLIO_VARIANTS`` holds JSON (inline, or ``@path/to/file.json``)::

    {"salt": "exp-7",
     "variants": [
        {"name": "control",   "model": "production",     "precision": "int8", "share": 0.9},
        {"name": "treatment", "model": "folio:abc123",   "precision": "fp16", "share": 0.1},
        {"name": "candidate", "model": "folio:def456",   "precision": "int8", "shadow": true}]}

Served variants' shares sum to 1. A user's variant is a stable hash of (salt, user_id): the same user
always lands in the same variant, across workers, replicas and restarts, until the salt or the shares
change. A ``shadow`` variant serves nobody: it scores a sample of the requests in the background and
records how far its top-k agrees with what was served. Without ``FOLIO_VARIANTS`` there is one variant,
``default`` (production, ``FOLIO_PRECISION``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.version import Precision

PRODUCTION = "production"


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = PRODUCTION  # a store tag, or "production" (follows promote / rollback)
    precision: Precision = "int8"
    share: float = Field(0.0, ge=0.0, le=1.0)
    shadow: bool = False


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    salt: str = ""
    shadow_sample: float = Field(1.0, ge=0.0, le=1.0, description="share of requests a shadow also scores")
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _shares(self) -> VariantConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        served = [v for v in self.variants if not v.shadow]
        if not served:
            raise ValueError("at least one variant must serve traffic (shadow: false)")
        if abs(sum(v.share for v in served) - 1.0) > 1e-6:
            raise ValueError(
                f"shares of the served variants must sum to 1, not {sum(v.share for v in served)}"
            )
        if any(v.shadow and v.share for v in self.variants):
            raise ValueError("a shadow variant takes no share")
        return self

    @classmethod
    def parse(cls, text: str | None, default_precision: str, default_model: str | None) -> VariantConfig:
        if not text:
            model = default_model or PRODUCTION
            return cls(
                variants=[Variant(name="default", model=model, precision=default_precision, share=1.0)]
            )
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        return cls.model_validate(json.loads(text))

    @property
    def served(self) -> list[Variant]:
        return [v for v in self.variants if not v.shadow]

    @property
    def shadows(self) -> list[Variant]:
        return [v for v in self.variants if v.shadow]

    def by_name(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


def unit_hash(salt: str, key: str) -> float:
    """A stable, uniform number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Assigner:
    def __init__(self, config: VariantConfig) -> None:
        self.config = config
        self._names = [v.name for v in config.served]
        self._edges: list[float] = []
        total = 0.0
        for v in config.served:
            total += v.share
            self._edges.append(total)

    def assign(self, user_id: str) -> Variant:
        x = unit_hash(self.config.salt, user_id)
        i = min(bisect.bisect_right(self._edges, x), len(self._names) - 1)
        return self.config.served[i]

    def sampled_for_shadow(self, request_id: str) -> bool:
        return unit_hash("shadow", request_id) < self.config.shadow_sample
