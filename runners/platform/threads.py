"""Thread pools of the numeric libraries in a serving worker.

numpy's OpenBLAS and FAISS's OpenMP start one thread per core and hand work to them even for the
per-request math here (one user vector: a 600x200 product, one FAISS query), then spin-wait for them.
On a loaded host those threads compete with Triton and the other workers: measured on 2 cores, the
worker's CPU per cache-miss /recommend fell from 4.1 ms to 2.1 ms with one thread. Parallelism comes
from workers and Triton instances instead (``FOLIO_NUMERIC_THREADS`` raises it).
"""

from __future__ import annotations

import faiss
from threadpoolctl import threadpool_info, threadpool_limits


def limit_numeric_threads(n: int) -> dict[str, int]:
    """Cap BLAS and OpenMP pools of this process at ``n`` threads; returns {library path: threads}."""
    threadpool_limits(limits=n)
    faiss.omp_set_num_threads(n)
    return {info["filepath"]: info["num_threads"] for info in threadpool_info()}
