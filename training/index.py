"""FAISS index over the item vectors: exact inner product below a catalog-size threshold, HNSW above."""

from __future__ import annotations

import faiss
import numpy as np

EXACT_MAX_ITEMS = 100_000
HNSW_M, HNSW_EF_SEARCH, HNSW_EF_CONSTRUCTION = 32, 128, 200


def build_index(vectors: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS) -> faiss.Index:
    """Inner-product index over L2-normalized float32 vectors [n, d]."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.shape[0] <= exact_max_items:
        index: faiss.Index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(x)
    return index


def recall_at_k(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k that ``index`` returns, averaged over queries."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, truth = exact.search(q, k)
    _, found = index.search(q, k)
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(truth, found, strict=True)]))


def index_report(vectors: np.ndarray, queries: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS) -> dict:
    """Kind of the served index and recall@10 against exact search, plus HNSW's recall on this catalog."""
    served = build_index(vectors, exact_max_items)
    hnsw = build_index(vectors, exact_max_items=0)
    return {
        "kind": "flat" if isinstance(served, faiss.IndexFlatIP) else "hnsw",
        "recall@10_vs_exact": recall_at_k(served, vectors, queries),
        "hnsw_recall@10_vs_exact": recall_at_k(hnsw, vectors, queries),
        "exact_max_items": exact_max_items,
    }
