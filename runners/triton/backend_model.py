"""Triton Python-backend model serving the ONNX ranker at one precision with ONNX Runtime (CPU).

`runners/triton/repository.py` copies this file as `<model>/1/model.py` next to `<model>/1/model.onnx`.

Per request (the dynamic batcher may hand several to one `execute`; `allow_ragged_batch` on item_ids
and candidate_features lets their candidate counts differ):

    item_ids            TYPE_INT64 [1, n]     candidate item indices of one request
    user_features       TYPE_FP32  [1, D]     the request's user row
    candidate_features  TYPE_FP32  [1, n*F]   F floats per candidate, flat, in item_ids order
    -> scores           TYPE_FP32  [1, n]     one score per candidate, in the order of item_ids

`execute` merges consecutive requests of the batch into ONNX Runtime runs of at most
`max_candidates_per_run` candidates (a larger request runs alone), using the ranker contract
(models/ranker.py: item_ids int64 [R], user_features float32 [B, D], candidate_ends int32 [B]
cumulative counts, candidate_features float32 [R*F] -> scores float32 [R]), then splits the scores
back per request. Why not one run for the whole batch: on CPU this ranker's cost per candidate grows
with the run (activations leave the cache; measured INT8, 1 thread: 905k candidates/s at 500 a run,
445k at 32,000), while the batch still saves the backend's per-execute overhead. A malformed request
(wrong batch size, ids out of range, candidate_features not n*F values or not finite) gets its own
error response; the others are still served.

Model config parameters (string values): `candidate_feature_dim` (F, required), `intra_op_num_threads`
(default 1), `n_items` (ids must lie in [0, n_items); optional), `onnx_file` (default model.onnx),
`max_candidates_per_run` (default 1024).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

try:  # only importable inside the Triton stub; the pure helpers below are testable without it
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


class RequestError(ValueError):
    """A request that can't be scored; answered with a per-request error."""


def validate_request(
    item_ids: np.ndarray,
    user_features: np.ndarray,
    candidate_features: np.ndarray,
    n_items: int | None,
    candidate_feature_dim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Check one request's tensors; return its item ids (flat int64) and candidate features (flat
    float32, n * candidate_feature_dim values)."""
    if item_ids.ndim != 2 or item_ids.shape[0] != 1:
        raise RequestError(f"item_ids must have shape [1, n] (one request), got {list(item_ids.shape)}")
    if user_features.ndim != 2 or user_features.shape[0] != 1:
        raise RequestError(f"user_features must have shape [1, D], got {list(user_features.shape)}")
    ids = item_ids.reshape(-1)
    want = [1, ids.size * candidate_feature_dim]
    if list(candidate_features.shape) != want:
        raise RequestError(
            f"candidate_features must have shape [1, n*F] = {want} (n = {ids.size} item_ids, "
            f"F = {candidate_feature_dim}), got {list(candidate_features.shape)}"
        )
    feats = candidate_features.reshape(-1)
    if ids.size and n_items is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n_items:
            raise RequestError(f"item_ids must lie in [0, {n_items}), got values in [{lo}, {hi}]")
    if feats.size and not np.isfinite(feats).all():
        raise RequestError("candidate_features must be finite (found NaN or infinity)")
    return ids, feats


def merge(
    ids: list[np.ndarray], user_rows: list[np.ndarray], candidate_features: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-request ids and flat candidate features, stack user rows, and compute the
    cumulative `candidate_ends` (int32): (item_ids, user_features, candidate_ends, candidate_features)."""
    counts = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    item_ids = np.concatenate(ids).astype(np.int64, copy=False)
    user_features = np.concatenate(user_rows, axis=0).astype(np.float32, copy=False)
    candidate_ends = np.cumsum(counts).astype(np.int32)
    feats = np.concatenate(candidate_features).astype(np.float32, copy=False)
    return item_ids, user_features, candidate_ends, feats


def runs(counts: list[int], limit: int) -> list[slice]:
    """Consecutive groups of requests with at most ``limit`` candidates in all (a larger one alone)."""
    groups: list[slice] = []
    start, total = 0, 0
    for i, n in enumerate(counts):
        if i > start and total + n > limit:
            groups.append(slice(start, i))
            start, total = i, 0
        total += n
    if counts:
        groups.append(slice(start, len(counts)))
    return groups


