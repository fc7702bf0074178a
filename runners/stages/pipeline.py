"""The request pipeline behind the endpoints: history -> cache -> retrieval -> ranking -> rules.

One ``Recommender`` per worker wires the stages (all in-process: a hop between BentoML services costs
more than the whole pipeline). The state store may be down: reads degrade (training history only,
no cache), writes (feedback, forget) fail with ``StateUnavailable`` so nothing is acknowledged that
was not durably written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.candidates import rating_weight
from models.diversity import diversify
from models.events import POSITIVE_RATING, TRENDING_WEIGHTS, event_rating
from runners.http.schemas import PER_REQUEST_FIELDS, FeedbackEvent, Item, RecommendRequest, RecommendResponse
from runners.platform.metrics import (
    BATCH_SIZE,
    COLD_STARTS,
    FALLBACKS,
    FEEDBACK_EVENTS,
    FEEDBACK_WRITE_ERRORS,
    STATE_ERRORS,
    timed,
)
from runners.platform.settings import Settings
from runners.stages import rules
from runners.stages.cache import ResultCache
from runners.stages.coverage import Coverage
from runners.stages.new_books import NewBooks, place
from runners.stages.ranking import RankingStage
from runners.stages.retrieval import RetrievalStage, Retrieved
from runners.stages.served_model import ServedModel
from runners.state.catalog import Book, CatalogState, CatalogView
from runners.state.protocol import Event, StateBusy, StateStore, StateUnavailable, UserSnapshot

log = logging.getLogger(__name__)

# How much one event adds to trending.


class UnknownItem(LookupError):
    pass


class WithdrawnItem(LookupError):
    """A book withdrawn from the catalog (runners/state/catalog.py): it takes no feedback."""


class InvalidEvent(ValueError):
    """A feedback event the store must not take (e.g. a timestamp outside the accepted window)."""


def cache_params(req: RecommendRequest, precision: str, catalog_revision: int) -> str:
    """The request's part of a cache key: a fixed-size digest, whatever the size of the request. The
    catalog revision is part of it: a catalog change makes every older result unreachable at once (no
    key scan; they expire with their TTL)."""
    params = json.dumps([req.k, req.exclude_seen, sorted(req.genres or []), precision, catalog_revision])
    return hashlib.blake2b(params.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class CachedResult:
    """A cache hit kept as the stored JSON: the response without its per-request fields
    (schemas.PER_REQUEST_FIELDS), which service.py prepends; the hot path neither parses nor re-validates
    it."""

    body: str
    variant: str

    @property
    def n_items(self) -> int:
        return self.body.count('"item_id"')


@dataclass(frozen=True)
class UserState:
    history: np.ndarray  # int64 positives (training + feedback), oldest first, unique
    ratings: np.ndarray  # float32 history weights (of event_rating; the highest when an item repeats)
    seen: np.ndarray  # int64 every item the user interacted with
    degraded: bool  # the state store was unreachable: training history only
    seen_new: frozenset[str] = frozenset()  # books added after training the user interacted with


class Recommender:
    def __init__(
        self, settings: Settings, model: ServedModel, state: StateStore, ranking: RankingStage
    ) -> None:
        self.settings, self.model, self.state, self.ranking = settings, model, state, ranking
        self.retrieval = RetrievalStage(model)
        self.cache = ResultCache(state, model.tag, settings.l1_size, settings.cache_ttl_s)
        self.trained_at = model.created
        self.catalog = CatalogView.build(CatalogState(), model.position, model.n_items)
        self.new_books = NewBooks.none(model.n_items, model.weights.dim)
        self.primary_genre = model.primary_genre  # of every index, new books' included
        self._encoded: dict[Book, np.ndarray] = {}
        self.coverage = Coverage(model.n_items, settings.coverage_window_s)

    def set_catalog(self, state: CatalogState) -> None:
        """Serve the catalog changes of ``state`` (runners/state/catalog.py) from the next request on."""
        if state.revision != self.catalog.revision:
            view = CatalogView.build(state, self.model.position, self.model.n_items)
            m = self.model
            new = NewBooks.encode(
                m.content, view.new_books, view.withdrawn_ids, m.n_items, m.weights.dim, self._encoded
            )
            self._encoded = {b: self._encoded[b] for b in new.books}  # forget removed or changed books
            self.primary_genre = m.primary_genre + [b.genres[0] if b.genres else "" for b in new.books]
            self.catalog, self.new_books = view, new

    # ------------------------------------------------------------------ reads
    def item(self, i: int, score: float, reason: str) -> Item:
        book = self.catalog.overrides.get(i) if i < self.model.n_items else self.new_books.book(i)
        c = self.model.catalog[i] if book is None else book.record()  # a record corrected at runtime wins
        return Item(
            item_id=c["item_id"],
            title=c["title"],
            authors=c.get("authors") or "",
            genres=list(c["genres"]),
            year=c.get("year"),
            score=round(float(score), 6),
            reason=reason,
        )

    def index_of(self, item_id: str) -> int:
        pos = self.model.position.get(item_id)
        if pos is None:
            raise UnknownItem(f"unknown item_id {item_id!r}: not in the catalog of {self.model.tag}")
        return pos

    async def read_user(self, user_id: str) -> UserSnapshot | None:
        """The user's generation, forgotten flag and feedback in one state-store call (None: it is down)."""
        try:
            return await self.state.snapshot(user_id)
        except StateUnavailable:
            STATE_ERRORS.labels(op="user").inc()
            return None

    def user_state(self, user_id: str, snapshot: UserSnapshot | None) -> UserState:
        """The user's history: training history (unless forgotten) plus the feedback of ``snapshot``
        (None: the store was unreachable, training history only)."""
        with timed("history"):
            forgotten = snapshot is not None and snapshot.forgotten
            events = snapshot.events if snapshot is not None else []
            degraded = snapshot is None
            train = None if forgotten else self.model.train_histories.get(user_id)
            weight: dict[int, float] = {}  # insertion order: oldest first
            if train is not None:
                weight = dict(zip(train.tolist(), self.model.train_ratings[user_id].tolist(), strict=True))
            seen = list(weight)
            seen_new = set()
            for e in events:
                pos = self.model.position.get(e.item_id)
                if pos is None:  # a book added after training, or one of another model version
                    seen_new.add(e.item_id)
                    continue
                seen.append(pos)
                rating = event_rating(e.event, e.value)
                if rating < POSITIVE_RATING:
                    continue
                w = rating_weight(rating)
                weight[pos] = max(w, weight.get(pos, 0.0))
            history = np.fromiter(weight, dtype=np.int64, count=len(weight))
            ratings = np.fromiter(weight.values(), dtype=np.float32, count=len(weight))
            seen_arr = np.unique(np.asarray(seen, dtype=np.int64))
            return UserState(history, ratings, seen_arr, degraded, frozenset(seen_new))

    async def trending_scores(self) -> np.ndarray:
        """float32 [n_items]: training popularity decayed since training, plus decayed feedback."""
        half_life = self.settings.trending_half_life_s
        age = max(0.0, time.time() - self.trained_at)
        scores = self.model.popularity * np.float32(2.0 ** (-age / half_life))
        try:
            fresh = await self.state.trending()
        except StateUnavailable:
            STATE_ERRORS.labels(op="trending").inc()
            fresh = {}
        for item_id, weight in fresh.items():
            if (pos := self.model.position.get(item_id)) is not None:
                scores[pos] += weight
        return scores

    async def recommend(
        self, req: RecommendRequest, precision: str, variant: str, request_id: str
    ) -> RecommendResponse | CachedResult:
        params = cache_params(req, precision, self.catalog.revision)
        with timed("cache"):
            snapshot = await self.read_user(req.user_id)
            generation = snapshot.generation if snapshot is not None else None
            hit = await self.cache.get(req.user_id, generation, params)
        if hit is not None:
            return CachedResult(hit, variant)
        return await self.fill(req, precision, variant, request_id, snapshot, params)

    async def fill(
        self,
        req: RecommendRequest,
        precision: str,
        variant: str,
        request_id: str,
        snapshot: UserSnapshot | None,
        params: str,
    ) -> RecommendResponse:
        """A miss: the recommendation computed and, unless a fallback ranked it, cached under ``params`` for
        the user's generation in ``snapshot`` (`recommend`, and cache warming: runners/serving/warmup.py)."""
        response = await self.compute(req, precision, variant, request_id, snapshot)
        if response.fallback == "none":  # fallbacks are not cached: recovery shows at once
            body = response.model_dump_json(exclude=PER_REQUEST_FIELDS)
            generation = snapshot.generation if snapshot is not None else None
            await self.cache.put(req.user_id, generation, params, body)
        return response

    async def compute(
        self,
        req: RecommendRequest,
        precision: str,
        variant: str,
        request_id: str,
        snapshot: UserSnapshot | None = None,
    ) -> RecommendResponse:
        """The recommendation, bypassing the result cache (``snapshot``: the user as already read)."""
        if snapshot is None:
            snapshot = await self.read_user(req.user_id)
        user = self.user_state(req.user_id, snapshot)
        mask = rules.genre_mask(self.model, req.genres)
        excluded = np.zeros(self.model.n_items, dtype=bool)
        if req.exclude_seen:
            excluded[user.seen] = True
        if mask is not None:
            excluded |= ~mask
        excluded |= self.catalog.withdrawn_mask
        cold = len(user.history) < self.settings.cold_start_threshold
        fallback = "none"
        if cold:
            COLD_STARTS.inc()
            with timed("retrieval"):
                pref = rules.genre_preference(self.model, user.history, req.genres)
                scores = rules.cold_start_scores(await self.trending_scores(), self.model, pref)
                scores[excluded] = -np.inf
                order = np.argsort(-scores, kind="stable")
                order = order[np.isfinite(scores[order])][: max(req.k * 10, 100)]
            ranked, ranked_scores = order, scores[order]
        else:
            with timed("retrieval"):
                cands = self.retrieval.candidates(
                    user.history,
                    user.ratings,
                    self.settings.candidates or self.model.candidates,
                    np.flatnonzero(excluded),
                )
            with timed("ranking"):
                BATCH_SIZE.observe(len(cands.items))
                result = await self.ranking.rank(cands.items, cands.user_row, cands.features, precision)
            fallback = result.fallback
            FALLBACKS.labels(fallback=fallback).inc()
            ranked_scores = result.scores if result.scores is not None else self.model.popularity[cands.items]
            order = np.argsort(-ranked_scores, kind="stable")
            ranked, ranked_scores = cands.items[order], ranked_scores[order]
            if len(self.new_books) and self.settings.new_books_per_list:
                ranked, ranked_scores = self._with_new_books(ranked, ranked_scores, cands, user, req)
        with timed("rules"):
            penalty = self.settings.diversity_penalty
            if penalty is None:
                penalty = self.model.diversity_penalty
            top = diversify(ranked, self.primary_genre, req.k, penalty, self.settings.max_per_genre)
            self.coverage.record(top)
            score_of = dict(zip(ranked.tolist(), ranked_scores.tolist(), strict=True))
            why = self._reasons(top, user.history, not cold, req.genres)
            items = [self.item(i, score_of[i], r) for i, r in zip(top.tolist(), why, strict=True)]
        return RecommendResponse(
            items=items,
            model_version=self.model.tag,
            variant=variant,
            precision=precision,
            cold_start=cold,
            fallback=fallback,
            cached=False,
            request_id=request_id,
        )

    def _with_new_books(
        self,
        ranked: np.ndarray,
        scores: np.ndarray,
        cands: Retrieved,
        user: UserState,
        req: RecommendRequest,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``ranked`` with the user's best new books, placed by retrieval score (stages/new_books.py)."""
        new = self.new_books
        ok = np.flatnonzero(new.eligible(user.seen_new, req.genres))
        if not ok.size:
            return ranked, scores
        cosine = new.vectors[ok] @ cands.vector
        retrieval = cands.features[:, 0]  # the retrieval source's score (models.candidates.feature_names)
        return place(ranked, scores, retrieval, cosine, ok + new.offset, self.settings.new_books_per_list)

    def _reasons(
        self, top: np.ndarray, history: np.ndarray, personalized: bool, hint: list[str] | None
    ) -> list[str]:
        trained = top < self.model.n_items
        why = ["new in the catalog, close to what you read"] * len(top)
        for j, reason in zip(
            np.flatnonzero(trained),
            rules.reasons(self.model, top[trained], history, personalized, hint),
            strict=True,
        ):
            why[j] = reason
        return why

    def similar(self, item_id: str, k: int) -> list[Item]:
        """The nearest trained books (for a book added after training: to its content vector). New books
        are not listed as neighbours: content vectors sit closer to one another than trained books do, so
        they would crowd out the trained books of every answer (measured: 8.6 of 10 on ML-1M)."""
        new = self.new_books
        at = next((j for j, b in enumerate(new.books) if b.item_id == item_id), None)
        if at is not None:
            vector, skip, title = new.vectors[at], -1, new.books[at].title
        else:
            pos = self.index_of(item_id)
            vector, skip, title = self.model.weights.item_vectors[pos], pos, self.model.catalog[pos]["title"]
        withdrawn = self.catalog.withdrawn_mask
        with timed("retrieval"):
            ids, scores = self.retrieval.nearest(vector, k + int(withdrawn.sum()), skip=skip)
        keep = ~withdrawn[ids]
        ids, scores = ids[keep][:k], scores[keep][:k]
        return [
            self.item(i, s, f"similar to {title}") for i, s in zip(ids.tolist(), scores.tolist(), strict=True)
        ]

    async def trending(self, k: int, genre: str | None) -> list[Item]:
        scores = await self.trending_scores()
        mask = rules.genre_mask(self.model, [genre] if genre else None)
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        scores[self.catalog.withdrawn_mask] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        top = top[np.isfinite(scores[top])]
        label = f"trending in {genre}" if genre else "trending now"
        return [self.item(i, scores[i], label) for i in top.tolist()]

    def coverage_ratio(self) -> float:
        """Share of the servable catalog (trained books not withdrawn, and books added since) that computed
        answers recommended over the coverage window."""
        servable = np.concatenate([~self.catalog.withdrawn_mask, np.ones(len(self.new_books), dtype=bool)])
        return self.coverage.ratio(servable)

    # ----------------------------------------------------------------- writes
    def feedback_events(self, events: Sequence[FeedbackEvent], variants: Sequence[str | None]) -> list[Event]:
        """The events to store, each attributed to the variant serving its user; raises InvalidEvent or
        UnknownItem (nothing is written, nothing charged) when one is out of bounds."""
        now = time.time()
        oldest, newest = now - self.settings.feedback_max_age_s, now + self.settings.feedback_max_skew_s
        late = [e.ts for e in events if e.ts is not None and not oldest <= e.ts <= newest]
        if late:
            raise InvalidEvent(
                f"ts {late[0]!r} is outside the accepted window [{oldest:.0f}, {newest:.0f}] (unix seconds: "
                f"at most FOLIO_FEEDBACK_MAX_AGE_S={self.settings.feedback_max_age_s:.0f} s before the "
                f"server's clock, FOLIO_FEEDBACK_MAX_SKEW_S={self.settings.feedback_max_skew_s:.0f} s after "
                "it); omit ts to mean now. Nothing recorded"
            )
        position = self.model.position
        unknown = sorted({e.item_id for e in events if not self.catalog.knows(e.item_id, position)})
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise UnknownItem(
                f"unknown item_id {shown}: not in the catalog of {self.model.tag} nor added since; "
                "nothing recorded"
            )
        gone = sorted({e.item_id for e in events if e.item_id in self.catalog.withdrawn_ids})
        if gone:
            shown = ", ".join(repr(u) for u in gone[:5])
            raise WithdrawnItem(f"item_id {shown} is withdrawn from the catalog; nothing recorded")
        return [
            Event(e.user_id, e.item_id, e.event, e.value, now if e.ts is None else e.ts, variant)
            for e, variant in zip(events, variants, strict=True)
        ]

    async def record(self, records: Sequence[Event]) -> int:
        """Durably record validated events (raises StateUnavailable with nothing written)."""
        with timed("feedback"):
            try:
                await self.state.append_events(records, [TRENDING_WEIGHTS[e.event] for e in records])
            except StateUnavailable as exc:
                reason = "busy" if isinstance(exc, StateBusy) else "unavailable"
                FEEDBACK_WRITE_ERRORS.labels(reason=reason).inc()
                raise
        for e in records:
            FEEDBACK_EVENTS.labels(event=e.event, variant=e.variant or "").inc()
        return len(records)

    async def user_rate_limit(self, events: Sequence[Event]) -> float:
        """Seconds to wait before these events' users may send them (0: go ahead, and they are charged,
        one token an event, all or nothing); fails open. Raises InvalidEvent for more events of one user
        than the bucket holds."""
        rate, burst = self.settings.feedback_user_rps, self.settings.feedback_user_burst
        if rate <= 0:
            return 0.0
        costs = {f"user:{u}": n for u, n in Counter(e.user_id for e in events).items()}
        if (most := max(costs.values())) > burst:
            raise InvalidEvent(
                f"{most} events for one user in one request: at most FOLIO_FEEDBACK_USER_BURST={burst}"
            )
        try:
            return await self.state.take_tokens(costs, rate, burst)
        except StateUnavailable:
            STATE_ERRORS.labels(op="rate_limit").inc()
            return 0.0
