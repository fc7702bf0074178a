"""Ranker export: ONNX FP32 (named I/O, dynamic axes), FP16, INT8; parity checks and throughput.

INT8 is static QDQ quantization calibrated on ranker-training features: its scales are fixed, so a
request scores the same alone or inside any batch (dynamic quantization derives activation scales
from the whole batch, which breaks that contract), and TensorRT can build it on GPU hosts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxconverter_common import float16
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.ranker import INPUT_NAMES, OUTPUT_NAMES, Ranker
from models.version import Precision, parity_problems, ranker_file
from training.pipeline import CandidateBatch, RankFn, evaluate_pipeline
from training.protocol import Fold

log = logging.getLogger(__name__)

VARIANTS: tuple[Precision, ...] = ("fp32", "fp16", "int8")  # export order: fp16 and int8 derive from fp32
BATCH_ROWS = (1, 2, 7, 64, 333, 1024)


class ParityError(RuntimeError):
    """An exported variant strays from the FP32 reference beyond tolerance."""


def ranker_inputs(items: np.ndarray, feats: np.ndarray, cand_feats: np.ndarray) -> dict[str, np.ndarray]:
    """Graph inputs for U requests of N candidates each: items [U, N], feats [U, D], cand_feats [U, N, F]."""
    u, n = items.shape
    return {
        "item_ids": items.reshape(-1).astype(np.int64),
        "user_features": feats.astype(np.float32),
        "candidate_ends": (np.arange(1, u + 1) * n).astype(np.int32),
        "candidate_features": cand_feats.reshape(-1).astype(np.float32),
    }


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_rank_fn(sess: ort.InferenceSession) -> RankFn:
    def rank(items: np.ndarray, feats: np.ndarray, cand_feats: np.ndarray) -> np.ndarray:
        return sess.run(OUTPUT_NAMES, ranker_inputs(items, feats, cand_feats))[0].reshape(items.shape)

    return rank


def export_fp32(ranker: Ranker, path: Path, sample: CandidateBatch) -> None:
    inputs = ranker_inputs(sample.items[:2], sample.features[:2], sample.cand_features[:2])
    args = tuple(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)
    torch.onnx.export(
        ranker,
        args,
        str(path),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        opset_version=17,
        dynamic_axes={
            "item_ids": {0: "candidates"},
            "user_features": {0: "requests"},
            "candidate_ends": {0: "requests"},
            "candidate_features": {0: "candidate_values"},
            "scores": {0: "candidates"},
        },
        dynamo=False,
    )
    onnx.checker.check_model(str(path))


def export_fp16(fp32: Path, path: Path) -> None:
    model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(path))


class _Calibration(CalibrationDataReader):
    def __init__(self, cands: CandidateBatch, users_per_batch: int = 16, max_users: int = 512) -> None:
        self.cands, self.step, self.max_users = cands, users_per_batch, max_users

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        n = min(self.max_users, self.cands.users.size)
        for start in range(0, n, self.step):
            rows = slice(start, start + self.step)
            c = self.cands
            yield ranker_inputs(c.items[rows], c.features[rows], c.cand_features[rows])

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not hasattr(self, "_it"):
            self._it = iter(self)
        return next(self._it, None)


def export_int8(fp32: Path, path: Path, calibration: CandidateBatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: x86 CPUs without VNNI (AVX2 / AVX-512F) run U8S8 products with VPMADDUBSW,
            # whose 16-bit sums saturate with 8-bit weights (ONNX Runtime's quantization guide). On such
            # a CPU (AMD EPYC, AVX2 only) the synthetic test model failed parity: NDCG@10 int8 0.6108 vs
            # fp32 0.6155; with reduce_range it holds. The serving CPU is not known at export time.
            reduce_range=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            # Matrix products keep FP32 outputs (QGemm with float output): no Quantize/Dequantize pair
            # after each layer, and the scores leave unquantized. ONNX Runtime's profiler, one request of
            # 500 candidates, ML-100K ranker: 707 -> 616 us, (de)quantization 133 -> 76 us.
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )


def export_all(ranker: Ranker, out: Path, calibration: CandidateBatch) -> dict[str, Path]:
    paths: dict[str, Path] = {p: out / ranker_file(p) for p in VARIANTS}
    export_fp32(ranker, paths["fp32"], calibration)
    export_fp16(paths["fp32"], paths["fp16"])
    export_int8(paths["fp32"], paths["int8"], calibration)
    return paths


@dataclass(frozen=True)
class Parity:
    ndcg: dict[str, float]  # validation NDCG@10 per variant (every validation user)
    test_ndcg: dict[str, float]
    top10_agreement: dict[str, float]  # mean |top10 ∩ top10_fp32| / 10
    batch_max_abs_diff: dict[str, float]  # alone vs inside batches of BATCH_ROWS rows
    candidates_per_s: dict[str, float]  # one thread, 1,000 candidates per call

    def to_json(self) -> dict[str, dict[str, float]]:
        return dict(self.__dict__)


def _top10(rank: RankFn, cands: CandidateBatch, users: int = 512) -> np.ndarray:
    s = rank(cands.items[:users], cands.features[:users], cands.cand_features[:users])
    return np.take_along_axis(cands.items[:users], np.argsort(-s, axis=1, kind="stable")[:, :10], axis=1)


def _batch_consistency(sess: ort.InferenceSession, cands: CandidateBatch) -> float:
    """Max |score alone - score inside a batch| over batches of BATCH_ROWS candidate rows."""
    rank = ort_rank_fn(sess)
    worst = 0.0
    for rows in BATCH_ROWS:
        n_req = max(1, -(-rows // cands.items.shape[1]))
        per = -(-rows // n_req)
        items = cands.items[:n_req, :per]
        feats = cands.features[:n_req]
        cf = cands.cand_features[:n_req, :per]
        together = rank(items, feats, cf)
        for r in range(n_req):
            alone = rank(items[r : r + 1], feats[r : r + 1], cf[r : r + 1])[0]
            worst = max(worst, float(np.abs(alone - together[r]).max()))
    return worst


def throughput(
    sess: ort.InferenceSession, cands: CandidateBatch, n: int = 1000, seconds: float = 1.0
) -> float:
    """Ranked candidates per second, one request of ``n`` candidates per call."""
    reps = -(-n // cands.items.shape[1])
    items = np.concatenate([cands.items[:1]] * reps, axis=1)[:, :n]
    cf = np.concatenate([cands.cand_features[:1]] * reps, axis=1)[:, :n]
    feed = ranker_inputs(items, cands.features[:1], cf)
    sess.run(OUTPUT_NAMES, feed)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(OUTPUT_NAMES, feed)
        calls += 1
    return calls * n / (time.perf_counter() - t0)


def check_parity(
    paths: dict[str, Path],
    valid_c: CandidateBatch,
    valid: Fold,
    test_c: CandidateBatch,
    test: Fold,
    genres: list[tuple[str, ...]],
    pop: np.ndarray,
) -> Parity:
    """Measure every variant against FP32; raise ParityError when NDCG@10 or batching drifts."""
    sessions = {v: session(p) for v, p in paths.items()}
    ndcg, test_ndcg, agree, batch, speed = {}, {}, {}, {}, {}
    ref_top = _top10(ort_rank_fn(sessions["fp32"]), valid_c)
    for v, sess in sessions.items():
        rank = ort_rank_fn(sess)
        ndcg[v] = evaluate_pipeline(rank, valid_c, valid.seen, valid.target, genres, pop)["ndcg@10"]
        test_ndcg[v] = evaluate_pipeline(rank, test_c, test.seen, test.target, genres, pop)["ndcg@10"]
        top = _top10(rank, valid_c)
        agree[v] = float(np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(top, ref_top, strict=True)]))
        batch[v] = _batch_consistency(sess, valid_c)
        speed[v] = throughput(sess, valid_c)
        log.info(
            "%s: valid ndcg@10 %.4f test %.4f top10 agreement %.3f batch diff %.2e %.0f cand/s",
            v,
            ndcg[v],
            test_ndcg[v],
            agree[v],
            batch[v],
            speed[v],
        )
    parity = Parity(ndcg, test_ndcg, agree, batch, speed)
    problems = parity_problems(parity.to_json())
    if problems:
        raise ParityError("export parity failed: " + "; ".join(problems))
    return parity
