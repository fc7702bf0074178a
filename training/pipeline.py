"""The two-stage pipeline as training and evaluation see it: retrieve top-N, rank, top-k.

The ranker learns from the validation fold: user vectors come from train items, candidates are
the retrieval top-N outside them, and positives are the user's validation items, exactly the
situation the test fold (and serving) presents. Validation users are split into ranker-train and
ranker-holdout users; early stopping and all reported validation figures use the holdout users.
Extra folds (training/ranker_folds.py) add more lists of the same kind for the ranker-train users.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from models.candidates import feature_names, user_candidates
from models.diversity import picks
from models.features import FeatureSpec, ItemTables, user_features
from models.item_item import ItemItem
from models.ranker import Ranker
from models.retrieval import RetrievalWeights
from training.metrics import Metrics, evaluate_scores, hits_matrix, top_k

log = logging.getLogger(__name__)

# (item_ids [U, N] int64, user_features [U, D] float32, candidate_features [U, N, F] float32)
#   -> scores [U, N] float32
RankFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RankerConfig:
    candidates: int = 200
    width: int = 128
    epochs: int = 30
    users_per_batch: int = 64
    lr: float = 1e-3  # ML-1M seed 2020 ranker-holdout NDCG@10: 0.2413 vs 0.2410 at 3e-4 (MLP head)
    weight_decay: float = 1e-4
    holdout_share: float = 0.2
    patience: int = 4
    # training/ranker_folds.py: re-splits of train + valid whose models give the ranker more lists
    # (holdout NDCG@10, seed 2020: ML-100K +0.0027, docs/quality.md's ablation); 0 turns them off
    extra_folds: int = 2


def histories(x: sp.csr_matrix, users: np.ndarray) -> list[np.ndarray]:
    return [x.indices[x.indptr[u] : x.indptr[u + 1]] for u in users]


@dataclass(frozen=True)
class CandidateBatch:
    users: np.ndarray  # [U]
    items: np.ndarray  # int64 [U, N], merged order of models.candidates
    features: np.ndarray  # float32 [U, D]
    cand_features: np.ndarray  # float32 [U, N, F]

    def take(self, rows: np.ndarray) -> CandidateBatch:
        return CandidateBatch(
            self.users[rows], self.items[rows], self.features[rows], self.cand_features[rows]
        )

    def labels(self, target: sp.csr_matrix) -> np.ndarray:
        """float32 [U, N]: 1 where a candidate is one of its user's ``target`` items."""
        return hits_matrix(self.items, target, self.users).astype(np.float32)

    @staticmethod
    def concat(parts: list[CandidateBatch]) -> CandidateBatch:
        return CandidateBatch(
            np.concatenate([c.users for c in parts]),
            np.concatenate([c.items for c in parts]),
            np.concatenate([c.features for c in parts]),
            np.concatenate([c.cand_features for c in parts]),
        )


def retrieve(
    weights: RetrievalWeights,
    tables: ItemTables,
    item_item: ItemItem | None,
    history: sp.csr_matrix,
    seen: sp.csr_matrix,
    users: np.ndarray,
    n: int,
) -> CandidateBatch:
    """Each user's candidates and features through models.candidates, the code serving runs. The
    retrieval top list is the exact inner-product top-N outside ``seen`` (the FAISS index returns the
    same list); ``history`` holds rating weights (models.candidates.rating_weight) as its values."""
    hist = histories(history, users)
    vecs = weights.user_vectors(hist)
    scores = vecs @ weights.item_vectors.T
    s = seen[users]
    scores[np.repeat(np.arange(users.size), np.diff(s.indptr)), s.indices] = -np.inf
    tops = top_k(scores, n).astype(np.int64)
    n_items = weights.item_vectors.shape[0]
    items = np.zeros((users.size, min(n, n_items)), np.int64)
    cand_rows = []
    for r, u in enumerate(users):
        excluded = np.zeros(n_items, bool)
        excluded[s.indices[s.indptr[r] : s.indptr[r + 1]]] = True
        top = tops[r][np.isfinite(scores[r, tops[r]])]
        ratings = history.data[history.indptr[u] : history.indptr[u + 1]]
        c = user_candidates(vecs[r], weights.item_vectors, top, item_item, hist[r], ratings, excluded, n)
        c_items, c_feats = c.items, c.features
        if 0 < c.items.size < items.shape[1]:  # a user who has seen nearly everything: repeat the last
            pad = items.shape[1] - c.items.size
            c_items = np.concatenate([c.items, np.repeat(c.items[-1:], pad)])
            c_feats = np.concatenate([c.features, np.repeat(c.features[-1:], pad, axis=0)])
        elif c.items.size == 0:  # nothing left to recommend: a placeholder row nobody is scored on
            c_items = np.zeros(items.shape[1], np.int64)
            c_feats = np.zeros((items.shape[1], len(feature_names(item_item))), np.float32)
        items[r] = c_items
        cand_rows.append(c_feats)
    return CandidateBatch(users, items, user_features(vecs, hist, tables), np.stack(cand_rows))


