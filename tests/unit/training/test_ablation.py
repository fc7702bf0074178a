"""The ablation command (training/ablation.py) and the report sections it and served_quality feed."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from tests.conftest import TINY
from training.ablation import DEFAULT_ROW, STEPS, ablate, ablation_section, masked
from training.loaders import load_dataset
from training.pipeline import CandidateBatch
from training.report import write_report


def test_masked_zeroes_exactly_the_other_sources():
    names = ("retrieval.score", "retrieval.relative", "ease.score", "knn.score")
    c = CandidateBatch(
        np.arange(2), np.zeros((2, 3), np.int64), np.zeros((2, 4), np.float32), np.ones((2, 3, 4), np.float32)
    )
    m = masked(c, names, ("retrieval", "knn"))
    assert m.cand_features[..., [0, 1, 3]].min() == 1.0 and m.cand_features[..., 2].max() == 0.0
    assert c.cand_features.min() == 1.0  # the input is not modified


def test_ablation_rows_and_report(synthetic_dir: Path, tmp_path: Path):
    cfg = replace(TINY, ranker=replace(TINY.ranker, extra_folds=1, epochs=3))
    data = ablate(load_dataset(str(synthetic_dir)), cfg)
    rows = {r["row"]: r for r in data["rows"]}
    assert {name for name, _ in STEPS} | {DEFAULT_ROW, "retrieval model alone"} <= set(rows)
    # masking is real: the ranker reading retrieval features only ranks differently from every source
    assert rows[STEPS[0][0]]["test"] != rows[STEPS[-1][0]]["test"]
    for r in data["rows"]:
        for split in ("valid", "test"):
            assert 0.0 <= r[split]["ndcg@10"] <= 1.0 and 0.0 <= r[split]["recall@10"] <= 1.0
    assert rows["+ EASE at three strengths"]["bytes_per_item"] > 0 and data["holdout_users"] > 0
    assert rows[DEFAULT_ROW]["train_s"] > 0
    table = ablation_section(data)
    assert sum(line.startswith("| ") for line in table) == len(data["rows"]) + 1  # header + one per row

    # docs/quality.md from results: a dataset's section, its ablation, and the served-over-HTTP runs
    results = tmp_path / "results"
    (results / "ablation").mkdir(parents=True)
    (results / "served").mkdir()
    (results / "ablation" / f"{data['dataset']}.json").write_text(json.dumps(data))
    run = {"seed": 1, "test": {}, "valid": {}, "tuned": {}, "seconds": {}}
    (results / f"{data['dataset']}.json").write_text(json.dumps({"dataset": data["dataset"], "runs": [run]}))
    m = {"ndcg@10": 0.3, "recall@10": 0.2, "hit@10": 0.7, "coverage@10": 0.4, "users": 10}
    served = {
        "rows": {"Folio (served over HTTP)": m, "EASE (same data)": m, "MostPop": m},
        "relative_ndcg_vs_ease": 0.0,
        "k": 10,
        "service": {"precisions": {"fp16": 10}, "fallback_share": 0.0},
    }
    (results / "served" / "books-rules-off-fp16.json").write_text(json.dumps(served))
    report = tmp_path / "quality.md"
    write_report(results, report)
    text = report.read_text()
    assert f"### Ablation ({data['dataset']}" in text and "## Served over HTTP" in text
    assert "| books-rules-off-fp16 | fp16 | 0.3000 |" in text and "| +0.0% | 10 | 0.0% |" in text
