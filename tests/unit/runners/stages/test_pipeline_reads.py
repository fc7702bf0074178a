"""runners/stages/pipeline.py: what one /recommend asks the state store (one read of the user a request)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from models import registry
from runners.http.schemas import PER_REQUEST_FIELDS, RecommendRequest
from runners.platform.settings import Settings
from runners.stages import served_model
from runners.stages.pipeline import CachedResult, Recommender
from runners.stages.ranking import RankingStage, RankResult
from runners.state.local import LocalState
from runners.state.protocol import Event

READS = ("snapshot", "generation", "is_forgotten", "history", "cache_get")


class InProcessRanking(RankingStage):
    """Scores in process and reports no fallback, as a healthy Triton would (fallbacks are not cached)."""

    async def rank(
        self, item_ids: Any, user_row: Any, feats: Any, precision: str | None = None
    ) -> RankResult:
        chosen = precision or self.default_precision
        return RankResult(self.score_in_process(chosen, item_ids, user_row, feats), "none", chosen)  # type: ignore[arg-type]


class CountingState:
    """A LocalState that counts the calls made to it."""

    def __init__(self, inner: LocalState) -> None:
        self.inner, self.calls = inner, Counter[str]()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kw)

        return counted


def test_a_miss_reads_the_user_once_and_a_hit_serves_the_same_answer(model_tag: str, tmp_path: Path) -> None:
    model = served_model.load(registry.get(model_tag))
    user = next(u for u, h in model.train_histories.items() if len(h) >= 5)
    state = CountingState(LocalState(tmp_path / "journal.jsonl"))

    async def main() -> None:
        ranking = InProcessRanking(model.ranker, triton_url=None, manage_triton=False)
        await ranking.start()
        try:
            pipeline = Recommender(Settings(cache_ttl_s=60), model, state, ranking)  # type: ignore[arg-type]
            item = model.catalog[0]["item_id"]
            await state.append_events([Event(user, item, "click", None, 1.8e9)], [1.0])
            req = RecommendRequest(user_id=user, k=5)
            state.calls.clear()
            miss = await pipeline.recommend(req, "fp32", "treatment", "r1")
            reads = {k: v for k, v in state.calls.items() if k in READS}
            assert reads == {"snapshot": 1, "cache_get": 1}, state.calls  # forgotten asked once, not twice
            assert not isinstance(miss, CachedResult) and miss.variant == "treatment"
            state.calls.clear()
            hit = await pipeline.recommend(req, "fp32", "treatment", "r2")
            assert isinstance(hit, CachedResult) and hit.variant == "treatment"
            assert {k: v for k, v in state.calls.items() if k in READS} == {"snapshot": 1}  # L1 hit
            assert hit.body == miss.model_dump_json(exclude=PER_REQUEST_FIELDS)
        finally:
            await ranking.close()
            await state.inner.close()

    asyncio.run(main())
