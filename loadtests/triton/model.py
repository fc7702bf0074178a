"""What the Triton benchmark reads from a stored version: its request pool (prebuilt gRPC tensors, realistic
when the retrieval artifacts are there), its parity metadata, and its rankers run in process by ONNX
Runtime (the context of the Triton figures: throughput with k requests merged per run, and the profiler's
split of one request's kernel time)."""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as grpcaio

from loadtests.triton.config import MERGED
from models import version
from models.version import PRECISIONS
from runners.triton.client import ranker_inputs


@dataclass
class RequestPool:
    """Prebuilt request tensors; `counts[i]` candidates in request i."""

    inputs: list[list[grpcaio.InferInput]]
    counts: np.ndarray
    # (item_ids int64 [n], user row float32 [1, D], candidate features float32 [n * F], flat)
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    source: str

    @property
    def mean_candidates(self) -> float:
        return float(self.counts.mean())


def request_pool(model_dir: Path, size: int, candidates: int, seed: int = 0) -> RequestPool:
    """`size` requests of (up to) `candidates` ids each, realistic when the retrieval artifacts exist."""
    rng = np.random.default_rng(seed)
    meta = version.RankerMeta.read(model_dir)
    n_items, dim, f = meta.n_items, meta.user_feature_dim, meta.candidate_feature_dim
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    needed = (
        version.RETRIEVAL,
        version.ITEM_ITEM,
        version.INDEX,
        version.HISTORIES,
        version.CATALOG,
        version.POPULARITY,
    )
    if meta.feature_spec is not None and all((model_dir / name).exists() for name in needed):
        import faiss

        from models.candidates import DEFAULT_RATING_WEIGHT, user_candidates
        from models.features import genre_matrix, item_tables, user_features
        from models.item_item import ItemItem
        from models.user_encoder import RetrievalWeights

        weights = RetrievalWeights.load(str(model_dir / version.RETRIEVAL))
        item_item = ItemItem.load(model_dir / version.ITEM_ITEM)
        index = faiss.read_index(str(model_dir / version.INDEX))
        catalog = version.read_catalog(model_dir)
        years = np.array([np.nan if c.get("year") is None else c["year"] for c in catalog], np.float32)
        genres = genre_matrix([tuple(c["genres"]) for c in catalog], meta.feature_spec.genres)
        tables = item_tables(version.read_popularity(model_dir), years, genres)
        stored = version.read_histories(model_dir)
        indptr, indices = stored.indptr, stored.indices
        rated = stored.weights if stored.weights is not None else np.full(indices.size, DEFAULT_RATING_WEIGHT)
        rows = rng.choice(len(indptr) - 1, size=size, replace=len(indptr) - 1 < size)
        for r in rows:  # runners/stages/retrieval.RetrievalStage.candidates, without a ServedModel
            hist = indices[indptr[r] : indptr[r + 1]].astype(np.int64)
            ratings = rated[indptr[r] : indptr[r + 1]].astype(np.float32)
            vec = weights.user_vectors([hist])
            user = user_features(vec, [hist], tables).astype(np.float32)
            _, found = index.search(vec, min(n_items, candidates + len(hist)))
            seen = np.zeros(n_items, dtype=bool)
            seen[hist] = True
            top = found[0][(found[0] >= 0) & ~seen[np.maximum(found[0], 0)]][:candidates].astype(np.int64)
            c = user_candidates(vec[0], weights.item_vectors, top, item_item, hist, ratings, seen, candidates)
            if c.items.size == 0:  # a user who has seen everything: nothing to rank, as in the service
                continue
            raw.append(
                (
                    np.ascontiguousarray(c.items, dtype=np.int64),
                    np.ascontiguousarray(user.reshape(1, dim)),
                    np.ascontiguousarray(c.features, dtype=np.float32).reshape(-1),
                )
            )
        source = "retrieval: training users' feature rows, their retrieval + item-item candidates"
    if not raw:
        for _ in range(size):
            ids = rng.integers(0, n_items, size=candidates, dtype=np.int64)
            user = rng.standard_normal((1, dim)).astype(np.float32)
            raw.append((ids, user, rng.standard_normal(candidates * f).astype(np.float32)))
        source = "random: uniform ids, Gaussian user rows and candidate features (no retrieval artifacts)"
    counts = np.array([ids.size for ids, _, _ in raw], dtype=np.int64)
    return RequestPool([ranker_inputs(*r) for r in raw], counts, raw, source)


def model_version(tag: str | None, model_dir: Path | None) -> tuple[Path, str, dict[str, Any]]:
    """(directory, label, metadata) of the version to measure: `--model-dir` or the stored `--tag`."""
    if model_dir is not None:
        return model_dir, str(model_dir), version.read_metrics(model_dir)
    from models import registry

    model = registry.get(tag) if tag else registry.production()
    if model is None:
        raise SystemExit("no production model in the store: pass --tag or --model-dir")
    return Path(model.path), str(model.tag), dict(model.info.metadata)


