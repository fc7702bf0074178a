"""loadtests/retrieval_bench.py on a small catalog: files written, recall computed right, the pick justified.

The recall the benchmark reports for its chosen ANN setting is checked against an independent computation:
the exact top-10 from numpy (no FAISS), the chosen index rebuilt from the parameters in the JSON, and the
overlap counted with Python sets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from loadtests import retrieval_bench as rb
from loadtests.retrieval import indexes

ARGS = ["--items", "20000", "--dim", "32", "--queries", "200"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("retrieval")
    return rb.main([*ARGS, "--out", str(out)]), out


def numpy_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in scores]


def test_writes_json_and_png(run: tuple[dict[str, Any], Path]) -> None:
    result, out = run
    assert (out / "retrieval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "retrieval.json").read_text())
    assert saved["config"]["items"] == 20000 and saved["config"]["dim"] == 32
    assert saved["config"]["search_threads"] == 1
    assert saved["machine"]["cores"] and saved["machine"]["faiss"] == faiss.__version__
    assert saved["chosen"] == json.loads(json.dumps(result["chosen"]))
    assert set(saved["families"]) == set(indexes.FAMILIES)
    assert "| exact |" in result["markdown"] and "Target" in result["markdown"]


def test_exact_against_itself_is_perfect(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    assert result["exact"]["recall@10"] == 1.0
    assert result["exact"]["recall@10_batched"] == 1.0
    assert result["exact_serving_depth"]["qps"] > 0


def test_recall_at_k_known_answers() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert indexes.recall_at_k(truth, truth, 4) == 1.0
    assert indexes.recall_at_k(truth[:, ::-1], truth, 4) == 1.0  # order within the top-k does not matter
    found = np.array([[1, 2, 9, -1], [-1, -1, -1, -1]])  # -1: FAISS found fewer than k
    assert indexes.recall_at_k(found, truth, 4) == pytest.approx((2 / 4 + 0) / 2)
    assert indexes.recall_at_k(truth[::-1], truth, 4) == 0.0  # rows are matched query by query


def test_chosen_setting_is_the_cheapest_above_target(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    target = result["config"]["target_recall"]
    for data in result["families"].values():
        ok = [p for p in data["sweep"] if p["recall@10"] >= target]
        if ok:
            assert data["chosen"]["b1"]["qps"] == max(p["b1"]["qps"] for p in ok)
        else:
            assert data["chosen"] is None
    best = result["chosen"]
    assert best is not None, "a 20k catalog should reach recall 0.95 with some swept setting"
    assert best["recall@10"] >= target
    assert result["target_met"] == (best["speedup_b1"] >= result["config"]["target_speedup"])


def test_reported_recall_matches_an_independent_computation(run: tuple[dict[str, Any], Path]) -> None:
    result, _ = run
    cfg = result["config"]
    items, queries = indexes.synthetic_catalog(
        cfg["items"], cfg["dim"], cfg["queries"], cfg["clusters"], cfg["seed"]
    )
    truth = numpy_top_k(items, queries, cfg["k"])
    faiss.omp_set_num_threads(1)
    ivf = None
    for family in indexes.FAMILIES:  # ivf first: ivf_sq8 reuses its coarse centroids
        data = result["families"][family]
        point = data["chosen"] or data["sweep"][-1]
        params = data["index_params"]
        if family == "hnsw":
            index = indexes.make_hnsw(items, params["M"], params["efConstruction"])
        elif family == "ivf":
            index = ivf = indexes.make_ivf(items, params["nlist"], params["seed"])
        else:
            index = indexes.make_ivf_sq8(items, ivf)
        indexes.set_knob(index, point[indexes.KNOB[family]])
        _, found = index.search(queries, cfg["k"])
        recall = np.mean([len(t & set(f.tolist())) / cfg["k"] for t, f in zip(truth, found, strict=True)])
        # IVF builds are deterministic; an HNSW graph built on 2 threads differs a little from run to run.
        tolerance = 0.03 if family == "hnsw" else 0.002
        assert point["recall@10"] == pytest.approx(recall, abs=tolerance), family
    # ... and the benchmark's ground truth is the exact top-10: exact search agrees with numpy.
    flat = faiss.IndexFlatIP(cfg["dim"])
    flat.add(items)
    _, exact = flat.search(queries, cfg["k"])
    exact_recall = np.mean([len(t & set(f.tolist())) / cfg["k"] for t, f in zip(truth, exact, strict=True)])
    assert exact_recall >= 0.999