def split(scores: np.ndarray, candidate_ends: np.ndarray) -> list[np.ndarray]:
    """Inverse of `merge` for the model output: one score array per request."""
    if scores.shape[0] != (int(candidate_ends[-1]) if len(candidate_ends) else 0):
        raise RuntimeError(f"model returned {scores.shape[0]} scores for {candidate_ends[-1]} candidates")
    return np.split(scores, candidate_ends[:-1])


class TritonPythonModel:
    """The ranker at one precision, served through ONNX Runtime's CPU execution provider."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.model_name = config["name"]
        self.n_items = int(params["n_items"]) if params.get("n_items") else None
        f = params.get("candidate_feature_dim", "")
        if not f.isdigit() or int(f) < 1:
            raise RuntimeError(
                f"{self.model_name}: config parameter candidate_feature_dim is missing or not an integer "
                f">= 1 ({f!r}): re-render the repository with runners/triton/repository.py"
            )
        self.candidate_feature_dim = int(f)
        # 1024: repository.MAX_CANDIDATES_PER_RUN (this file runs in Triton, without the package)
        self.max_candidates_per_run = int(params.get("max_candidates_per_run") or 1024)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        onnx_path = version_dir / (params.get("onnx_file") or "model.onnx")

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_num_threads") or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        expected = {"item_ids", "user_features", "candidate_ends", "candidate_features"}
        if names != expected:
            raise RuntimeError(f"{onnx_path} has inputs {sorted(names)}, expected {sorted(expected)}")

    def _run(
        self,
        item_ids: np.ndarray,
        user_features: np.ndarray,
        candidate_ends: np.ndarray,
        candidate_features: np.ndarray,
    ) -> np.ndarray:
        feeds = {
            "item_ids": item_ids,
            "user_features": user_features,
            "candidate_ends": candidate_ends,
            "candidate_features": candidate_features,
        }
        (scores,) = self.session.run(["scores"], feeds)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[int] = []
        ids: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        feats: list[np.ndarray] = []
        for i, request in enumerate(requests):
            try:
                ids_t = pb_utils.get_input_tensor_by_name(request, "item_ids")
                user_t = pb_utils.get_input_tensor_by_name(request, "user_features")
                feats_t = pb_utils.get_input_tensor_by_name(request, "candidate_features")
                if ids_t is None or user_t is None or feats_t is None:
                    raise RequestError("request needs inputs item_ids, user_features and candidate_features")
                user = user_t.as_numpy()
                request_ids, request_feats = validate_request(
                    ids_t.as_numpy(), user, feats_t.as_numpy(), self.n_items, self.candidate_feature_dim
                )
            except RequestError as exc:
                # INVALID_ARG reaches gRPC clients as INVALID_ARGUMENT (a client error, not a 500).
                error = pb_utils.TritonError(f"{self.model_name}: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            if request_ids.size == 0:
                responses[i] = self._response(np.zeros(0, dtype=np.float32))
                continue
            valid.append(i)
            ids.append(request_ids)
            rows.append(user)
            feats.append(request_feats)

        results: list[np.ndarray | Exception] = []
        for run in runs([len(x) for x in ids], self.max_candidates_per_run):
            merged = merge(ids[run], rows[run], feats[run])
            try:
                results.extend(split(self._run(*merged), merged[2]))
            except Exception:
                # Should not happen after validation; isolate the failing request(s) instead of
                # failing the whole run.
                results.extend(
                    self._run_alone(request_ids, row, request_feats)
                    for request_ids, row, request_feats in zip(ids[run], rows[run], feats[run], strict=True)
                )
        for i, result in zip(valid, results, strict=True):
            if isinstance(result, Exception):
                error = pb_utils.TritonError(f"{self.model_name}: scoring failed: {result}")
                responses[i] = pb_utils.InferenceResponse(error=error)
            else:
                responses[i] = self._response(result)
        return responses

    def _run_alone(
        self, request_ids: np.ndarray, row: np.ndarray, request_feats: np.ndarray
    ) -> np.ndarray | Exception:
        try:
            return self._run(*merge([request_ids], [row], [request_feats]))
        except Exception as exc:
            return exc

    @staticmethod
    def _response(scores: np.ndarray) -> Any:
        out = pb_utils.Tensor("scores", np.ascontiguousarray(scores, dtype=np.float32).reshape(1, -1))
        return pb_utils.InferenceResponse(output_tensors=[out])

    def finalize(self) -> None:
        del self.session
