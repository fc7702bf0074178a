"""Locust scenarios against a running Folio (any base URL).

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s --csv out/mix --host http://127.0.0.1:3000

The default user class, ``FolioMix``, is a realistic mix: 70% /recommend for known users drawn with Zipf
popularity (the most active readers come back most), 10% /recommend for cold users, 10% /similar,
5% /trending, 5% /feedback. Each request carries a fresh ``X-Request-ID``; ``FOLIO_API_KEY`` adds
``Authorization: Bearer``. Known user and item ids come from ``FOLIO_LOAD_USERS`` / ``FOLIO_LOAD_ITEMS``
(comma-separated, or a ``@file`` with one id a line), else from the local store's production version.
Single-endpoint classes (``RecommendMiss``, ``RecommendHit``, ``BarePing``) serve the benchmarks;
``FOLIO_LOAD_RPS_PER_USER`` paces every user (offered load = users x rate).
"""

from __future__ import annotations

import json
import os
import random
import sys
import uuid
from pathlib import Path

import numpy as np
from locust import FastHttpUser, constant, constant_throughput, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `locust -f` from anywhere
from loadtests.population import HIT_USERS, population


def _pacing():
    """FOLIO_LOAD_RPS_PER_USER fixes each user's rate (open-ish loop at users x rate); else no wait."""
    rate = os.environ.get("FOLIO_LOAD_RPS_PER_USER")
    return constant_throughput(float(rate)) if rate else constant(0)


class _Folio(FastHttpUser):
    abstract = True
    wait_time = _pacing()

    def headers(self) -> dict[str, str]:
        h = {"X-Request-ID": uuid.uuid4().hex, "Content-Type": "application/json"}
        if key := os.environ.get("FOLIO_API_KEY"):
            h["Authorization"] = f"Bearer {key}"
        return h

    def post(self, route: str, body: dict, name: str | None = None) -> None:
        self.client.post(route, data=json.dumps(body), headers=self.headers(), name=name or route)

    def known_user(self) -> str:
        users, p, _ = population()
        return users[int(np.random.choice(len(users), p=p))]

    def item(self) -> str:
        return random.choice(population()[2])


class FolioMix(_Folio):
    @task(70)
    def recommend_known(self) -> None:
        self.post("/recommend", {"user_id": self.known_user(), "k": 10}, name="/recommend known")

    @task(10)
    def recommend_cold(self) -> None:
        self.post("/recommend", {"user_id": f"cold-{uuid.uuid4().hex[:12]}", "k": 10}, name="/recommend cold")

    @task(10)
    def similar(self) -> None:
        self.post("/similar", {"item_id": self.item(), "k": 10})

    @task(5)
    def trending(self) -> None:
        self.post("/trending", {"k": 10})

    @task(5)
    def feedback(self) -> None:
        event = random.choice(["view", "click", "add_to_cart", "purchase"])
        self.post("/feedback", {"user_id": self.known_user(), "item_id": self.item(), "event": event})


class RecommendMiss(_Folio):
    """Every request a cache miss (serve with FOLIO_CACHE_TTL_S=0): retrieve, rank on Triton, top 10."""

    @task
    def recommend(self) -> None:
        users = population()[0]
        self.post("/recommend", {"user_id": random.choice(users), "k": 10})


class RecommendHit(_Folio):
    """Every request a cache hit once warm: a few users, asked again and again."""

    @task
    def recommend(self) -> None:
        self.post("/recommend", {"user_id": random.choice(population()[0][:HIT_USERS]), "k": 10})


class BarePing(_Folio):
    """The ceiling: loadtests/bare_service.py's constant endpoint."""

    @task
    def ping(self) -> None:
        self.post("/ping", {})
