"""Write every serving artifact of a run into one directory (what the model store versions)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import bentoml
import faiss
import numpy as np

from models import registry, version
from models.content import ContentEncoder, book_records
from training.dataset import Catalog
from training.experiment import RunResult
from training.export import Parity, check_parity, export_all
from training.index import build_index, index_report
from training.protocol import user_item_matrix, weight_matrix

log = logging.getLogger(__name__)


def catalog_json(catalog: Catalog) -> list[dict[str, Any]]:
    return [
        {"item_id": i, "title": t, "authors": a, "genres": list(g), "year": None if np.isnan(y) else int(y)}
        for i, t, a, g, y in zip(
            catalog.item_ids,
            catalog.titles,
            catalog.authors,
            catalog.genres,
            catalog.years.tolist(),
            strict=True,
        )
    ]


def fit_content(catalog: Catalog, item_vectors: np.ndarray, seed: int) -> ContentEncoder:
    """The content encoder of the version (models/content.py): book records -> its item space, what
    serving uses for books added after training (item cold start)."""
    records = book_records(catalog.titles, catalog.authors, catalog.genres, catalog.years)
    encoder = ContentEncoder.fit(records, item_vectors, seed=seed)
    log.info("content encoder: %s", encoder.report)
    return encoder


def write_artifacts(run: RunResult, out: Path) -> tuple[Parity, dict[str, Any]]:
    """Export the rankers (parity-checked), build the index, and write the rest through the version
    contract's writer (models/version.py). Returns (parity, index report)."""
    ds = run.dataset
    writer = version.VersionWriter(out)
    run.weights.save(str(writer.path(version.RETRIEVAL)))
    content = fit_content(ds.catalog, run.weights.item_vectors, run.seed)
    content.save(writer.path(version.CONTENT))
    run.item_item.save(writer.path(version.ITEM_ITEM))
    queries = run.test_candidates.features[:, : run.spec.retrieval_dim]
    index = build_index(run.weights.item_vectors)  # built once: served and reported
    faiss.write_index(index, str(writer.path(version.INDEX)))
    report = index_report(index, run.weights.item_vectors, queries)
    paths = export_all(run.ranker, out, run.ranker_train)
    parity = check_parity(
        paths,
        run.valid_candidates,
        run.valid_fold,
        run.test_candidates,
        run.test_fold,
        ds.catalog.genres,
        run.popularity,
    )
    writer.ranker_meta(
        version.RankerMeta(
            user_feature_dim=run.spec.user_dim,
            n_items=len(ds.catalog),
            candidate_feature_dim=len(run.spec.candidate_features),
            feature_spec=run.spec,
            candidates=run.test_candidates.items.shape[1],
            diversity_penalty=float(run.diversity["penalty"]),
        )
    )
    writer.catalog(catalog_json(ds.catalog))
    writer.popularity(run.popularity)
    every = np.arange(len(ds.interactions))
    hist = user_item_matrix(ds.interactions, every, len(ds.catalog))
    rated = weight_matrix(ds.interactions, every, len(ds.catalog))
    writer.histories(
        version.Histories(hist.indptr, hist.indices, rated.data, np.asarray(ds.interactions.user_ids))
    )
    writer.metrics(
        {
            "test": run.test,
            "valid": run.valid,
            "tuned": run.tuned,
            "parity": parity.to_json(),
            "index": report,
            "diversity": run.diversity,
            "refit": run.refit,
            "content": content.report,
        }
    )
    writer.finish()
    log.info("artifacts written to %s", out)
    return parity, report


SAVE_FILE = "save.json"  # next to a run's version directory: the labels and metadata it is saved with


def write_run(run: RunResult, run_dir: Path, git_commit: str) -> Path:
    """``train``'s hand-off: the run's complete version directory (``run_dir/version``) and what the
    model store saves it with (``run_dir/save.json``); ``save_run`` versions it. Returns the directory."""
    out = run_dir / "version"
    if out.exists():
        shutil.rmtree(out)
    parity, index = write_artifacts(run, out)
    ds = run.dataset
    save = {
        "labels": {"dataset": ds.name},
        "metadata": {
            "dataset": ds.name,
            "source": ds.source,
            "seed": run.seed,
            "git_commit": git_commit,
            "test": run.test,
            "valid": run.valid,
            "tuned": run.tuned,
            "parity": parity.to_json(),
            "index": index,
            "seconds": run.seconds,
            "refit": run.refit or {},  # empty: the selection run itself was saved
            "n_items": len(ds.catalog),
            "n_users": ds.interactions.n_users,
        },
    }
    (run_dir / SAVE_FILE).write_text(json.dumps(save, indent=1))
    return out


def save_run(run_dir: Path) -> bentoml.Model:
    """Version a directory ``write_run`` wrote as a new ``folio`` version (stage=candidate)."""
    path = run_dir / SAVE_FILE
    if not path.is_file():
        raise registry.StoreError(f"{path} not found: run `python -m training train` first")
    save = json.loads(path.read_text())
    return registry.save(run_dir / "version", labels=save["labels"], metadata=save["metadata"])


def version_run(run: RunResult, git_commit: str) -> bentoml.Model:
    """Write the artifacts of ``run`` and save them as a new ``folio`` version (stage=candidate)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_run(run, Path(tmp), git_commit)
        return save_run(Path(tmp))
