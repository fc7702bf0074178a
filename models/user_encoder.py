"""The trained retrieval model as numpy arrays: what serving needs to encode users and index items.

Kept apart from models/retrieval.py (the PyTorch definition) so that serving imports no torch.
The user encoder it computes is the one of models/retrieval.py:

    h = tanh(sum_{i in history} W_in[i] / sqrt(|history|) + b_in);   u = normalize(W_u h + b_u)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.retrieval import RetrievalModel


@dataclass(frozen=True)
class RetrievalWeights:
    """The trained model as numpy arrays: what serving needs to encode users and index items."""

    item_in: np.ndarray  # float32 [n_items, hidden]
    bias_in: np.ndarray  # float32 [hidden]
    user_w: np.ndarray  # float32 [dim, hidden]
    user_b: np.ndarray  # float32 [dim]
    item_vectors: np.ndarray  # float32 [n_items, dim], L2-normalized

    @classmethod
    def from_model(cls, model: RetrievalModel) -> RetrievalWeights:
        import torch  # training only: serving never imports torch

        def f(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float32)

        with torch.no_grad():
            vec = f(model.item_vectors())
        return cls(f(model.item_in), f(model.bias_in), f(model.user_out.weight), f(model.user_out.bias), vec)

    def save(self, path: str) -> None:
        np.savez(path, **self.__dict__)

    @classmethod
    def load(cls, path: str) -> RetrievalWeights:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in z.files})

    @property
    def dim(self) -> int:
        """Dimension of the user and item vectors."""
        return int(self.item_vectors.shape[1])

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """L2-normalized float32 [len(histories), dim]; an empty history gives the encoder's prior."""
        pooled = np.zeros((len(histories), self.item_in.shape[1]), dtype=np.float32)
        for r, hist in enumerate(histories):
            if len(hist):
                pooled[r] = self.item_in[hist].sum(0) / np.sqrt(len(hist))
        u = np.tanh(pooled + self.bias_in) @ self.user_w.T + self.user_b
        return (u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)).astype(np.float32)
