"""Baselines evaluated in the same harness: MostPop, ItemKNN (cosine, top-k neighbours), EASE."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class MostPop:
    def fit(self, train: sp.csr_matrix) -> MostPop:
        self.pop = np.asarray(train.sum(0)).ravel().astype(np.float32)
        return self

    def score(self, train: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.pop, (users.size, self.pop.size))


class ItemKNN:
    """Item-item cosine similarity (with shrinkage), keeping the ``k`` nearest neighbours per item."""

    def __init__(self, k: int = 100, shrink: float = 0.0) -> None:
        self.k, self.shrink = k, shrink

    def fit(self, train: sp.csr_matrix) -> ItemKNN:
        x = train.astype(np.float32)
        co = (x.T @ x).toarray()
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrink + 1e-8)
        np.fill_diagonal(sim, 0.0)
        k = min(self.k, sim.shape[0] - 1)
        drop = np.argpartition(-sim, k, axis=0)[k:]  # all but the k largest per column
        np.put_along_axis(sim, drop, 0.0, axis=0)
        self.sim = sim.astype(np.float32)
        return self

    def score(self, train: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        return np.asarray(train[users] @ self.sim)


class EASE:
    """Steck 2019: B = I - P / diag(P), P = (X'X + lambda I)^-1, zero diagonal."""

    def __init__(self, reg: float = 250.0) -> None:
        self.reg = reg

    def fit(self, train: sp.csr_matrix) -> EASE:
        g = (train.T @ train).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.reg
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))
        np.fill_diagonal(b, 0.0)
        self.b = b.astype(np.float32)
        return self

    def score(self, train: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        return np.asarray(train[users] @ self.b)