def parity(meta: dict[str, Any]) -> dict[str, Any]:
    """The stored NDCG@10 per precision and INT8's delta to FP32 (training's parity check)."""
    parity = meta.get("parity") or {}
    out: dict[str, Any] = {}
    for key in ("ndcg", "test_ndcg"):
        ndcg = parity.get(key) or {}
        if "fp32" in ndcg:
            out[key] = {v: float(ndcg[v]) for v in PRECISIONS if v in ndcg}
            out[f"{key}_delta_int8"] = float(ndcg.get("int8", math.nan)) - float(ndcg["fp32"])
    if "top10_agreement" in parity:
        out["top10_agreement"] = parity["top10_agreement"]
    return out


# --- in-process ONNX Runtime --------------------------------------------------------------------------


def ort_session(path: Path, profile_prefix: str | None = None) -> ort.InferenceSession:
    """One-thread CPU session (training.export.session's settings, without importing PyTorch with it);
    with ``profile_prefix`` ONNX Runtime's profiler records every run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_baseline(model_dir: Path, pool: RequestPool, seconds: float, repeats: int = 3) -> dict[str, Any]:
    """Candidates/s of each variant in this process, 1 thread, with k requests merged per run (k in MERGED),
    as the Python backend merges a dynamic batch: `batch_1` is the unbatched ceiling. Best of `repeats`
    windows of `seconds` each."""
    out: dict[str, Any] = {}
    for variant in PRECISIONS:
        session = ort_session(model_dir / version.ranker_file(variant))
        row: dict[str, Any] = {}
        for k in MERGED:
            feeds_list = []
            for s in range(0, min(len(pool.raw), 8 * k), k):
                chunk = pool.raw[s : s + k]
                ids = np.concatenate([c[0] for c in chunk])
                feeds_list.append(
                    {
                        "item_ids": ids,
                        "user_features": np.concatenate([c[1] for c in chunk]),
                        "candidate_ends": np.cumsum([c[0].size for c in chunk]).astype(np.int32),
                        "candidate_features": np.concatenate([c[2] for c in chunk]),
                    }
                )
            for feeds in feeds_list[:2]:
                session.run(["scores"], feeds)
            best: dict[str, float] = {}
            for _ in range(repeats):  # best of `repeats`: the machine is shared, contention only slows
                runs = cands = requests = 0
                t0 = time.perf_counter()
                while (elapsed := time.perf_counter() - t0) < seconds or runs == 0:
                    feeds = feeds_list[runs % len(feeds_list)]
                    session.run(["scores"], feeds)
                    runs += 1
                    cands += feeds["item_ids"].size
                    requests += feeds["candidate_ends"].size
                if cands / elapsed > best.get("candidates_per_s", 0.0):
                    best = {
                        "requests_per_run": requests / runs,
                        "ms_per_run": elapsed / runs * 1e3,
                        "candidates_per_s": cands / elapsed,
                        "requests_per_s": requests / elapsed,
                    }
            row[f"batch_{k}"] = best
        out[variant] = row
    return out


# ONNX Runtime's node kinds after graph optimization, grouped for the INT8 bound.
MATMUL_OPS = {"Gemm", "FusedGemm", "QGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}  # fmt: skip
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def ort_op_profile(
    model_dir: Path, pool: RequestPool, runs: int = 200, warmup: int = 20
) -> dict[str, dict[str, float]]:
    """Microseconds per single-request run of each variant by node kind (ONNX Runtime's profiler, 1
    thread): matrix products, (de)quantization, and the rest (item-table gathers, feature arithmetic),
    which INT8 leaves in FP32."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="folio-ort-profile-") as tmp:
        for variant in PRECISIONS:
            session = ort_session(model_dir / version.ranker_file(variant), profile_prefix=f"{tmp}/{variant}")
            for i in range(warmup + runs):
                ids, row, feats = pool.raw[i % len(pool.raw)]
                ends = np.array([ids.size], np.int32)
                feeds = {
                    "item_ids": ids,
                    "user_features": row,
                    "candidate_ends": ends,
                    "candidate_features": feats,
                }
                session.run(["scores"], feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
            starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
            assert len(starts) == warmup + runs, f"{len(starts)} model_run events"
            us = {"matmul_us": 0.0, "qdq_us": 0.0, "other_us": 0.0}
            for e in events:
                if e["ts"] < starts[warmup]:
                    continue  # a warm-up run
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    op = e["args"].get("op_name", "")
                    key = "matmul_us" if op in MATMUL_OPS else "qdq_us" if op in QDQ_OPS else "other_us"
                    us[key] += e["dur"] / runs
            out[variant] = {**us, "total_us": sum(us.values())}
    return out
