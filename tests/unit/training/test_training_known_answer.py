"""The trained pipeline recovers the planted preferences of the synthetic catalog."""

import json

import numpy as np
import pytest

from models.retrieval import RetrievalWeights
from models.version import ARTIFACTS
from tests.conftest import TINY
from training.experiment import RunResult
from training.export import ParityError, check_parity, ranker_inputs, session
from training.pipeline import histories, torch_rank_fn
from training.report import COLUMNS


def test_recommendations_follow_the_planted_genre(trained: RunResult, planted: dict[str, str]):
    ds = trained.dataset
    cands = trained.test_candidates
    scores = torch_rank_fn(trained.ranker)(cands.items, cands.features, cands.cand_features)
    top = np.take_along_axis(cands.items, np.argsort(-scores, axis=1)[:, :10], axis=1)
    share = np.mean(
        [
            np.mean([ds.catalog.genres[i][0] == planted[ds.interactions.user_ids[u]] for i in row])
            for u, row in zip(cands.users, top, strict=True)
        ]
    )
    assert share > 0.8, f"only {share:.2f} of top-10 items match the planted genre (chance: 0.33)"


def test_pipeline_beats_popularity_and_reports_every_metric(trained: RunResult):
    ours = trained.test["Folio (retrieve + rank)"]
    assert ours["ndcg@10"] > trained.test["MostPop"]["ndcg@10"] + 0.05
    assert set(COLUMNS) <= set(ours)  # every metric the report shows
    assert set(trained.test) == {
        "MostPop",
        "ItemKNN",
        "EASE",
        "Folio retrieval",
        "Folio candidates (merged, unranked)",
        "Folio (retrieve + rank)",
        "Folio (served defaults: diversity on)",
    }


def test_numpy_user_encoder_matches_training_scores(trained: RunResult):
    w = trained.weights
    fold = trained.test_fold
    users = fold.users[:5]
    vecs = w.user_vectors(histories(fold.train, users))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # candidates were retrieved by exactly these vectors
    best = np.argmax(np.where(fold.seen[users].toarray() > 0, -np.inf, vecs @ w.item_vectors.T), axis=1)
    assert np.array_equal(best, trained.test_candidates.items[:5, 0])


def test_artifacts_hold_everything_and_onnx_matches_torch(trained: RunResult, artifacts_dir):
    assert all((artifacts_dir / a).is_file() for a in ARTIFACTS)
    meta = json.loads((artifacts_dir / "ranker.json").read_text())
    assert meta["user_feature_dim"] == trained.spec.user_dim
    assert RetrievalWeights.load(str(artifacts_dir / "retrieval.npz")).item_vectors.shape[0] == len(
        trained.dataset.catalog
    )
    cands = trained.test_candidates
    expected = torch_rank_fn(trained.ranker)(cands.items[:4], cands.features[:4], cands.cand_features[:4])
    for variant, atol in (("fp32", 1e-4), ("fp16", 5e-2)):
        got = (
            session(artifacts_dir / f"ranker_{variant}.onnx")
            .run(["scores"], ranker_inputs(cands.items[:4], cands.features[:4], cands.cand_features[:4]))[0]
            .reshape(expected.shape)
        )
        assert np.allclose(got, expected, atol=atol), variant
    metrics = json.loads((artifacts_dir / "metrics.json").read_text())
    parity = metrics["parity"]
    assert set(parity["ndcg"]) == {"fp32", "fp16", "int8"}
    assert all(abs(parity["ndcg"][v] - parity["ndcg"]["fp32"]) <= 0.002 for v in parity["ndcg"])
    assert max(parity["batch_max_abs_diff"].values()) <= 1e-3


def test_parity_check_fails_loudly_on_a_broken_variant(trained: RunResult, artifacts_dir, tmp_path):
    paths = {v: artifacts_dir / f"ranker_{v}.onnx" for v in ("fp32", "fp16", "int8")}
    # a "quantized" model that is really a different model: the fp32 export of an untrained ranker
    from models.ranker import Ranker
    from training.export import export_fp32

    broken = tmp_path / "broken.onnx"
    export_fp32(Ranker(trained.spec, trained.tables, 32).eval(), broken, trained.test_candidates)
    paths["int8"] = broken
    with pytest.raises(ParityError, match="int8"):
        check_parity(
            paths,
            trained.valid_candidates,
            trained.valid_fold,
            trained.test_candidates,
            trained.test_fold,
            trained.dataset.catalog.genres,
            trained.popularity,
        )


def test_sampled_softmax_training_also_learns(trained: RunResult):
    """The large-catalog path: in-batch positives plus sampled negatives instead of the full softmax."""
    from dataclasses import replace

    from training.train_retrieval import train_retrieval

    cfg = replace(TINY.retrieval, sampled_negatives=10, epochs=30)
    _, valid = train_retrieval(trained.valid_fold, cfg, 0, trained.dataset.catalog.genres)
    assert valid["ndcg@10"] > trained.valid["MostPop"]["ndcg@10"]


def test_refit_learns_from_every_interaction(trained: RunResult):
    from training.refit import refit_on_all

    saved = refit_on_all(trained, TINY)
    n = len(trained.dataset.interactions)
    assert saved.refit is not None and saved.refit["interactions"] == n
    assert saved.refit["retrieval"].startswith("refitted")
    assert not np.array_equal(saved.weights.item_vectors, trained.weights.item_vectors)
    assert saved.popularity.sum() == n > trained.popularity.sum()  # selection saw the train split only
    assert saved.test == trained.test  # the figures quoted are the selection run's
    # the item-item sources now know the held-out interactions: a user's test items score higher
    fold = trained.test_fold
    u = int(fold.users[0])
    held = fold.target.indices[fold.target.indptr[u] : fold.target.indptr[u + 1]]
    hist = fold.train.indices[fold.train.indptr[u] : fold.train.indptr[u + 1]]
    ones = np.ones(hist.size, np.float32)
    before = trained.item_item.scores(hist, ones)[0].at(held).mean()
    after = saved.item_item.scores(hist, ones)[0].at(held).mean()
    assert after > before
    np.testing.assert_array_equal(saved.ranker.item_scalars.numpy(), saved.tables.scalars)
