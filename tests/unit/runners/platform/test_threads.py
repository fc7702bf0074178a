"""Serving workers cap the numeric libraries' thread pools."""

from __future__ import annotations

import faiss
from threadpoolctl import threadpool_info, threadpool_limits

from runners.platform.threads import limit_numeric_threads


def test_every_pool_is_capped() -> None:
    before = max(i["num_threads"] for i in threadpool_info())
    try:
        pools = limit_numeric_threads(1)
        assert pools and set(pools.values()) == {1}, pools  # numpy's OpenBLAS, FAISS's OpenBLAS + OpenMP
    finally:
        threadpool_limits(limits=before)
        faiss.omp_set_num_threads(before)
