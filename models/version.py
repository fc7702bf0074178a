"""The model-version contract: what one stored version's directory holds, how it is written and read.

Training (training/artifacts.py) and the synthetic versions of the benchmarks (loadtests/synthetic_model.py)
write a version through ``VersionWriter``; serving (runners/stages/served_model.py), the Triton
repository (runners/triton/repository.py) and the benchmarks read it through the readers here. The
BentoML model store (models/registry.py) versions such a directory as ``folio:<version>``.

    retrieval.npz      retrieval weights (models/user_encoder.py)
    item_item.npz      item-item sources (models/item_item.py)
    items.faiss        the FAISS index of the item vectors
    ranker_<p>.onnx    the ranker at each precision p in PRECISIONS (models/ranker.py graph)
    ranker.json        RankerMeta: tensor widths, feature schema, candidates, diversity penalty
    catalog.json       the trained catalog: one record per item, in item-index order
    popularity.npy     float32 [n_items] training interaction counts
    histories.npz      every user's training history (CSR) with rating weights
    metrics.json       evaluation, parity, index and content reports
    content.npz        optional: the content encoder of new books (models/content.py)

The parity rule (``parity_problems``) decides whether the reduced-precision rankers may serve. Every
artifact's sha256 is recorded in the stored version's metadata (``CHECKSUMS``) when it is saved and
checked (``checksum_problems``) before it is loaded and again before it is swapped in.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from models.features import FeatureSpec

Precision = Literal["int8", "fp16", "fp32"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

RETRIEVAL = "retrieval.npz"
ITEM_ITEM = "item_item.npz"
INDEX = "items.faiss"
RANKER_META = "ranker.json"
CATALOG = "catalog.json"
POPULARITY = "popularity.npy"
HISTORIES = "histories.npz"
METRICS = "metrics.json"
CONTENT = "content.npz"  # versions saved before item cold start lack it


def ranker_file(precision: Precision) -> str:
    return f"ranker_{precision}.onnx"


ARTIFACTS = (
    RETRIEVAL,
    ITEM_ITEM,
    INDEX,
    *(ranker_file(p) for p in PRECISIONS),
    RANKER_META,
    CATALOG,
    POPULARITY,
    HISTORIES,
    METRICS,
)
OPTIONAL_ARTIFACTS = (CONTENT,)
RANKER_INPUTS = ("item_ids", "user_features", "candidate_ends", "candidate_features")
RANKER_OUTPUTS = ("scores",)

# The export parity rule: training/export.py enforces it, serving re-checks a version's metadata.
NDCG_TOLERANCE = 0.002  # |NDCG@10(precision) - NDCG@10(fp32)| on validation
BATCH_TOLERANCE = 1e-3  # max |score alone - score inside a batch|


CHECKSUMS = "sha256"  # metadata key: {artifact name: sha256 hex digest}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class VersionError(ValueError):
    """A version directory breaks the contract (a file missing, metadata out of bounds)."""


def missing(directory: Path) -> list[str]:
    """The required artifacts ``directory`` lacks (empty: complete)."""
    return [a for a in ARTIFACTS if not (directory / a).is_file()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(directory: Path) -> dict[str, str]:
    """The sha256 of every artifact ``directory`` holds (required and optional)."""
    names = [n for n in ARTIFACTS + OPTIONAL_ARTIFACTS if (directory / n).is_file()]
    return {n: sha256(directory / n) for n in names}


def checksum_problems(directory: Path, recorded: Any) -> list[str] | None:
    """Where ``directory`` differs from the checksums ``recorded`` at save time (empty: intact); None when
    nothing was recorded (a version saved before checksums existed: unverified, not intact)."""
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(v) for k, v in recorded.items()
    ):
        return [f"metadata {CHECKSUMS!r} is not a map of artifact names to sha256 hex digests"]
    problems = [f"no checksum recorded for {n}" for n in ARTIFACTS if n not in recorded]
    for name, expected in sorted(recorded.items()):
        if name not in ARTIFACTS + OPTIONAL_ARTIFACTS:
            problems.append(f"checksum recorded for an unknown artifact {name!r}")
        elif not (directory / name).is_file():
            problems.append(f"missing {name}")
        elif (actual := sha256(directory / name)) != expected:
            problems.append(f"{name} is corrupted (sha256 {actual[:12]}, saved as {expected[:12]})")
    return problems


def parity_problems(parity: dict[str, dict[str, float]]) -> list[str]:
    """What breaks the parity rule in ``Parity.to_json()`` output (empty: parity holds)."""
    ndcg, batch = parity.get("ndcg", {}), parity.get("batch_max_abs_diff", {})
    if "fp32" not in ndcg:
        return ["no parity results"]
    problems = [
        f"{p}: NDCG@10 {n:.4f} vs fp32 {ndcg['fp32']:.4f}"
        for p, n in ndcg.items()
        if abs(n - ndcg["fp32"]) > NDCG_TOLERANCE
    ]
    return problems + [
        f"{p}: batched scores differ from scored-alone by {d:.2e}"
        for p, d in batch.items()
        if d > BATCH_TOLERANCE
    ]


@dataclass(frozen=True)
class RankerMeta:
    """``ranker.json``: what the ranking stage, the Triton repository and the loader need to know."""

    user_feature_dim: int  # D
    n_items: int
    candidate_feature_dim: int  # F, floats per candidate in `candidate_features`
    feature_spec: FeatureSpec | None = None  # None only in hand-made test directories
    candidates: int = 200  # candidates per user the ranker was trained on
    diversity_penalty: float = 0.0  # models/diversity.py penalty chosen on validation

    def __post_init__(self) -> None:
        if self.user_feature_dim < 1 or self.n_items < 1 or self.candidates < 1:
            raise VersionError(
                "user_feature_dim, n_items and candidates must be positive, got "
                f"{self.user_feature_dim}, {self.n_items}, {self.candidates}"
            )
        f = self.candidate_feature_dim
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise VersionError(
                f"candidate_feature_dim must be an integer >= 1 (floats per candidate in the ranker's "
                f"candidate_features input), got {f!r}; a version exported before that input existed "
                "has none: re-export it"
            )
        if not 0.0 <= self.diversity_penalty <= 100.0:  # NaN fails too
            raise VersionError(f"diversity_penalty {self.diversity_penalty!r} outside [0, 100]")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_feature_dim": self.user_feature_dim,
            "n_items": self.n_items,
            "candidates": self.candidates,
            "candidate_feature_dim": self.candidate_feature_dim,
            "diversity_penalty": self.diversity_penalty,
            "inputs": list(RANKER_INPUTS),
            "outputs": list(RANKER_OUTPUTS),
        }
        if self.feature_spec is not None:
            out["feature_spec"] = self.feature_spec.to_json()
        return out

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> RankerMeta:
        try:
            dim, n_items = int(meta["user_feature_dim"]), int(meta["n_items"])
            candidates = int(meta.get("candidates", 200))
            penalty = float(meta.get("diversity_penalty", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise VersionError(
                f"must hold integer user_feature_dim and n_items (candidates, diversity_penalty: numbers): "
                f"{exc!r}"
            ) from exc
        f = meta.get("candidate_feature_dim")
        fs = meta.get("feature_spec") or {}
        names = fs.get("candidate_features")
        if names is not None and isinstance(f, int) and len(names) != f:
            raise VersionError(
                f"candidate_feature_dim {f} but feature_spec.candidate_features lists {len(names)}"
            )
        spec = None
        if "retrieval_dim" in fs and "genres" in fs:
            spec = FeatureSpec(int(fs["retrieval_dim"]), tuple(fs["genres"]), tuple(names or ()))
        return cls(dim, n_items, f, spec, candidates, penalty)  # type: ignore[arg-type]

    @classmethod
    def read(cls, directory: Path) -> RankerMeta:
        path = directory / RANKER_META
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the stored model lacks the ranker metadata")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except VersionError as exc:
            raise VersionError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class RankerFiles:
    """A version's rankers as the ranking stage and the Triton repository receive them."""

    directory: Path
    meta: RankerMeta

    def onnx(self, precision: Precision) -> Path:
        return self.directory / ranker_file(precision)

    @classmethod
    def read(cls, directory: Path) -> RankerFiles:
        return cls(Path(directory), RankerMeta.read(Path(directory)))


