"""Top-k metrics over full-ranking score matrices (RecBole's definitions).

NDCG uses binary gain and an ideal DCG over min(#held-out, k). MRR is truncated at k.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

ACCURACY_KS = (10,)
RETRIEVAL_KS = (50, 100)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first. Masked items should hold -inf."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def hits_matrix(ranked: np.ndarray, target: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Boolean [len(users), k]: whether the item at each rank is a held-out item of that user."""
    rows = target[users]
    out = np.zeros(ranked.shape, dtype=bool)
    for r in range(ranked.shape[0]):
        pos = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
        out[r] = np.isin(ranked[r], pos)
    return out


class Metrics(dict[str, float]):
    """Metric name -> mean over users; ``ndcg_users`` keeps each user's NDCG@10 for paired comparisons
    (two rankings of the same users differ far less than either's spread over users)."""

    ndcg_users: np.ndarray


def user_ndcg(hits: np.ndarray, n_pos: np.ndarray, k: int) -> np.ndarray:
    """float64 [U]: each user's NDCG@k (binary gain, ideal DCG over min(n_pos, k))."""
    h = hits[:, :k].astype(np.float64)  # fewer than k columns when the catalog is smaller than k
    discounts = 1.0 / np.log2(np.arange(2, h.shape[1] + 2))
    idcg = np.cumsum(discounts)[np.minimum(n_pos, h.shape[1]) - 1]
    return (h @ discounts) / idcg


def accuracy(hits: np.ndarray, n_pos: np.ndarray, k: int) -> dict[str, float]:
    """Recall, NDCG, MRR, Hit, Precision at k, averaged over users."""
    h = hits[:, :k].astype(np.float64)
    first = np.argmax(h, axis=1)
    any_hit = h.any(axis=1)
    return {
        f"recall@{k}": float(np.mean(h.sum(1) / n_pos)),
        f"ndcg@{k}": float(np.mean(user_ndcg(hits, n_pos, k))),
        f"mrr@{k}": float(np.mean(np.where(any_hit, 1.0 / (first + 1), 0.0))),
        f"hit@{k}": float(np.mean(any_hit)),
        f"precision@{k}": float(np.mean(h.sum(1) / k)),
    }


def beyond_accuracy(
    ranked10: np.ndarray, item_genres: list[tuple[str, ...]], item_pop: np.ndarray, n_users: int
) -> dict[str, float]:
    """Catalog coverage, intra-list genre diversity (mean pairwise 1 - Jaccard) and novelty
    (mean self-information -log2(pop / n_users)) of the top-10 lists."""
    n_items = len(item_genres)
    coverage = np.unique(ranked10).size / n_items
    vocab = sorted({g for gs in item_genres for g in gs})
    index = {g: j for j, g in enumerate(vocab)}
    onehot = np.zeros((n_items, max(len(vocab), 1)), dtype=np.float32)
    for i, gs in enumerate(item_genres):
        for g in gs:
            onehot[i, index[g]] = 1.0
    g = onehot[ranked10]  # [U, k, G]
    inter = np.einsum("ukg,ulg->ukl", g, g)
    sizes = g.sum(-1)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    jaccard = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    k = ranked10.shape[1]
    pairs = k * (k - 1)
    diversity = float(np.mean(((1.0 - jaccard).sum((1, 2))) / pairs)) if pairs else 0.0
    p = np.clip(item_pop[ranked10] / max(n_users, 1), 1e-12, None)
    return {
        "coverage@10": float(coverage),
        "diversity@10": diversity,
        "novelty@10": float(np.mean(-np.log2(p))),
    }


def evaluate_scores(
    score_fn,
    seen: sp.csr_matrix,
    target: sp.csr_matrix,
    users: np.ndarray,
    item_genres: list[tuple[str, ...]],
    item_pop: np.ndarray,
    batch: int = 1024,
) -> Metrics:
    """Full-ranking evaluation. ``score_fn(user_batch) -> float [len(batch), n_items]``.

    Seen items are masked to -inf; metrics at 10 plus recall at the retrieval depths.
    """
    kmax = max((*ACCURACY_KS, *RETRIEVAL_KS))
    hits_all, ranked10 = [], []
    for start in range(0, users.size, batch):
        ub = users[start : start + batch]
        scores = np.asarray(score_fn(ub), dtype=np.float32).copy()
        s = seen[ub]
        scores[np.repeat(np.arange(ub.size), np.diff(s.indptr)), s.indices] = -np.inf
        ranked = top_k(scores, kmax)
        hits_all.append(hits_matrix(ranked, target, ub))
        ranked10.append(ranked[:, :10])
    hits = np.concatenate(hits_all)
    n_pos = np.diff(target.indptr)[users]
    out = Metrics()
    out.ndcg_users = user_ndcg(hits, n_pos, 10)
    for k in ACCURACY_KS:
        out |= accuracy(hits, n_pos, k)
    for k in RETRIEVAL_KS:
        out[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(1) / n_pos))
    out |= beyond_accuracy(np.concatenate(ranked10), item_genres, item_pop, seen.shape[0])
    return out
