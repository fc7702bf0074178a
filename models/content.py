"""Item cold start: a book's content mapped into the collaborative item space (numpy + scipy only).

A book with no interactions has no trained vector. ``ContentEncoder`` predicts one from its record,
so it can join the FAISS index (and answer ``/similar``) without retraining:

    x = features(record)              sparse; one L2-normalized sub-vector per block, times its weight
    v = normalize(x @ W + b)          float32 [dim]

Feature blocks (every token is keyed by a stable 64-bit blake2b hash of ``"<block>\\x1f<token>"``):
``genre`` (lowercased genres), ``genre_pair`` (pairs of them), ``author`` (each comma-separated name,
lowercased), ``year`` (5-, 10- and 25-year buckets, or ``unknown``), ``title`` and ``description``
(lowercased word tokens, title bigrams too). The vocabulary is the set of keys seen at fit time; unseen
keys are dropped. Within a block each token weighs its IDF (fit-time document frequencies).

``W, b`` come from ridge regression with an unpenalized intercept, fitted in closed form from the warm
items' features to their L2-normalized collaborative vectors; the penalty is chosen on a validation
share of the warm items (mean cosine between predicted and trained vectors). ``save``/``load`` use one
``.npz`` without pickle.

Cost: the fit eigendecomposes a dense min(items, features)^2 Gram matrix twice (O(m^3) time, O(m^2)
float64 memory): about 10 s for ML-1M's 2,811 warm items and 8,403 features on one core. The file
holds one float32 row of ``dim`` per known feature (6.8 MB there at dim 200); encoding one book takes
about 0.2 ms (tokenize, hash, one sparse row times ``W``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "BLOCKS",
    "DEFAULT_BLOCK_WEIGHTS",
    "BookRecord",
    "ContentEncoder",
    "book_records",
    "feature_keys",
    "tokens",
]

FORMAT = 1
BLOCKS = ("genre", "genre_pair", "author", "year", "title", "description")
# Equal weights: on ML-1M and ML-100K (training/cold_start_eval.py) title 0.5 or 2, year 0.5 or 2 and
# genre_pair 0 measured within noise or worse. ``author`` and ``description`` are untested there
# (MovieLens has neither) and keep the neutral weight.
DEFAULT_BLOCK_WEIGHTS: Mapping[str, float] = {
    "genre": 1.0,
    "genre_pair": 1.0,
    "author": 1.0,
    "year": 1.0,
    "title": 1.0,
    "description": 1.0,
}
LAMBDAS = tuple(float(x) for x in np.geomspace(1e-3, 1e3, 19))  # relative to the mean squared row norm
YEAR_BUCKETS = (5, 10, 25)
MIN_YEAR, MAX_YEAR = -3000, 2100
_WORD = re.compile(r"[^\W_]+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class BookRecord:
    """A catalog record as serving and training know it (Goodbooks-style ``authors``: comma-separated)."""

    title: str
    authors: str = ""
    genres: tuple[str, ...] = ()
    year: float | None = None
    description: str | None = None


def book_records(
    titles: Sequence[str],
    authors: Sequence[str],
    genres: Sequence[tuple[str, ...]],
    years: Sequence[float] | np.ndarray,
    descriptions: Sequence[str | None] | None = None,
) -> list[BookRecord]:
    """Records from a catalog's columns (e.g. ``training.dataset.Catalog``); NaN years become None."""
    out = []
    for i, title in enumerate(titles):
        y = float(years[i])
        desc = descriptions[i] if descriptions is not None else None
        out.append(BookRecord(title, authors[i], tuple(genres[i]), None if math.isnan(y) else y, desc))
    return out


