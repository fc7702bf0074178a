"""Multi-seed evaluation and the generated report, docs/quality.md (never edited by hand)."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training.ablation import ablation_section
from training.artifacts import write_artifacts
from training.dataset import Dataset
from training.experiment import TrainConfig, run

log = logging.getLogger(__name__)

# NDCG@10 under this protocol, as published for RecBole's ML-1M benchmark.
PUBLISHED = {
    "ml-1m": {
        "ADMMSLIM": 0.2904,
        "EASE": 0.2865,
        "RecVAE": 0.2795,
        "SLIMElastic": 0.2782,
        "NCEPLRec": 0.2748,
        "SimpleX": 0.2700,
        "NCL": 0.2679,
        "LightGCN": 0.2476,
        "BPR": 0.2407,
        "ItemKNN": 0.2389,
        "MostPop": 0.118,
    }
}
COLUMNS = (
    "ndcg@10",
    "recall@10",
    "mrr@10",
    "hit@10",
    "precision@10",
    "recall@50",
    "recall@100",
    "coverage@10",
    "diversity@10",
    "novelty@10",
)


def evaluate_seeds(dataset: Dataset, seeds: list[int], results: Path, cfg: TrainConfig) -> Path:
    """Run every seed; export and parity-check the first. Writes results/<dataset>.json."""
    runs: list[dict[str, Any]] = []
    for i, seed in enumerate(seeds):
        r = run(dataset, replace(cfg, seed=seed))
        entry: dict[str, Any] = {
            "seed": seed,
            "test": r.test,
            "valid": r.valid,
            "tuned": r.tuned,
            "seconds": r.seconds,
            "diversity": r.diversity,
        }
        if i == 0:
            with tempfile.TemporaryDirectory() as tmp:
                parity, index = write_artifacts(r, Path(tmp))
            entry |= {"parity": parity.to_json(), "index": index}
        runs.append(entry)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{dataset.name}.json"
    path.write_text(json.dumps({"dataset": dataset.name, "source": dataset.source, "runs": runs}, indent=1))
    log.info("wrote %s", path)
    return path


def _mean_std(values: list[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.4f} ± {a.std():.4f}"


def _dataset_section(data: dict[str, Any]) -> list[str]:
    name, runs = data["dataset"], data["runs"]
    models = list(runs[0]["test"])
    published = PUBLISHED.get(name, {})
    lines = [
        f"## {name}",
        "",
        f"Seeds: {', '.join(str(r['seed']) for r in runs)} (test split; tuned on validation).",
        "",
        "| model | " + " | ".join(COLUMNS) + " | published NDCG@10 |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for m in models:
        cells = [_mean_std([r["test"][m][c] for r in runs]) for c in COLUMNS]
        pub = published.get(m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {pub if pub is not None else ''} |")
    for m, pub in published.items():
        if m not in models:
            lines.append(f"| {m} (published only) | " + " | ".join("" for _ in COLUMNS) + f" | {pub} |")
    tuned = runs[0]["tuned"]
    if tuned:
        lines += [
            "",
            "Tuned on validation (first seed): " + ", ".join(f"{k} {v:g}" for k, v in tuned.items()) + ".",
        ]
    first = runs[0]
    if "parity" in first:
        p = first["parity"]
        lines += [
            "",
            f"### Export parity ({name}, seed {first['seed']})",
            "",
            "| variant | valid NDCG@10 | test NDCG@10 | Δ vs fp32 (valid) | top-10 agreement | "
            "max batch-vs-alone diff | ranked candidates/s (1 thread, 1,000 per call) |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in p["ndcg"]:
            lines.append(
                f"| {v} | {p['ndcg'][v]:.4f} | {p['test_ndcg'][v]:.4f} | "
                f"{p['ndcg'][v] - p['ndcg']['fp32']:+.4f} | {p['top10_agreement'][v]:.3f} | "
                f"{p['batch_max_abs_diff'][v]:.1e} | {p['candidates_per_s'][v]:,.0f} |"
            )
        idx = first["index"]
        lines += [
            "",
            f"FAISS: served index `{idx['kind']}` (exact up to {idx['exact_max_items']:,} items), "
            f"recall@10 vs exact {idx['recall@10_vs_exact']:.3f}; HNSW on this catalog "
            f"{idx['hnsw_recall@10_vs_exact']:.3f}.",
        ]
    lines += _diversity_section(name, runs)
    secs = {k: round(float(np.mean([r["seconds"].get(k, 0.0) for r in runs])), 1) for k in runs[0]["seconds"]}
    lines += ["", f"Mean seconds per stage: {secs}.", ""]
    return lines


def _diversity_section(name: str, runs: list[dict[str, Any]]) -> list[str]:
    """The accuracy/diversity curve of models/diversity.py, mean over seeds; the chosen penalty per seed."""
    if not all("diversity" in r for r in runs):
        return []
    curves = [{c["penalty"]: c for c in r["diversity"]["curve"]} for r in runs]
    chosen = [r["diversity"]["penalty"] for r in runs]
    budget = runs[0]["diversity"]["budget"]
    lines = [
        "",
        f"### Accuracy / diversity trade-off ({name}, mean over seeds)",
        "",
        "Genre diversity penalty (models/diversity.py: ranks per item already shown from the same genre). "
        "The default is chosen per seed on validation: the largest penalty whose NDCG@10 cost on the "
        f"ranker-holdout users, paired per user, stays within {budget} at mean + 2 standard errors "
        f"(training/experiment.choose_penalty). Chosen: {', '.join(f'{c:g}' for c in chosen)}.",
        "",
        "| penalty | valid NDCG@10 | test NDCG@10 | test recall@10 | test diversity@10 | test coverage@10 |",
        "|---|---|---|---|---|---|",
    ]
    for p in curves[0]:
        v = [c[p]["valid"] for c in curves]
        t = [c[p]["test"] for c in curves]
        lines.append(
            f"| {p:g} | {_mean_std([x['ndcg@10'] for x in v])} | {_mean_std([x['ndcg@10'] for x in t])} | "
            f"{_mean_std([x['recall@10'] for x in t])} | {_mean_std([x['diversity@10'] for x in t])} | "
            f"{_mean_std([x['coverage@10'] for x in t])} |"
        )
    return lines


SERVED_ROWS = ("Folio (served over HTTP)", "EASE (same data)")  # loadtests/served_quality.py's rows


def _served_section(results: Path) -> list[str]:
    """Quality over HTTP: one loadtests/served_quality.py JSON per run in ``results/served``."""
    files = sorted((results / "served").glob("*.json"))
    if not files:
        return []
    lines = [
        "## Served over HTTP",
        "",
        "What a running service answers, scored against held-out interactions: `python -m "
        "loadtests.served_quality split` holds out 10% of each user's interactions of a catalog and writes "
        "the rest as books.csv + ratings.csv; `./scripts/main.sh --dataset <split>` trains on them with "
        "the defaults (selection, then refit on all of them), versions, renders Triton and serves; "
        "`python -m loadtests.served_quality evaluate --variant V --json docs/results/served/<run>.json` "
        "asks /recommend (exclude_seen, k 10) for 1,000 sampled users over HTTP: candidates, features "
        "and the ranker variant on the embedded Triton, as users get them. EASE: fit on the same "
        "ratings.csv, its lambda chosen on a validation split of it. Run names say how the service was "
        "configured ('rules-off': FOLIO_DIVERSITY_PENALTY=0).",
        "",
        "| run | precision served | Folio NDCG@10 | Folio Recall@10 | Folio Hit@10 | Folio coverage@10 | "
        "EASE NDCG@10 | EASE Recall@10 | Folio vs EASE (NDCG) | users | fallback share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        d = json.loads(f.read_text())
        k = int(d.get("k", 10))
        folio, ease = (d["rows"][n] for n in SERVED_ROWS)
        svc = d["service"]
        rel = d.get("relative_ndcg_vs_ease")
        fallback = svc.get("fallback_share")
        lines.append(
            f"| {f.stem} | {', '.join(svc.get('precisions', {})) or '?'} | {folio[f'ndcg@{k}']:.4f} | "
            f"{folio[f'recall@{k}']:.4f} | {folio[f'hit@{k}']:.4f} | {folio[f'coverage@{k}']:.4f} | "
            f"{ease[f'ndcg@{k}']:.4f} | {ease[f'recall@{k}']:.4f} | "
            f"{'' if rel is None else f'{100 * rel:+.1f}%'} | {int(folio['users'])} | "
            f"{'' if fallback is None else f'{fallback:.1%}'} |"
        )
    return [*lines, ""]


def write_report(results: Path, report: Path) -> None:
    files = sorted(results.glob("*.json"))
    lines = [
        "# Folio quality report",
        "",
        "Generated by `python -m training evaluate --dataset <name>` (or `python -m training report`); "
        "do not edit by hand.",
        "",
        "Protocol (RecBole general recommendation): implicit positives (ML-1M: rating >= 3, iterated "
        "10-core), per-user random 80/10/10 split, full ranking over every item with train (and, for test, "
        "validation) items masked. Mean ± std over seeds. Every Folio row is the selection run (trained "
        "on the train split); the version `python -m training main` saves is then refitted on every "
        "interaction (training/refit.py), which no held-out figure can score. 'Folio retrieval': the "
        "retrieval model alone, full ranking; EASE (the model the pipeline's first item-item source "
        "reads) and ItemKNN: baselines, full ranking (each source of the pipeline alone: the ablation "
        "table); 'Folio candidates (merged, unranked)': the 200 candidates of "
        "models/candidates.py in merge order; 'Folio (retrieve + rank)': those ranked by the neural "
        "ranker (an MLP over each candidate's features, FP32, PyTorch; trained on the validation fold's "
        "lists and two re-split folds, training/ranker_folds.py), rules off; 'Folio (served defaults: "
        "diversity on)': with the validation-chosen diversity penalty, as `/recommend` serves by default.",
        "",
    ]
    for f in files:
        data = json.loads(f.read_text())
        lines += _dataset_section(data)
        ablation = results / "ablation" / f"{data['dataset']}.json"
        if ablation.is_file():
            lines += [*ablation_section(json.loads(ablation.read_text())), ""]
    lines += _served_section(results)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    log.info("wrote %s", report)
