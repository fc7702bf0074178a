"""Benchmark (not a test): the model watcher's poll, before (every version listed as a bentoml.Model)
and after (registry.production_tag), on a temporary store of N versions with realistically sized
model.yaml files. Prints time per poll (wall, and thread CPU time, which for this Python code is about
the GIL hold) and the event loop's scheduling lag while a poll runs in asyncio.to_thread, polled
back to back (the watcher polls every 5 s: the worst stall per poll is what serving feels).

    python -m loadtests.registry_poll_bench [--versions 20] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="folio-bench-bentoml-"))

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

from models import registry

MODELS = ["MostPop", "ItemKNN", "EASE", "Folio (retrieve + rank)", "retrieval only", "ranker only"]
METRICS = ["recall@10", "ndcg@10", "mrr@10", "hit@10", "precision@10", "recall@50", "recall@100"]
METRICS += ["coverage@10", "diversity@10", "novelty@10"]


def metadata(seed: int) -> dict[str, Any]:
    """Shaped like a trained version's (about 8 kB of YAML): metrics per model and split, parity,
    provenance and every artifact's sha256."""
    x = (seed + 1) / 7919

    def scores(k: int) -> dict[str, float]:
        return {m: (x * (i + 3) * (k + 1)) % 1 for i, m in enumerate(METRICS)}

    return {
        "dataset": "ml1m-books",
        "source": {"books": "/data/books.csv", "ratings": "/data/ratings.csv", "books_sha256": "ab" * 32},
        "seed": seed,
        "git_commit": "c0ffee" * 6 + "abcd",
        "test": {m: scores(k) for k, m in enumerate(MODELS)},
        "validation": {m: scores(k + 9) for k, m in enumerate(MODELS)},
        "parity": {"max_abs": {"int8": x, "fp16": x / 2, "fp32": x / 3}, "top10_agreement": {"int8": 0.99}},
        "sha256": {f"artifact_{i}.bin": f"{i:02d}" * 32 for i in range(14)},
    }


def build_store(root: Path, versions: int) -> list[str]:
    BentoMLContainer.model_store.set(ModelStore(root))
    tags = []
    for i in range(versions):
        with bentoml.models.create(
            registry.MODEL_NAME, labels={"stage": "candidate", "dataset": "ml1m-books"}, metadata=metadata(i)
        ) as model:
            pass
        tags.append(str(model.tag))
    for tag in tags[: versions // 2]:
        registry.promote(tag)  # a history of promotions, some retired
    old = time.time() - 60  # a store left alone for a minute: nothing changed since the last poll
    for f in (root / registry.MODEL_NAME).glob("*/model.yaml"):
        os.utime(f, (old, old))
    return tags


def old_production() -> bentoml.Model | None:
    """registry.production before this change."""
    prod = [m for m in registry._models() if m.info.labels.get("stage") == "production"]
    return prod[-1] if prod else None


def per_call(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(median wall ms, median thread CPU ms) over n calls."""
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpus.append((time.thread_time() - c) * 1e3)
        walls.append((time.perf_counter() - w) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


async def loop_lag(poll: Callable[[], Any] | None, seconds: float) -> tuple[float, float, int]:
    """(max lag ms, p99 lag ms, polls) of `await asyncio.sleep(0.001)` while `poll` runs in a thread."""
    lags: list[float] = []
    polls = 0
    stop = time.perf_counter() + seconds

    async def poller(fn: Callable[[], Any]) -> None:
        nonlocal polls
        while time.perf_counter() < stop:
            await asyncio.to_thread(fn)
            polls += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(poller(poll)) if poll is not None else None
    while time.perf_counter() < stop:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t - 0.001) * 1e3)
    if task is not None:
        await task
    lags.sort()
    return lags[-1], lags[int(len(lags) * 0.99)], polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="folio-bench-store-") as tmp:
        tags = build_store(Path(tmp), args.versions)
        size = statistics.mean(f.stat().st_size for f in Path(tmp).glob("*/*/model.yaml"))
        before = old_production()
        assert before is not None and registry.production_tag() == str(before.tag)
        production = tags[args.versions // 2 - 1]
        print(f"{args.versions} versions, model.yaml ~{size / 1024:.1f} kB each, production {production}")
        polls = {
            "before: production() listing every version": old_production,
            "after: production() (fast tag + one get)": registry.production,
            "after: production_tag()": registry.production_tag,
        }
        print(f"{'poll':48} {'wall ms':>8} {'CPU ms':>8}")
        for name, fn in polls.items():
            wall, cpu = per_call(fn, 20 if fn is old_production else 200)
            print(f"{name:48} {wall:8.3f} {cpu:8.3f}")
        yaml_file = Path(tmp, *tags[0].split(":"), "model.yaml")

        def one_changed() -> None:
            os.utime(yaml_file)  # a new stamp: this one file is parsed again
            registry.production_tag()

        wall, cpu = per_call(one_changed, 200)
        print(f"{'after: production_tag(), one model.yaml changed':48} {wall:8.3f} {cpu:8.3f}")
        print(f"\nevent-loop lag over {args.seconds:.0f} s, polling back to back in asyncio.to_thread")
        print(f"{'poll':48} {'max ms':>8} {'p99 ms':>8} {'polls':>6}")
        contenders: dict[str, Callable[[], Any] | None] = {"none": None, **polls}
        for name, poll in contenders.items():
            lag_max, lag_p99, n = asyncio.run(loop_lag(poll, args.seconds))
            print(f"{name:48} {lag_max:8.3f} {lag_p99:8.3f} {n:6d}")


if __name__ == "__main__":
    main()
