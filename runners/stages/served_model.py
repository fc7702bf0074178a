"""The served model version, loaded from the BentoML model store into memory once per worker.

A version (models/version.py) holds the retrieval weights, the FAISS index, the three ONNX
rankers, the catalog, popularity and the training histories. Items are addressed by their internal
index (0..n-1, the row in every table); ``position`` maps external item ids to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import faiss
import numpy as np

from models import registry, version
from models.candidates import DEFAULT_RATING_WEIGHT, feature_names
from models.content import ContentEncoder
from models.features import FeatureSpec, ItemTables, genre_matrix, item_tables
from models.item_item import ItemItem
from models.user_encoder import RetrievalWeights


class ModelLoadError(RuntimeError):
    """The stored version is missing an artifact or its parts disagree."""


@dataclass(frozen=True)
class ServedModel:
    tag: str
    path: Path
    metadata: dict[str, Any]
    created: float  # unix seconds: when the version was saved (trained)
    promoted_at: str | None  # ISO time of its last promotion (store label), None if never promoted
    catalog: list[dict[str, Any]]
    position: dict[str, int]
    primary_genre: list[str]  # "" where an item has no genre
    popularity: np.ndarray  # float32 [n_items], training interaction counts
    weights: RetrievalWeights
    item_item: ItemItem
    index: faiss.Index
    spec: FeatureSpec
    tables: ItemTables
    train_histories: dict[str, np.ndarray]  # user id -> item indices
    train_ratings: dict[str, np.ndarray]  # user id -> float32 rating weights, aligned with train_histories
    ranker: version.RankerFiles  # the ONNX rankers and their metadata: what the ranking stage receives
    content: ContentEncoder | None  # book records -> item vectors (new books); None: an older version

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def candidates(self) -> int:
        """Candidates per user the ranker was trained on."""
        return self.ranker.meta.candidates

    @property
    def diversity_penalty(self) -> float:
        """The models/diversity.py penalty chosen on validation."""
        return self.ranker.meta.diversity_penalty


def resolve(tag: str | None) -> bentoml.Model:
    """``tag`` if given, else the store's production version."""
    model = registry.get(tag) if tag else registry.production()
    if model is None:
        raise registry.StoreError(
            "no production model in the store: run ./scripts/main.sh or set FOLIO_MODEL_TAG"
        )
    return model


def served_tag(tag: str | None) -> str:
    """The version ``tag`` names (None: the production one)."""
    return str(resolve(tag).tag)


def load(model: bentoml.Model) -> ServedModel:
    path = Path(model.path)
    if gaps := version.missing(path):
        raise ModelLoadError(f"{model.tag} lacks {', '.join(gaps)}")
    try:
        ranker = version.RankerFiles.read(path)
    except version.VersionError as exc:
        raise ModelLoadError(f"{model.tag}: {exc}") from exc
    meta = ranker.meta
    if meta.feature_spec is None:
        raise ModelLoadError(f"{model.tag}: {version.RANKER_META} lacks the feature_spec")
    spec = meta.feature_spec
    catalog = version.read_catalog(path)
    weights = RetrievalWeights.load(str(path / version.RETRIEVAL))
    item_item = ItemItem.load(path / version.ITEM_ITEM)
    item_item.prepare()  # the transposed copies the candidate scoring reads (models/item_item.py)
    index = faiss.read_index(str(path / version.INDEX))
    popularity = version.read_popularity(path)
    n = len(catalog)
    if not (weights.item_vectors.shape[0] == index.ntotal == popularity.shape[0] == meta.n_items == n):
        raise ModelLoadError(
            f"{model.tag}: item counts disagree (catalog {n}, vectors {weights.item_vectors.shape[0]}, "
            f"index {index.ntotal}, popularity {popularity.shape[0]}, ranker {meta.n_items})"
        )
    if weights.dim != spec.retrieval_dim:
        raise ModelLoadError(f"{model.tag}: retrieval dim {weights.dim} != ranker's {spec.retrieval_dim}")
    if item_item.n_items != n:
        raise ModelLoadError(f"{model.tag}: item-item sources cover {item_item.n_items} items, catalog {n}")
    if feature_names(item_item) != spec.candidate_features:
        raise ModelLoadError(
            f"{model.tag}: the ranker expects candidate features {list(spec.candidate_features)}, the "
            f"item-item sources give {list(feature_names(item_item))}"
        )
    content = None
    if (path / version.CONTENT).is_file():
        try:
            content = ContentEncoder.load(path / version.CONTENT)
        except ValueError as exc:
            raise ModelLoadError(f"{model.tag}: {exc}") from exc
        if content.dim != weights.dim:
            raise ModelLoadError(
                f"{model.tag}: content encoder dim {content.dim} != retrieval's {weights.dim}"
            )
    years = np.array([np.nan if c.get("year") is None else c["year"] for c in catalog], dtype=np.float32)
    genres = genre_matrix([tuple(c["genres"]) for c in catalog], spec.genres)
    tables = item_tables(popularity, years, genres)
    histories, ratings = version.read_histories(path).by_user(DEFAULT_RATING_WEIGHT)
    return ServedModel(
        tag=str(model.tag),
        path=path,
        metadata=dict(model.info.metadata),
        created=model.info.creation_time.timestamp(),
        promoted_at=model.info.labels.get("promoted_at"),
        catalog=catalog,
        position={c["item_id"]: i for i, c in enumerate(catalog)},
        primary_genre=[c["genres"][0] if c["genres"] else "" for c in catalog],
        popularity=popularity,
        weights=weights,
        item_item=item_item,
        index=index,
        spec=spec,
        tables=tables,
        train_histories=histories,
        train_ratings=ratings,
        ranker=ranker,
        content=content,
    )
