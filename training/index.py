"""FAISS index over the item vectors: exact inner product below a catalog-size threshold, IVF-Flat above.

The ANN choice is measured by loadtests/retrieval_bench.py (1M synthetic items x 200 dims, one search
thread, 2-core machine, docs/benchmarks/retrieval.json): IVF-Flat with nlist = 4*sqrt(n) and nprobe = 32 had
recall@10 0.99 against exact search at 77x exact's QPS one query per call, and recall@500 0.95 at the
service's candidate depth (FOLIO_CANDIDATES = 500); nprobe = 16 already reaches recall@10 0.97 but only
0.89 at depth 500. HNSW (M=32, efConstruction=40) stayed below recall@10 0.91 up to efSearch=512 on the
same data and took 132 s to build against 25 s for IVF. ``build_ivf`` is the very build the benchmark
times, so the served index is the measured one. nprobe is stored in items.faiss.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_MAX_ITEMS = 100_000
IVF_LISTS_PER_SQRT_N = 4  # nlist = 4 * sqrt(n)
IVF_NPROBE = 32
IVF_TRAIN_PER_LIST = 40  # k-means sample: faiss asks for >= 39 points per centroid
IVF_KMEANS_ITER = 10
# HNSW: only the comparison in index_report (what training/report.py prints as "HNSW on this catalog").
HNSW_M, HNSW_EF_SEARCH, HNSW_EF_CONSTRUCTION = 32, 128, 200


def ivf_nlist(n_items: int) -> int:
    """4 * sqrt(n) lists, fewer on small catalogs so that each list has IVF_TRAIN_PER_LIST training points."""
    return max(1, min(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n_items)), n_items // IVF_TRAIN_PER_LIST))


def build_ivf(vectors: np.ndarray, nlist: int | None = None, seed: int = 0) -> faiss.IndexIVFFlat:
    """IVF-Flat, inner product, over L2-normalized float32 vectors [n, d]; nprobe = IVF_NPROBE."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    nlist = nlist or ivf_nlist(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = IVF_KMEANS_ITER
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = min(IVF_NPROBE, nlist)
    return index


def build_hnsw(vectors: np.ndarray) -> faiss.IndexHNSWFlat:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(x)
    return index


def build_index(vectors: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS) -> faiss.Index:
    """Inner-product index over L2-normalized float32 vectors [n, d]: exact up to ``exact_max_items``."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.shape[0] > exact_max_items:
        return build_ivf(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def index_kind(index: faiss.Index) -> str:
    """The label a version's metadata stores for its index: "flat", "ivf" or "hnsw"."""
    for kind, cls in (("flat", faiss.IndexFlat), ("ivf", faiss.IndexIVF), ("hnsw", faiss.IndexHNSW)):
        if isinstance(index, cls):
            return kind
    return type(index).__name__


def recall_at_k(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k that ``index`` returns, averaged over queries."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, truth = exact.search(q, k)
    _, found = index.search(q, k)
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(truth, found, strict=True)]))


def index_report(
    served: faiss.Index, vectors: np.ndarray, queries: np.ndarray, exact_max_items: int = EXACT_MAX_ITEMS
) -> dict:
    """Kind of the served index (built by ``build_index``), its recall@10 against exact search, and the
    ANN's and HNSW's here."""
    return {
        "kind": index_kind(served),
        "recall@10_vs_exact": recall_at_k(served, vectors, queries),
        "ann_recall@10_vs_exact": recall_at_k(build_index(vectors, exact_max_items=0), vectors, queries),
        "hnsw_recall@10_vs_exact": recall_at_k(build_hnsw(vectors), vectors, queries),
        "exact_max_items": exact_max_items,
    }
