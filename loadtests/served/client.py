"""The HTTP client of the served measurements: POSTs that retry on 429/503 within a budget, the lists
of /recommend and /similar for many users, books added through the admin API, the service's stats."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from runners.http.schemas import RecommendResponse, SimilarResponse

MAX_FAILED_SHARE = 0.01


@dataclass
class Served:
    lists: dict[str, list[str]] = field(default_factory=dict)  # user_id -> recommended item ids
    failures: Counter[str] = field(default_factory=Counter)  # status or error -> count
    fallback: Counter[str] = field(default_factory=Counter)
    cold_start: int = 0
    cached: int = 0
    model_versions: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    precisions: Counter[str] = field(default_factory=Counter)
    retries_429: int = 0
    retries_503: int = 0


def retry_after(response: httpx.Response, default_s: float = 1.0) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", default_s)), 0.05), 60.0)
    except ValueError:  # an HTTP-date: not worth parsing here
        return default_s


@dataclass(frozen=True)
class Posted:
    response: httpx.Response | None  # the first answer that is not a 429 or a shed 503; None: none came
    failure: str | None  # why none came: the httpx error's class name, or "429 x<max_429>"
    retries_429: int  # 429 answers received (each waited out per Retry-After)
    retries_503: int = 0  # 503s with Retry-After (admission control shed it; a busy state store)


async def post_retrying(
    client: httpx.AsyncClient,
    path: str,
    body: Any,
    max_429: int = 50,
    headers: dict[str, str] | None = None,
) -> Posted:
    """POST ``body`` as JSON to ``path``, waiting out (Retry-After) up to ``max_429`` answers that ask
    for a retry: 429, and 503 with Retry-After (shed by admission control, or the state store busy; a
    503 without it, e.g. the state store unreachable, is an answer)."""
    retries = {429: 0, 503: 0}
    for _ in range(max_429):
        try:
            r = await client.post(path, json=body, headers=headers)
        except httpx.HTTPError as e:
            return Posted(None, type(e).__name__, retries[429], retries[503])
        if r.status_code != 429 and not (r.status_code == 503 and "retry-after" in r.headers):
            return Posted(r, None, retries[429], retries[503])
        retries[r.status_code] += 1
        await asyncio.sleep(retry_after(r))
    return Posted(None, f"429 x{max_429}", retries[429], retries[503])


async def fetch_lists(
    url: str,
    users: Sequence[str],
    k: int,
    api_key: str | None,
    concurrency: int,
    max_429: int = 50,
    transport: httpx.AsyncBaseTransport | None = None,
    variant: str | None = None,
) -> Served:
    """POST /recommend for every user, at most ``concurrency`` in flight; 429s wait Retry-After.
    ``variant``: the ranker variant (int8, fp16, fp32) or A/B arm to ask for (None: the user's)."""
    served = Served()
    sem = asyncio.Semaphore(concurrency)
    headers = {"x-api-key": api_key} if api_key else {}
    request: dict[str, Any] = {"k": k, "exclude_seen": True} | ({"variant": variant} if variant else {})

    async def one(client: httpx.AsyncClient, user: str) -> None:
        async with sem:
            out = await post_retrying(client, "/recommend", {"user_id": user, **request}, max_429)
            served.retries_429 += out.retries_429
            served.retries_503 += out.retries_503
            if out.response is None:
                served.failures[out.failure or "no answer"] += 1
                return
            r = out.response
            if r.status_code != 200:
                served.failures[str(r.status_code)] += 1
                return
            body = RecommendResponse.model_validate_json(r.content)
            served.lists[user] = [item.item_id for item in body.items]
            served.fallback[body.fallback] += 1
            served.cold_start += body.cold_start
            served.cached += body.cached
            served.model_versions[body.model_version] += 1
            served.variants[body.variant] += 1
            served.precisions[body.precision] += 1

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0, transport=transport) as client:
        await asyncio.gather(*(one(client, u) for u in users))
    return served


def service_stats(served: Served, requests: int) -> dict[str, Any]:
    ok = len(served.lists)

    def share(n: int) -> float | None:
        return n / ok if ok else None

    return {
        "requests": requests,
        "succeeded": ok,
        "failed": sum(served.failures.values()),
        "failures": dict(served.failures),
        "retries_429": served.retries_429,
        "retries_503": served.retries_503,
        "fallback_share": share(ok - served.fallback["none"]),
        "fallback": dict(served.fallback),
        "cold_start_share": share(served.cold_start),
        "cached_share": share(served.cached),
        "model_versions": dict(served.model_versions),
        "variants": dict(served.variants),
        "precisions": dict(served.precisions),
    }


ADMIN_BATCH = 1000  # runners.state.catalog.MAX_CHANGES: the most books /admin/catalog/books takes at once


async def add_books(url: str, books: list[dict[str, Any]], api_key: str) -> list[dict[str, Any]]:
    """POST the books to /admin/catalog/books in batches; the answers. SystemExit on a refusal."""
    answers = []
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        for start in range(0, len(books), ADMIN_BATCH):
            out = await post_retrying(
                client, "/admin/catalog/books", {"books": books[start : start + ADMIN_BATCH]}, headers=headers
            )
            if out.response is None or out.response.status_code != 200:
                why = (
                    out.failure if out.response is None else f"{out.response.status_code} {out.response.text}"
                )
                raise SystemExit(f"/admin/catalog/books refused books {start}..: {why}")
            answers.append(out.response.json())
    return answers


@dataclass
class SimilarServed:
    lists: dict[str, list[str]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    retries_429: int = 0
    retries_503: int = 0


async def fetch_similar(
    url: str, items: Sequence[str], k: int, api_key: str | None, concurrency: int
) -> SimilarServed:
    served = SimilarServed()
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def one(client: httpx.AsyncClient, item: str) -> None:
        async with sem:
            out = await post_retrying(client, "/similar", {"item_id": item, "k": k})
            served.retries_429 += out.retries_429
            served.retries_503 += out.retries_503
            if out.response is None:
                served.failures[out.failure or "no answer"] += 1
            elif out.response.status_code != 200:
                served.failures[str(out.response.status_code)] += 1
            else:
                body = SimilarResponse.model_validate_json(out.response.content)
                served.lists[item] = [i.item_id for i in body.items]

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0) as client:
        await asyncio.gather(*(one(client, i) for i in items))
    return served
