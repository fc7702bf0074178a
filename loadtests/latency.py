"""Latency of a single cache-miss /recommend, broken down by stage.

    python -m loadtests.latency [--tag TAG] [--requests 300] [--precision int8] [--url http://127.0.0.1:3000]

In process: the served pipeline (retrieve the version's ``FOLIO_CANDIDATES``, rank on the embedded
tritonserver over gRPC, rules, top 10) for distinct known users, one request at a time, result cache
off, after a warm-up. Prints p50/p95/p99 per stage and in total. With ``--url`` it also times the same
requests end to end over HTTP against a running service (give users it has not cached).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from models.version import PRECISIONS
from runners.http.schemas import RecommendRequest, RecommendResponse
from runners.platform.metrics import STAGE_TRACE
from runners.platform.settings import Settings
from runners.platform.threads import limit_numeric_threads
from runners.stages import served_model
from runners.stages.pipeline import Recommender
from runners.stages.ranking import RankingStage
from runners.state.local import LocalState

STAGES = ("cache", "history", "retrieval", "ranking", "rules")


def table(rows: dict[str, list[float]]) -> str:
    out = ["| stage | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
    for name, values in rows.items():
        p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
        out.append(f"| {name} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} |")
    return "\n".join(out)


async def in_process(args: argparse.Namespace) -> list[str]:
    settings = Settings(model_tag=args.tag, precision=args.precision, cache_ttl_s=0)
    limit_numeric_threads(settings.numeric_threads)  # as service.py does (FOLIO_NUMERIC_THREADS)
    model = served_model.load(served_model.resolve(settings.model_tag))
    users = [u for u, h in model.train_histories.items() if len(h) >= settings.cold_start_threshold]
    with tempfile.TemporaryDirectory() as tmp:
        state = LocalState(Path(tmp) / "journal.jsonl")
        ranking = RankingStage(
            model.ranker, triton_url=None, default_precision=args.precision, work_dir=Path(tmp)
        )
        await ranking.start()
        try:
            pipeline = Recommender(settings, model, state, ranking)
            for user in users[:50]:  # warm-up
                await pipeline.recommend(RecommendRequest(user_id=user), args.precision, "latency", "warmup")
            rows: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
            fallbacks = set()
            for user in users[50 : 50 + args.requests]:
                trace: dict[str, float] = {}
                STAGE_TRACE.set(trace)
                start = time.perf_counter()
                response = await pipeline.recommend(
                    RecommendRequest(user_id=user), args.precision, "latency", "latency"
                )
                rows["total"].append(time.perf_counter() - start)
                fallbacks.add(response.fallback if isinstance(response, RecommendResponse) else "cached")
                for s in STAGES:
                    rows[s].append(trace.get(s, 0.0))
            STAGE_TRACE.set(None)
        finally:
            await ranking.close()
    print(
        f"model {model.tag}, {len(rows['total'])} requests, {settings.candidates} candidates, "
        f"precision {args.precision}, fallbacks seen: {sorted(fallbacks)}"
    )
    print(table(rows))
    return users[50 : 50 + args.requests]


def over_http(url: str, users: list[str], precision: str) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        times = []
        for user in users:
            start = time.perf_counter()
            r = client.post("/recommend", json={"user_id": user, "variant": precision})
            times.append(time.perf_counter() - start)
            r.raise_for_status()
    print(f"\nover HTTP ({url}), {len(times)} requests:")
    print(table({"end to end": times}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default=None, help="model store tag (default: production)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--precision", default="int8", choices=PRECISIONS)
    parser.add_argument("--url", default=None, help="also time these requests against a running service")
    args = parser.parse_args()
    users = asyncio.run(in_process(args))
    if args.url:
        over_http(args.url, users, args.precision)


if __name__ == "__main__":
    main()