def torch_rank_fn(model: Ranker) -> RankFn:
    def rank(items: np.ndarray, feats: np.ndarray, cand_feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            ids = torch.from_numpy(items.reshape(-1))
            rows = torch.from_numpy(np.repeat(feats, items.shape[1], axis=0))
            cf = torch.from_numpy(cand_feats.reshape(ids.shape[0], -1))
            return model.score_rows(ids, rows, cf).numpy().reshape(items.shape)

    return rank


def evaluate_pipeline(
    rank: RankFn | None,
    cands: CandidateBatch,
    seen: sp.csr_matrix,
    target: sp.csr_matrix,
    item_genres: list[tuple[str, ...]],
    item_pop: np.ndarray,
    batch: int = 512,
    diversity: float = 0.0,
) -> Metrics:
    """Metrics of retrieve -> rank -> top-k (``rank=None``: candidate order alone), the top-10 diversified
    by models.diversity with penalty ``diversity`` over each item's first genre."""
    pos = {int(u): i for i, u in enumerate(cands.users)}
    n_items = target.shape[1]
    primary = [g[0] if g else "" for g in item_genres]

    def score(ub: np.ndarray) -> np.ndarray:
        rows = np.array([pos[int(u)] for u in ub])
        items = cands.items[rows]
        if rank is None:
            ranked = -np.arange(items.shape[1], dtype=np.float32)[None, :].repeat(len(rows), 0)
        else:
            ranked = rank(items, cands.features[rows], cands.cand_features[rows])
        if diversity > 0:
            ranked = _diversified(items, ranked, primary, diversity)
        out = np.full((len(rows), n_items), -np.inf, dtype=np.float32)
        np.put_along_axis(out, items, ranked, axis=1)
        return out

    users = cands.users[np.diff(target.indptr)[cands.users] > 0]
    return evaluate_scores(score, seen, target, users, item_genres, item_pop, batch=batch)


def _diversified(items: np.ndarray, scores: np.ndarray, primary: list[str], penalty: float) -> np.ndarray:
    """Scores [U, N] whose order puts each row's diversified top-10 first, then the rest by score."""
    out = np.empty_like(scores)
    for r in range(items.shape[0]):
        order = np.argsort(-scores[r], kind="stable")
        top = picks(items[r][order], primary, 10, penalty, cap=10)
        final = order[np.concatenate([top, np.delete(np.arange(order.size), top)])]
        out[r, final] = -np.arange(final.size, dtype=np.float32)
    return out


def listwise_loss(
    model: Ranker, cands: CandidateBatch, labels: np.ndarray, users: np.ndarray
) -> torch.Tensor:
    """Softmax cross-entropy of each user's candidate list against its positives (labels [U, N] 0/1)."""
    n = cands.items.shape[1]
    ids = torch.from_numpy(cands.items[users].reshape(-1))
    rows = torch.from_numpy(np.repeat(cands.features[users], n, axis=0))
    cf = torch.from_numpy(cands.cand_features[users].reshape(ids.shape[0], -1))
    logits = model.score_rows(ids, rows, cf).view(len(users), n)
    y = torch.from_numpy(labels[users])
    return -((torch.log_softmax(logits, 1) * y).sum(1) / y.sum(1)).mean()


def holdout_users(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The validation users the ranker never trains on: early stopping and validation figures use them."""
    order = np.random.default_rng(seed).permutation(users.size)
    return np.sort(users[order[: int(share * users.size)]])


def train_ranker(
    spec: FeatureSpec,
    tables: ItemTables,
    cands: CandidateBatch,
    target: sp.csr_matrix,
    seen: sp.csr_matrix,
    cfg: RankerConfig,
    seed: int,
    item_genres: list[tuple[str, ...]],
    item_pop: np.ndarray,
    hold_users: np.ndarray,
    extra: Sequence[tuple[CandidateBatch, sp.csr_matrix]] = (),
) -> tuple[Ranker, dict[str, float]]:
    """Listwise softmax over each user's candidates, early-stopped on ``hold_users``' validation NDCG@10.

    Trains on ``cands`` outside ``hold_users`` (positives: ``target``) and on every ``extra``
    (candidates, their target) pair; returns (model, holdout metrics)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    hold = np.isin(cands.users, hold_users)
    parts = [(cands.take(~hold), target), *extra]
    pool = CandidateBatch.concat([c for c, _ in parts])
    labels = np.concatenate([c.labels(t) for c, t in parts])
    # lists without a positive among the candidates teach nothing listwise
    fit = np.flatnonzero(labels.sum(1) > 0)
    n = pool.items.shape[1]
    hold_c = cands.take(hold)
    model = Ranker(spec, tables, cfg.width)
    sample = rng.choice(fit, min(fit.size, 256), replace=False)
    model.fit_normalizer(
        torch.from_numpy(pool.items[sample].reshape(-1)),
        torch.from_numpy(np.repeat(pool.features[sample], n, axis=0)),
        torch.from_numpy(pool.cand_features[sample].reshape(sample.size * n, -1)),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best: tuple[float, dict[str, float], dict[str, torch.Tensor] | None] = (-1.0, {}, None)
    bad, t0 = 0, time.perf_counter()
    log.info(
        "ranker: %d training lists (%d folds), %d holdout users", fit.size, len(parts), hold_c.users.size
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        rng.shuffle(fit)
        for start in range(0, fit.size, cfg.users_per_batch):
            loss = listwise_loss(model, pool, labels, fit[start : start + cfg.users_per_batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        metrics = evaluate_pipeline(torch_rank_fn(model), hold_c, seen, target, item_genres, item_pop)
        log.info(
            "ranker epoch %d loss %.4f holdout ndcg@10 %.4f (%.0fs)",
            epoch,
            loss.item(),
            metrics["ndcg@10"],
            time.perf_counter() - t0,
        )
        if metrics["ndcg@10"] > best[0]:
            best, bad = (
                (metrics["ndcg@10"], metrics, {k: v.clone() for k, v in model.state_dict().items()}),
                0,
            )
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    assert best[2] is not None
    model.load_state_dict(best[2])
    model.eval()
    return model, best[1]