def _words(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


def tokens(record: BookRecord) -> list[tuple[int, str]]:
    """(block index into BLOCKS, token) pairs of one record, each pair once, in a deterministic order."""
    out: list[tuple[int, str]] = []
    genres = sorted({g.strip().lower() for g in record.genres if g.strip()})
    out += [(0, g) for g in genres]
    out += [(1, f"{a}|{b}") for i, a in enumerate(genres) for b in genres[i + 1 :]]
    names = (_SPACE.sub(" ", a).strip().lower() for a in (record.authors or "").split(","))
    out += [(2, a) for a in dict.fromkeys(n for n in names if n)]
    year = record.year
    if year is None or not math.isfinite(year):
        out.append((3, "unknown"))
    else:
        y = math.floor(min(max(year, MIN_YEAR), MAX_YEAR))
        out += [(3, f"{w}:{y // w}") for w in YEAR_BUCKETS]
    words = _words(record.title)
    title = list(dict.fromkeys(words + [f"{a} {b}" for a, b in itertools.pairwise(words)]))
    out += [(4, t) for t in title]
    out += [(5, t) for t in dict.fromkeys(_words(record.description))]
    return out


def _key(block: int, token: str) -> int:
    digest = hashlib.blake2b(f"{BLOCKS[block]}\x1f{token}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def feature_keys(record: BookRecord) -> tuple[np.ndarray, np.ndarray]:
    """(int64 keys, int8 block indices) of a record's tokens: its raw, unweighted features."""
    toks = tokens(record)
    keys = np.fromiter((_key(b, t) for b, t in toks), dtype=np.int64, count=len(toks))
    return keys, np.fromiter((b for b, _ in toks), dtype=np.int8, count=len(toks))


def _rows(
    records: Sequence[BookRecord], column: Mapping[int, int], idf: np.ndarray, block_weights: np.ndarray
) -> sp.csr_matrix:
    """CSR [len(records), len(column)]: known keys only, IDF-weighted, each block L2-normalized and scaled."""
    indptr, indices, data = [0], [], []
    for rec in records:
        keys, blocks = feature_keys(rec)
        cols = np.fromiter((column.get(int(k), -1) for k in keys), dtype=np.int64, count=keys.size)
        known = cols >= 0
        cols, blocks = cols[known], blocks[known]
        vals = idf[cols].astype(np.float64)
        norms = np.zeros(len(BLOCKS))
        np.add.at(norms, blocks, vals**2)
        scale = np.divide(block_weights, np.sqrt(norms), out=np.zeros(len(BLOCKS)), where=norms > 0)
        vals = vals * scale[blocks]
        keep = vals != 0
        indices.append(cols[keep])
        data.append(vals[keep])
        indptr.append(indptr[-1] + int(keep.sum()))
    return sp.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, np.int64),
            np.asarray(indptr),
        ),
        shape=(len(records), len(column)),
    )


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Ridge:
    """Weighted ridge ``min sum_i w_i |y_i - W^T x_i - b|^2 + lam |W|^2`` (b unpenalized), decomposed once
    (eigh of the smaller Gram matrix: features x features or items x items) so that each ``lam`` costs
    only matrix products."""

    def __init__(self, x: sp.csr_matrix, y: np.ndarray, w: np.ndarray) -> None:
        n, f = x.shape
        p = w / w.sum()
        self.x = x
        self.xbar = np.asarray(x.T @ p).ravel()
        self.ybar = y.T @ p
        yc = y - self.ybar
        self.scale = float(x.multiply(x).sum() / n)  # mean squared row norm: lambdas are relative to it
        self.primal = f <= n
        if self.primal:
            g = (x.T @ sp.diags(w) @ x).toarray() - w.sum() * np.outer(self.xbar, self.xbar)
            self.evals, self.vecs = np.linalg.eigh(g)
            self.proj = self.vecs.T @ np.asarray(x.T @ (w[:, None] * yc))
        else:
            k = (x @ x.T).toarray()
            kx = np.asarray(x @ self.xbar).ravel()
            k += float(self.xbar @ self.xbar) - kx[:, None] - kx[None, :]
            self.sw = np.sqrt(w)
            k *= self.sw[:, None] * self.sw[None, :]
            self.evals, self.vecs = np.linalg.eigh(k)
            self.proj = self.vecs.T @ (self.sw[:, None] * yc)
        self.evals = np.maximum(self.evals, 0.0)

    def solve(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """(W [features, dim], b [dim]) for the penalty ``lam * scale``."""
        coef = self.vecs @ (self.proj / (self.evals + lam * self.scale)[:, None])
        if self.primal:
            weights = coef
        else:
            bw = self.sw[:, None] * coef
            weights = np.asarray(self.x.T @ bw) - np.outer(self.xbar, bw.sum(0))
        return weights, self.ybar - weights.T @ self.xbar


class ContentEncoder:
    """Maps book records to L2-normalized float32 vectors in the collaborative item space.

    ``keys`` int64 [F] (sorted, unique), ``idf`` float32 [F], ``weights`` float32 [F, dim],
    ``bias`` float32 [dim], ``block_weights`` float32 [len(BLOCKS)]; ``report`` holds how it was fitted.
    """

    def __init__(
        self,
        keys: np.ndarray,
        idf: np.ndarray,
        weights: np.ndarray,
        bias: np.ndarray,
        block_weights: np.ndarray,
        report: dict[str, Any] | None = None,
    ) -> None:
        self.keys, self.idf, self.weights, self.bias = keys, idf, weights, bias
        self.block_weights = block_weights
        self.report = report or {}
        self._column = {int(k): i for i, k in enumerate(keys.tolist())}

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.keys.shape[0])

    def features(self, records: Sequence[BookRecord]) -> sp.csr_matrix:
        """float64 CSR [len(records), n_features]."""
        return _rows(records, self._column, self.idf, self.block_weights.astype(np.float64))

    def encode(self, records: Sequence[BookRecord]) -> np.ndarray:
        """float32 [len(records), dim], L2-normalized. A record with no known feature gets the
        normalized intercept (the content-free average of the warm items)."""
        x = self.features(records).astype(np.float32)  # float64 @ float32 would copy the weights
        raw = np.asarray(x @ self.weights, dtype=np.float32) + self.bias
        return _normalize(raw.reshape(len(records), self.dim)).astype(np.float32)

    @classmethod
    def fit(
        cls,
        records: Sequence[BookRecord],
        vectors: np.ndarray,
        *,
        block_weights: Mapping[str, float] | None = None,
        sample_weight: np.ndarray | None = None,
        lambdas: Sequence[float] = LAMBDAS,
        valid_share: float = 0.1,
        seed: int = 0,
        min_df: int = 1,
        use_idf: bool = True,
    ) -> ContentEncoder:
        """Fit on warm items' ``records`` and their collaborative ``vectors`` [n, dim] (L2-normalized
        here). The penalty (``lambdas``, relative to the mean squared feature-row norm) is the one with
        the best mean validation cosine on a random ``valid_share`` of the items; the encoder is then
        refitted on all of them. ``sample_weight`` [n] weighs items in the loss (None: equal)."""
        y = _normalize(np.asarray(vectors, dtype=np.float64))
        n = len(records)
        if y.shape[0] != n or n < 2:
            raise ValueError(f"need one vector per record and at least 2 records (got {n}, {y.shape[0]})")
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,) or not (w > 0).all():
            raise ValueError("sample_weight must hold one positive weight per record")
        bw = dict(DEFAULT_BLOCK_WEIGHTS) | dict(block_weights or {})
        if unknown := set(bw) - set(BLOCKS):
            raise ValueError(f"unknown feature blocks {sorted(unknown)}; known: {BLOCKS}")
        block_w = np.asarray([bw[b] for b in BLOCKS], dtype=np.float32)

        per_record = []
        for rec in records:  # keys of zero-weight blocks stay out of the vocabulary
            k, blocks = feature_keys(rec)
            per_record.append(np.unique(k[block_w[blocks] != 0]))
        all_keys, df = np.unique(np.concatenate(per_record), return_counts=True)
        keys = all_keys[df >= min_df]
        df = df[df >= min_df]
        idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0 if use_idf else np.ones(keys.size)).astype(np.float32)
        enc = cls(keys, idf, np.zeros((keys.size, y.shape[1]), np.float32), np.zeros(y.shape[1]), block_w)
        x = enc.features(records)

        rng = np.random.default_rng(seed)
        valid = np.zeros(n, dtype=bool)
        valid[rng.choice(n, max(1, round(valid_share * n)), replace=False)] = True
        ridge = _Ridge(x[~valid], y[~valid], w[~valid])
        curve = []
        for lam in lambdas:
            weights, bias = ridge.solve(lam)
            pred = _normalize(np.asarray(x[valid] @ weights) + bias)
            curve.append(float(np.mean(np.sum(pred * y[valid], axis=1))))
        best = int(np.argmax(curve))
        weights, bias = _Ridge(x, y, w).solve(lambdas[best])
        report = {
            "lambda": float(lambdas[best]),
            "valid_cosine": curve[best],
            "valid_curve": dict(zip((f"{lam:.4g}" for lam in lambdas), curve, strict=True)),
            "n_items": n,
            "n_valid": int(valid.sum()),
            "n_features": int(keys.size),
            "block_weights": dict(zip(BLOCKS, block_w.tolist(), strict=True)),
            "min_df": min_df,
            "use_idf": use_idf,
        }
        return cls(keys, idf, weights.astype(np.float32), bias.astype(np.float32), block_w, report)

    def save(self, path: str | Path) -> None:
        """One ``.npz`` (no pickle): the arrays above plus ``blocks``, ``format`` and ``report`` (JSON)."""
        np.savez(
            path,
            format=np.int64(FORMAT),
            blocks=np.asarray(BLOCKS),
            keys=self.keys,
            idf=self.idf,
            weights=self.weights,
            bias=self.bias,
            block_weights=self.block_weights,
            report=np.asarray(json.dumps(self.report)),
        )

    @classmethod
    def load(cls, path: str | Path) -> ContentEncoder:
        """Raises ValueError naming the file and the problem when it is not a valid encoder file."""

        def bad(problem: str) -> ValueError:
            return ValueError(f"{path}: not a content encoder file: {problem}")

        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise bad(str(e) or type(e).__name__) from e
        need = {"format", "blocks", "keys", "idf", "weights", "bias", "block_weights", "report"}
        if missing := need - set(arrays):
            raise bad(f"missing {sorted(missing)}")
        fmt = arrays["format"]
        if fmt.shape != () or fmt.dtype.kind not in "iu" or int(fmt) != FORMAT:
            raise bad(f"format {fmt!r}, expected {FORMAT}")
        if tuple(arrays["blocks"].tolist()) != BLOCKS:
            raise bad(f"feature blocks {arrays['blocks'].tolist()}, expected {list(BLOCKS)}")
        keys, idf, weights, bias, bw = (
            arrays[k] for k in ("keys", "idf", "weights", "bias", "block_weights")
        )
        if keys.dtype != np.int64 or keys.ndim != 1:
            raise bad(f"keys: int64 [F], got {keys.dtype} {keys.shape}")
        if not np.all(np.diff(keys) > 0):
            raise bad("keys: not sorted and unique")
        f = keys.shape[0]
        if idf.dtype != np.float32 or idf.shape != (f,):
            raise bad(f"idf: float32 [{f}], got {idf.dtype} {idf.shape}")
        if weights.dtype != np.float32 or weights.ndim != 2 or weights.shape[0] != f or weights.shape[1] < 1:
            raise bad(f"weights: float32 [{f}, dim >= 1], got {weights.dtype} {weights.shape}")
        if bias.dtype != np.float32 or bias.shape != (weights.shape[1],):
            raise bad(f"bias: float32 [{weights.shape[1]}], got {bias.dtype} {bias.shape}")
        if bw.dtype != np.float32 or bw.shape != (len(BLOCKS),):
            raise bad(f"block_weights: float32 [{len(BLOCKS)}], got {bw.dtype} {bw.shape}")
        for name, a in (("idf", idf), ("weights", weights), ("bias", bias), ("block_weights", bw)):
            if not np.isfinite(a).all():
                raise bad(f"{name}: non-finite values")
        try:
            report = json.loads(str(arrays["report"]))
        except json.JSONDecodeError as e:
            raise bad(f"report: {e}") from e
        return cls(keys, idf, weights, bias, bw, report if isinstance(report, dict) else {})
