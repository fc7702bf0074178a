"""Item-item models (EASE, ItemKNN) as training and serving both use them; numpy only (no torch, no scipy).

A model is one weight matrix ``W [n_items, n_items]`` whose row ``j`` holds what history item ``j`` adds
to every item's score. A *source* reads one matrix with or without the history's rating weights:

    score_u = sum_{j in history} w_j W[j]        w_j = 1, or models.candidates.rating_weight(rating_j)

Storage: dense float32 up to ``DENSE_MAX_ITEMS`` items (3,123 items: 39 MB a matrix); above, the rows
are sparse (CSR), keeping the ``SPARSE_K`` largest weights of each row by magnitude (EASE's negative
weights matter: by magnitude, ML-1M EASE keeps NDCG@10 0.2799 of 0.2836 at k=256; the largest
positive weights only, 0.2645). A sparse matrix costs ``SPARSE_K`` x 8 bytes per item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DENSE_MAX_ITEMS = 8192
SPARSE_K = 256
# Dense matrices up to this size also keep a transposed copy in memory (``prepare``, or at first use; never
# saved): a source read at the candidates only then costs the candidates' rows of the transpose instead
# of the history's rows, whatever the history's length. On ML-1M (3,123 items) a 650-item history costs
# 0.31 ms a matrix that way against 0.96 ms through its rows; each copy costs n_items x 4 bytes per item
# (12.5 kB per item and matrix on ML-1M, 16 kB at this bound).
TRANSPOSE_MAX_ITEMS = 4096
# Histories up to this length (or the candidate count, if larger) read their own rows: streaming fewer
# rows than the candidates' beats the transpose (ML-1M, 200 candidates: 0.27 vs 0.23 ms at 200 items).
# Longer ones read the candidates' rows of the transposed copy against the weights spread over every
# item (about 0.5 ms a matrix at any length; gathering the history's columns of those rows instead took
# 0.9 ms at 1,000 items).
SHORT_HISTORY = 200
# A dense matrix's full scores read every row in one pass (a gemv) once the history holds more than
# 1 / FULL_PASS_ROWS of the items: gathering a row costs about 3 times its share of the pass (ML-1M, one
# thread as served: 1,000 rows 1.46 ms gathered, 1.49 ms for the whole matrix; 1,700 rows 2.61 ms).
FULL_PASS_ROWS = 3


@dataclass(frozen=True)
class SparseRows:
    """CSR rows: row j's weights are data[indptr[j]:indptr[j+1]] at columns indices[...]."""

    indptr: np.ndarray  # int64 [n + 1]
    indices: np.ndarray  # int32 [nnz]
    data: np.ndarray  # float32 [nnz]

    @property
    def n(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)


Matrix = np.ndarray | SparseRows


def sparsify(dense: np.ndarray, k: int = SPARSE_K) -> SparseRows:
    """The ``k`` largest-magnitude weights of each row (zeros dropped)."""
    n = dense.shape[0]
    k = min(k, dense.shape[1])
    keep = np.argpartition(-np.abs(dense), k - 1, axis=1)[:, :k] if k < dense.shape[1] else None
    cols = np.sort(keep, axis=1) if keep is not None else np.broadcast_to(np.arange(k), (n, k))
    vals = np.take_along_axis(dense, cols, axis=1).astype(np.float32)
    nz = vals != 0
    counts = nz.sum(1)
    return SparseRows(
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        indices=cols[nz].astype(np.int32),
        data=vals[nz],
    )


def served_form(dense: np.ndarray) -> Matrix:
    """Dense for small catalogs, sparse top-k rows above DENSE_MAX_ITEMS items."""
    return dense.astype(np.float32) if dense.shape[0] <= DENSE_MAX_ITEMS else sparsify(dense)


@dataclass(frozen=True)
class UserScores:
    """One user's scores from one source: dense over every item (``items`` None), or only at ``items``
    (sorted, unique) with every other item scoring 0."""

    values: np.ndarray  # float32
    items: np.ndarray | None = None

    def at(self, ids: np.ndarray) -> np.ndarray:
        if self.items is None:
            return self.values[ids]
        pos = np.minimum(np.searchsorted(self.items, ids), max(self.items.size - 1, 0))
        hit = self.items[pos] == ids if self.items.size else np.zeros(ids.size, bool)
        return np.where(hit, self.values[pos] if self.items.size else 0.0, 0.0).astype(np.float32)

    def top(self, n: int, excluded: np.ndarray) -> np.ndarray:
        """Up to ``n`` best items (int64, best first) outside ``excluded`` (bool [n_items])."""
        if self.items is None:
            ids, vals = np.flatnonzero(~excluded), self.values[~excluded]
        else:
            keep = ~excluded[self.items]
            ids, vals = self.items[keep], self.values[keep]
        if ids.size > n:
            part = np.argpartition(-vals, n - 1)[:n]
            ids, vals = ids[part], vals[part]
        return ids[np.argsort(-vals, kind="stable")].astype(np.int64)


