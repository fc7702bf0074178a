"""Neural ranker: an MLP over each candidate's features, with the item-side tables inside the graph.

Exported graph I/O (names fixed at export; FP16/INT8 variants keep float32 I/O):
    item_ids        int64   [R]     candidates of every request in the batch, concatenated
    user_features   float32 [B, D]  one row per request (see models.features)
    candidate_ends  int32   [B]     cumulative candidate counts per request, e.g. [3, 8]
                                    (Triton's BATCH_ACCUMULATED_ELEMENT_COUNT convention)
    candidate_features float32 [R*F] per-candidate features (models.candidates), flat, F per candidate in
                                    item_ids order (flat so Triton's ragged batching can concatenate it;
                                    F = len(FeatureSpec.candidate_features), reshaped in the graph)
    scores          float32 [R]     one score per candidate, same order as item_ids
A candidate's score depends only on its own request's row, so a batched result equals the same
request scored alone.

The ranker never reads the retrieval embedding space: the user-item affinity reaches it as the
retrieval source's candidate features (score, relative score, rank), so the graph holds no item vectors
(a 1M-item catalog would carry 800 MB of them), and a refitted or per-fold retrieval model needs no
retrained ranker (training/refit.py, training/ranker_folds.py). The user row's vector part is not read.
It replaced a DCN-v2 head that also read the user-item dot product: on ML-1M (seed 2020, same features)
the two scored ranker-holdout NDCG@10 0.2406 (this MLP) and 0.2415 (DCN), within noise; the MLP was kept
for what it removes from the graph and the folds it allows.
"""

from __future__ import annotations

import torch
from torch import nn

from models.features import FeatureSpec, ItemTables
from models.version import RANKER_INPUTS, RANKER_OUTPUTS

INPUT_NAMES = list(RANKER_INPUTS)  # the version contract (models/version.py) names them
OUTPUT_NAMES = list(RANKER_OUTPUTS)


class Ranker(nn.Module):
    item_scalars: torch.Tensor
    item_genres: torch.Tensor
    feature_mean: torch.Tensor
    feature_scale: torch.Tensor

    def __init__(self, spec: FeatureSpec, tables: ItemTables, width: int = 128) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("item_scalars", torch.from_numpy(tables.scalars))
        self.register_buffer("item_genres", torch.from_numpy(tables.genres))
        g = spec.n_genres
        # item scalars, item genres, user genres, affinity + |dyear|, user scalars, candidate features
        n_in = 3 + g + g + 2 + 2 + len(spec.candidate_features)
        # Fixed standardization of the features (set from training data by ``fit_normalizer``): keeps
        # every input on one scale, which INT8 activation quantization needs.
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_scale", torch.ones(n_in))
        self.mlp = nn.Sequential(
            nn.Linear(n_in, width),
            nn.ReLU(),
            nn.Linear(width, width // 2),
            nn.ReLU(),
            nn.Linear(width // 2, 1),
        )

    def features(
        self, item_ids: torch.Tensor, user_rows: torch.Tensor, candidate_features: torch.Tensor
    ) -> torch.Tensor:
        """item_ids int64 [R], user_rows float32 [R, D] (each candidate's user row), candidate_features
        float32 [R, F] -> [R, n_in]"""
        d, g = self.spec.retrieval_dim, self.spec.n_genres
        ug, us = user_rows[:, d : d + g], user_rows[:, d + g :]
        ig = self.item_genres[item_ids]
        isc = self.item_scalars[item_ids]
        affinity = (ug * ig).sum(1, keepdim=True) / ig.sum(1, keepdim=True).clamp(min=1.0)
        dyear = (isc[:, 1:2] - us[:, 1:2]).abs()
        return torch.cat([isc, ig, ug, affinity, dyear, us, candidate_features], dim=1)

    @torch.no_grad()
    def fit_normalizer(
        self, item_ids: torch.Tensor, user_rows: torch.Tensor, candidate_features: torch.Tensor
    ) -> None:
        x = self.features(item_ids, user_rows, candidate_features)
        self.feature_mean.copy_(x.mean(0))
        self.feature_scale.copy_(1.0 / x.std(0).clamp(min=0.1))

    def score_rows(
        self, item_ids: torch.Tensor, user_rows: torch.Tensor, candidate_features: torch.Tensor
    ) -> torch.Tensor:
        x = self.features(item_ids, user_rows, candidate_features)
        return self.mlp((x - self.feature_mean) * self.feature_scale).squeeze(1)

    def forward(
        self,
        item_ids: torch.Tensor,
        user_features: torch.Tensor,
        candidate_ends: torch.Tensor,
        candidate_features: torch.Tensor,
    ) -> torch.Tensor:
        positions = torch.arange(item_ids.shape[0], device=item_ids.device)
        rows = (positions.unsqueeze(1) >= candidate_ends.to(torch.int64).unsqueeze(0)).sum(1)
        per_candidate = candidate_features.reshape(-1, len(self.spec.candidate_features))
        return self.score_rows(item_ids, user_features[rows], per_candidate)
