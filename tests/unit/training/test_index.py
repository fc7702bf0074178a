"""The served FAISS index: exact below the threshold, IVF-Flat above, and the label stored for it."""

import faiss
import numpy as np

from training.index import build_hnsw, build_index, index_kind


def _vectors(n: int, d: int = 8) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_build_index_is_exact_up_to_the_threshold_and_ivf_above():
    x = _vectors(2000)
    assert index_kind(build_index(x, exact_max_items=2000)) == "flat"
    ivf = build_index(x, exact_max_items=1999)
    assert index_kind(ivf) == "ivf" and ivf.ntotal == 2000


def test_index_kind_names_hnsw_and_unknown_indexes():
    x = _vectors(300)
    assert index_kind(build_hnsw(x)) == "hnsw"
    assert index_kind(faiss.IndexLSH(8, 16)) == "IndexLSH"
