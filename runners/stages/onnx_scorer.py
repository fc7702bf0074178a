"""The ranker in process: ONNX Runtime sessions of a version's rankers, the fallback when Triton fails
and the reference Triton must match.

Tensors (graph contract, models/ranker.py): item_ids int64 [n], user_features float32 [1, D],
candidate_ends int32 [1] = [n], candidate_features float32 [n*F] -> scores float32 [n].
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from models.version import PRECISIONS, Precision, RankerFiles


class OnnxScorer:
    def __init__(self, ranker: RankerFiles) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.sessions = {
            p: ort.InferenceSession(str(ranker.onnx(p)), options, providers=["CPUExecutionProvider"])
            for p in PRECISIONS
        }

    def score(self, precision: Precision, ids: np.ndarray, user: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Scores of one user's candidates (inputs already checked by the ranking stage)."""
        feeds = {
            "item_ids": ids,
            "user_features": user,
            "candidate_ends": np.array([ids.size], np.int32),
            "candidate_features": feats,
        }
        (scores,) = self.sessions[precision].run(["scores"], feeds)
        return np.asarray(scores, dtype=np.float32).reshape(-1)
