"""Train the retrieval model on a users x items matrix, early-stopped on validation NDCG@10."""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
import torch

from models.retrieval import RetrievalConfig, RetrievalModel, RetrievalWeights
from training.metrics import evaluate_scores
from training.protocol import Fold

log = logging.getLogger(__name__)


def _normalized(x: sp.csr_matrix) -> sp.csr_matrix:
    n = np.asarray(x.sum(1)).ravel()
    return sp.diags(1.0 / np.sqrt(np.maximum(n, 1.0))) @ x


def _to_torch(x: sp.csr_matrix) -> torch.Tensor:
    coo = x.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(coo.data.astype(np.float32)), coo.shape, check_invariants=False
    ).coalesce()


def _drop(x: sp.csr_matrix, rate: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Input dropout on the normalized history (the denoising), rescaled by 1 / (1 - rate)."""
    keep = rng.random(x.nnz) >= rate
    out = x.copy()
    out.data = out.data * keep / (1.0 - rate)
    out.eliminate_zeros()
    return out


def user_scores(model: RetrievalModel, history: sp.csr_matrix) -> np.ndarray:
    with torch.no_grad():
        return model.logits(model.encode(_to_torch(_normalized(history)))).numpy()


def _epoch(
    model: RetrievalModel,
    opt: torch.optim.Optimizer,
    train: sp.csr_matrix,
    users: np.ndarray,
    cfg: RetrievalConfig,
    rng: np.random.Generator,
) -> float:
    """One pass over ``users`` (shuffled in place); returns the last batch's loss."""
    n_items = train.shape[1]
    model.train()
    rng.shuffle(users)
    loss = torch.zeros(())
    for start in range(0, users.size, cfg.batch_size):
        batch = train[users[start : start + cfg.batch_size]]
        inp = _to_torch(_drop(_normalized(batch), cfg.dropout, rng))
        u = model.encode(inp)
        if cfg.sampled_negatives and cfg.sampled_negatives < n_items:
            cols = np.union1d(batch.indices, rng.integers(0, n_items, cfg.sampled_negatives))
            logits = model.logits(u, torch.from_numpy(cols))
            target = torch.from_numpy(batch[:, cols].toarray())
        else:
            logits = model.logits(u)
            target = torch.from_numpy(batch.toarray())
        loss = -(torch.log_softmax(logits, 1) * target).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.item())


def fit_retrieval(train: sp.csr_matrix, cfg: RetrievalConfig, seed: int, epochs: int) -> RetrievalWeights:
    """A fixed number of epochs on ``train`` (epochs chosen on validation by ``train_retrieval``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RetrievalModel(train.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    for _ in range(epochs):
        _epoch(model, opt, train, users, cfg, rng)
    model.eval()
    return RetrievalWeights.from_model(model)


def train_retrieval(
    fold: Fold,
    cfg: RetrievalConfig,
    seed: int,
    item_genres: list[tuple[str, ...]],
    eval_every: int = 5,
    patience: int = 4,
) -> tuple[RetrievalWeights, dict[str, float]]:
    """Fit on ``fold.train``; keep the epoch with the best NDCG@10 on ``fold.target`` (its number is
    ``metrics["epoch"]``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = fold.train
    model = RetrievalModel(train.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    pop = np.asarray(train.sum(0)).ravel()
    best: tuple[float, dict[str, float], RetrievalWeights | None] = (-1.0, {}, None)
    bad, t0 = 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        loss = _epoch(model, opt, train, users, cfg, rng)
        if epoch % eval_every and epoch != cfg.epochs:
            continue
        model.eval()
        metrics = evaluate_scores(
            lambda ub: user_scores(model, train[ub]), fold.seen, fold.target, fold.users, item_genres, pop
        )
        score = metrics["ndcg@10"]
        log.info(
            "retrieval epoch %d loss %.3f valid ndcg@10 %.4f (%.0fs)",
            epoch,
            loss,
            score,
            time.perf_counter() - t0,
        )
        if score > best[0]:
            best, bad = (score, metrics | {"epoch": float(epoch)}, RetrievalWeights.from_model(model)), 0
        else:
            bad += 1
            if bad >= patience:
                break
    assert best[2] is not None
    return best[2], best[1]
