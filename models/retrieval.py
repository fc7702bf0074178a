"""Retrieval model: item embeddings plus a user encoder that pools the user's history.

The user vector is a function of the history alone (no per-user parameters), so serving can
recompute it from fresh feedback without retraining:

    h = tanh(sum_{i in history} W_in[i] / sqrt(|history|) + b_in)      [hidden]
    u = W_u h + b_u                                                     [dim]
    score(u, i) = cos(u, V[i]) / temperature

Users and items are L2-normalized, so FAISS inner-product search over the normalized item
vectors returns the model's top-N. Trained as a denoising multinomial model (Mult-DAE style:
L2-normalize the history, drop part of it, softmax over the catalog, or over the batch's
positives plus sampled negatives on large catalogs). The cosine/temperature head matters on
ML-1M: with a free inner product the model over-promotes rare items (test NDCG@10 0.22 vs 0.26).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models.user_encoder import RetrievalWeights

__all__ = ["RetrievalConfig", "RetrievalModel", "RetrievalWeights"]


@dataclass(frozen=True)
class RetrievalConfig:
    dim: int = 200
    hidden: int = 600
    dropout: float = 0.5
    epochs: int = 100
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.1
    sampled_negatives: int = 0  # 0: full softmax; >0: in-batch positives + this many uniform negatives


class RetrievalModel(nn.Module):
    def __init__(self, n_items: int, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.item_in = nn.Parameter(torch.empty(n_items, cfg.hidden))
        self.bias_in = nn.Parameter(torch.zeros(cfg.hidden))
        self.user_out = nn.Linear(cfg.hidden, cfg.dim)
        self.item_out = nn.Parameter(torch.empty(n_items, cfg.dim))
        self.temperature = cfg.temperature
        nn.init.xavier_uniform_(self.item_in)
        nn.init.xavier_uniform_(self.item_out)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """history: sparse or dense float [B, n_items], rows already scaled by 1/sqrt(n).
        -> L2-normalized user vectors [B, dim]"""
        pooled = torch.sparse.mm(history, self.item_in) if history.is_sparse else history @ self.item_in
        return F.normalize(self.user_out(torch.tanh(pooled + self.bias_in)), dim=1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.item_out if items is None else self.item_out[items], dim=1)

    def logits(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        return users @ self.item_vectors(items).T / self.temperature