@dataclass(frozen=True)
class Histories:
    """``histories.npz``: every user's training history as CSR rows with rating weights."""

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray | None  # float32, aligned with indices; None in versions saved before them
    user_ids: np.ndarray

    def by_user(self, default_weight: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(user id -> item indices int64, user id -> rating weights float32)."""
        ptr, idx = self.indptr, self.indices
        rated = self.weights if self.weights is not None else np.full(idx.size, default_weight, np.float32)
        items = {str(u): idx[ptr[r] : ptr[r + 1]].astype(np.int64) for r, u in enumerate(self.user_ids)}
        weights = {str(u): rated[ptr[r] : ptr[r + 1]].astype(np.float32) for r, u in enumerate(self.user_ids)}
        return items, weights


def read_catalog(directory: Path) -> list[dict[str, Any]]:
    catalog: list[dict[str, Any]] = json.loads((directory / CATALOG).read_text())
    return catalog


def read_histories(directory: Path) -> Histories:
    with np.load(directory / HISTORIES) as h:
        weights = h["weights"] if "weights" in h.files else None
        return Histories(h["indptr"], h["indices"], weights, h["user_ids"])


def read_popularity(directory: Path) -> np.ndarray:
    return np.load(directory / POPULARITY).astype(np.float32)


def read_metrics(directory: Path) -> dict[str, Any]:
    path = directory / METRICS
    metrics: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return metrics


@dataclass
class VersionWriter:
    """Writes one version directory, file by file; ``finish`` refuses an incomplete one. The rankers are
    exported by their writer (training/export.py) to ``ranker_path``."""

    out: Path

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.out / name

    def ranker_path(self, precision: Precision) -> Path:
        return self.path(ranker_file(precision))

    def ranker_meta(self, meta: RankerMeta) -> None:
        self.path(RANKER_META).write_text(json.dumps(meta.to_json(), indent=1))

    def catalog(self, records: list[dict[str, Any]]) -> None:
        self.path(CATALOG).write_text(json.dumps(records))

    def popularity(self, popularity: np.ndarray) -> None:
        np.save(self.path(POPULARITY), popularity.astype(np.float32))

    def histories(self, histories: Histories) -> None:
        np.savez(
            self.path(HISTORIES),
            indptr=histories.indptr,
            indices=histories.indices,
            weights=np.asarray(histories.weights, dtype=np.float32),
            user_ids=histories.user_ids,
        )

    def metrics(self, metrics: dict[str, Any]) -> None:
        self.path(METRICS).write_text(json.dumps(metrics, indent=1))

    def finish(self) -> Path:
        if gaps := missing(self.out):
            raise VersionError(f"{self.out} lacks {', '.join(gaps)}: an incomplete version")
        return self.out
