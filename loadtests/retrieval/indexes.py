"""The retrieval benchmark's data (a synthetic catalog shaped like learned embeddings), the FAISS indexes
it compares, and how it times them and scores their recall."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import psutil

from training.index import build_ivf

FAMILIES = ("hnsw", "ivf", "ivf_sq8")
KNOB = {"hnsw": "efSearch", "ivf": "nprobe", "ivf_sq8": "nprobe"}


# --- data ---------------------------------------------------------------------------------------------


def synthetic_catalog(
    n_items: int, dim: int, n_queries: int, n_clusters: int = 256, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(items float32 [n_items, dim], queries float32 [n_queries, dim]), both L2-normalized rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    offset = rng.standard_normal(dim).astype(np.float32)
    offset *= 0.2 / np.linalg.norm(offset)  # shared direction: mean pairwise cosine ~0.04
    # Within-cluster noise: variance ~ 1/rank along a random basis (a decaying spectrum), total 1.5^2.
    lam = 1.0 / np.arange(1, dim + 1)
    basis_q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    basis = (1.5 * np.sqrt(lam / lam.sum())[:, None] * basis_q.T).astype(np.float32)
    labels = rng.integers(0, n_clusters, n_items)
    items = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 65536):  # chunks bound the temporaries at 1M x 200
        stop = min(n_items, start + 65536)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) @ basis
        items[start:stop] = centers[labels[start:stop]] + offset + noise
    items /= np.linalg.norm(items, axis=1, keepdims=True)

    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    queries = np.empty((n_queries, dim), dtype=np.float32)
    for r in range(n_queries):
        clusters = rng.choice(n_clusters, size=int(rng.integers(1, 4)), replace=False)
        pool = np.concatenate([order[bounds[c] : bounds[c + 1]] for c in clusters])
        if pool.size == 0:  # tiny catalogs: a cluster may be empty
            pool = np.arange(n_items)
        history = rng.choice(pool, size=int(rng.integers(5, 41)))
        v = items[history].mean(axis=0)
        v = v / np.linalg.norm(v) + 1.5 * rng.standard_normal(dim).astype(np.float32) / math.sqrt(dim)
        queries[r] = v / np.linalg.norm(v)
    return items, queries


# --- measurement ----------------------------------------------------------------------------------------


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k (ids; -1 padding never matches)."""
    hits = [np.intersect1d(f[:k], t[:k]).size for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def time_search(index: faiss.Index, queries: np.ndarray, k: int, batch: int) -> dict[str, Any]:
    """Searches ``queries`` ``batch`` rows per call; QPS, per-call latency percentiles and the ids found."""
    index.search(queries[: min(len(queries), 8 * batch)], k)  # warm-up
    ids = np.empty((len(queries), k), dtype=np.int64)
    lat = []
    for start in range(0, len(queries), batch):
        chunk = queries[start : start + batch]
        t0 = time.perf_counter()
        _, found = index.search(chunk, k)
        lat.append(time.perf_counter() - t0)
        ids[start : start + len(chunk)] = found
    total = float(np.sum(lat))
    return {
        "batch": batch,
        "queries": len(queries),
        "qps": len(queries) / total,
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "ids": ids,
    }


def public(timing: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timing.items() if k != "ids"}


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialized index: what items.faiss weighs and, roughly, what it holds in memory."""
    return int(faiss.serialize_index(index).nbytes)


def built(make: Callable[..., faiss.Index], *args: Any) -> tuple[faiss.Index, dict[str, Any]]:
    """Runs ``make(*args)`` (builds an index); the index, build seconds, serialized bytes and RSS delta."""
    before = rss()
    t0 = time.perf_counter()
    index = make(*args)
    seconds = time.perf_counter() - t0
    delta = rss() - before
    return index, {"build_s": round(seconds, 2), "index_bytes": index_bytes(index), "rss_delta_bytes": delta}


# --- indexes -------------------------------------------------------------------------------------------


def make_hnsw(items: np.ndarray, m: int, ef_construction: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(items)
    return index


def make_ivf(items: np.ndarray, nlist: int, seed: int) -> faiss.Index:
    """The served large-catalog build (training/index.py): 40 k-means points per list, 10 iterations."""
    return build_ivf(items, nlist, seed)


def make_ivf_sq8(items: np.ndarray, coarse: faiss.IndexIVF) -> faiss.Index:
    """IVF-SQ8 over the coarse centroids of ``coarse`` (an IVF index already trained): no k-means again."""
    quantizer = faiss.IndexFlatIP(items.shape[1])
    quantizer.add(coarse.quantizer.reconstruct_n(0, coarse.nlist))
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, items.shape[1], coarse.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.train(items[: min(len(items), 100_000)])  # trains the scalar quantizer only
    index.add(items)
    return index


def set_knob(index: faiss.Index, value: int) -> None:
    """efSearch of an HNSW index, nprobe of an IVF one."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index).nprobe = value


def make_flat(items: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return index