def user_scores(m: Matrix, history: np.ndarray, weights: np.ndarray) -> UserScores:
    """sum_j weights[j] * m[history[j]] for one user's history (int64 item indices)."""
    if isinstance(m, np.ndarray):
        if history.size == 0:
            return UserScores(np.zeros(m.shape[1], np.float32))
        if history.size * FULL_PASS_ROWS > m.shape[0]:  # one streaming pass beats gathering the rows
            dense = np.zeros(m.shape[0], np.float32)
            dense[history] = weights
            return UserScores((dense @ m).astype(np.float32))
        return UserScores((weights.astype(np.float32) @ m[history]).astype(np.float32))
    starts, ends = m.indptr[history], m.indptr[history + 1]
    lengths = ends - starts
    if lengths.sum() == 0:
        return UserScores(np.zeros(0, np.float32), np.zeros(0, np.int64))
    take = np.concatenate([np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
    cols = m.indices[take]
    vals = m.data[take] * np.repeat(weights.astype(np.float32), lengths)
    items, inverse = np.unique(cols, return_inverse=True)
    return UserScores(
        np.bincount(inverse, vals, minlength=items.size).astype(np.float32), items.astype(np.int64)
    )


@dataclass(frozen=True)
class Source:
    name: str  # e.g. "ease", "ease_rated"
    matrix: str  # key into ItemItem.matrices
    rated: bool  # weights history items by their rating (else every item counts 1)


@dataclass(frozen=True)
class ItemItem:
    """The item-item sources of a model version; ``sources[0]`` also generates candidates."""

    matrices: dict[str, Matrix]
    sources: tuple[Source, ...]
    _transposed: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, object]:  # pickles (training runs) leave the transposes out
        return {"matrices": self.matrices, "sources": self.sources, "_transposed": {}}

    def __setstate__(self, state: dict[str, object]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @property
    def n_items(self) -> int:
        m = next(iter(self.matrices.values()))
        return m.shape[0] if isinstance(m, np.ndarray) else m.n

    @property
    def nbytes(self) -> int:
        return sum(int(m.nbytes) for m in self.matrices.values())

    def scores(self, history: np.ndarray, ratings: np.ndarray) -> list[UserScores]:
        """Every source's scores for one user (``ratings``: the history's rating weights)."""
        ones = np.ones(history.size, np.float32)
        cache: dict[tuple[str, bool], UserScores] = {}
        out = []
        for s in self.sources:
            key = (s.matrix, s.rated)
            if key not in cache:
                cache[key] = user_scores(self.matrices[s.matrix], history, ratings if s.rated else ones)
            out.append(cache[key])
        return out

    def generator_scores(self, history: np.ndarray, ratings: np.ndarray) -> UserScores:
        """The first source's scores over every item: the source that generates candidates."""
        s = self.sources[0]
        return user_scores(self.matrices[s.matrix], history, ratings if s.rated else np.ones_like(ratings))

    def scores_at(
        self, history: np.ndarray, ratings: np.ndarray, items: np.ndarray, generator: UserScores | None = None
    ) -> np.ndarray:
        """float32 [len(sources), len(items)]: every source's scores at ``items`` (what ranking reads);
        ``generator``: ``generator_scores`` of the same history, reused for the first source's key."""
        ones = np.ones(history.size, np.float32)
        first = self.sources[0]
        done: dict[tuple[str, bool], np.ndarray] = {}
        if generator is not None:
            done[(first.matrix, first.rated)] = generator.at(items)
        out = np.zeros((len(self.sources), items.size), np.float32)
        for j, s in enumerate(self.sources):
            key = (s.matrix, s.rated)
            if key not in done:
                done[key] = self._at(s.matrix, history, ratings if s.rated else ones, items)
            out[j] = done[key]
        return out

    def _at(self, name: str, history: np.ndarray, weights: np.ndarray, items: np.ndarray) -> np.ndarray:
        t = self._transpose(name) if history.size > max(SHORT_HISTORY, items.size) else None
        if t is None:
            return user_scores(self.matrices[name], history, weights).at(items)
        dense = np.zeros(t.shape[1], np.float32)  # the weights at the history, 0 elsewhere: a gemv over
        dense[history] = weights  # the candidates' rows beats gathering their history columns
        return (t[items] @ dense).astype(np.float32)

    def _transpose(self, name: str) -> np.ndarray | None:
        """The matrix's transposed copy, built at first use; None for a sparse or too large one."""
        m = self.matrices[name]
        if not isinstance(m, np.ndarray) or m.shape[0] > TRANSPOSE_MAX_ITEMS:
            return None
        if name not in self._transposed:
            self._transposed[name] = np.ascontiguousarray(m.T)
        return self._transposed[name]

    def prepare(self) -> None:
        """Build the transposed copies now (serving: at load, so no request pays for them)."""
        for name in self.matrices:
            self._transpose(name)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for name, m in self.matrices.items():
            if isinstance(m, np.ndarray):
                arrays[f"{name}.dense"] = m
            else:
                arrays |= {f"{name}.indptr": m.indptr, f"{name}.indices": m.indices, f"{name}.data": m.data}
        meta = {"sources": [s.__dict__ for s in self.sources], "matrices": list(self.matrices)}
        np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)

    @classmethod
    def load(cls, path: Path) -> ItemItem:
        with np.load(path) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            matrices: dict[str, Matrix] = {}
            for name in meta["matrices"]:
                if f"{name}.dense" in z.files:
                    matrices[name] = z[f"{name}.dense"].astype(np.float32, copy=False)
                else:
                    matrices[name] = SparseRows(
                        z[f"{name}.indptr"].astype(np.int64, copy=False),
                        z[f"{name}.indices"].astype(np.int32, copy=False),
                        z[f"{name}.data"].astype(np.float32, copy=False),
                    )
        sources = tuple(Source(str(s["name"]), str(s["matrix"]), bool(s["rated"])) for s in meta["sources"])
        return cls(matrices, sources)
