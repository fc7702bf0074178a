"""Quality of what a running Folio service answers over HTTP, next to EASE and MostPop on the same data.

    python -m loadtests.served_quality split --dataset ml-1m --out out/ml1m-split [--holdout-share 0.1]
    ./scripts/main.sh --dataset out/ml1m-split        # train + serve on the split's books.csv/ratings.csv
    python -m loadtests.served_quality evaluate --url http://127.0.0.1:3000 --catalog out/ml1m-split

``split`` applies the dataset's evaluation protocol (training.protocol), holds out a random share of
each user's interactions (a user with >= 2 keeps >= 1 in training and holds out >= 1) and writes
Goodbooks-style ``books.csv`` + ``ratings.csv`` (the rest) + ``holdout.csv``. Name the output folder
after no protocol dataset ("ml-1m", "ml-100k"): training picks the protocol by the folder's name and
would filter the written ratings again.

``evaluate`` POSTs /recommend (exclude_seen) for up to ``--users`` sampled users with held-out items,
scores the lists against holdout.csv (RecBole definitions: binary gain, ideal DCG over
min(#held-out, k), recall = hits / #held-out; coverage = distinct recommended items / books.csv
size), and ranks the same users with EASE (reg chosen on a 10% per-user validation split of
ratings.csv) and MostPop fit on ratings.csv, masking each user's ratings.csv items and the items no
rating mentions (the service drops those too). Exits 1 when more than 1% of the requests failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Collection, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from loadtests.served.client import (
    MAX_FAILED_SHARE,
    fetch_lists,
    service_stats,
)
from loadtests.served.data import (
    holdout_mask,
    prepared_dataset,
    read_holdout,
    warn_if_protocol_folder,
    write_split,
)
from training.baselines import EASE
from training.loaders import load_goodbooks
from training.metrics import accuracy, top_k

T = TypeVar("T", bound=Hashable)
REGS = (100.0, 250.0, 500.0, 1000.0, 2000.0)
ROWS = ("Folio (served over HTTP)", "EASE (same data)", "MostPop")


# ------------------------------------------------------------------------------------------ split


def cmd_split(args: argparse.Namespace) -> None:
    ds = prepared_dataset(args.dataset, args.data_dir)
    held = write_split(ds, args.out, args.holdout_share, args.seed)
    n_users = np.unique(ds.interactions.users[held]).size
    print(
        f"{ds.name}: {ds.interactions.n_users} users, {len(ds.catalog)} items; "
        f"{int((~held).sum())} interactions in {args.out / 'ratings.csv'}, {int(held.sum())} held out "
        f"for {n_users} users in {args.out / 'holdout.csv'}"
    )
    warn_if_protocol_folder(args.out)


# ------------------------------------------------------------------------------------ evaluation


def list_metrics(
    recommended: Sequence[Sequence[T]], held_out: Sequence[Collection[T]], k: int, n_items: int
) -> dict[str, float]:
    """NDCG, recall, hit and coverage at ``k`` of ranked lists (best first) against each user's
    held-out items (non-empty). A list shorter than k counts as misses; an item repeated in a list
    scores once."""
    hits = np.zeros((len(recommended), k), dtype=bool)
    for r, (recs, pos) in enumerate(zip(recommended, held_out, strict=True)):
        seen: set[T] = set()
        for c, item in enumerate(recs[:k]):
            hits[r, c] = item in pos and item not in seen
            seen.add(item)
    n_pos = np.asarray([len(p) for p in held_out], dtype=np.int64)
    m = accuracy(hits, n_pos, k) if len(recommended) else {}
    out = {name: m.get(name, 0.0) for name in (f"ndcg@{k}", f"recall@{k}", f"hit@{k}")}
    out[f"coverage@{k}"] = len({i for recs in recommended for i in recs[:k]}) / n_items
    out["users"] = float(len(recommended))
    return out


def rank_unseen(scores: np.ndarray, train: sp.csr_matrix, users: np.ndarray, k: int) -> list[list[int]]:
    """Top ``k`` item indices per row of ``scores`` (one row per user), best first, skipping the user's
    ``train`` items and the items no ``train`` row mentions (the service drops those at training)."""
    s = np.array(scores, dtype=np.float32)
    seen = train[users]
    s[np.repeat(np.arange(users.size), np.diff(seen.indptr)), seen.indices] = -np.inf
    s[:, np.diff(train.tocsc().indptr) == 0] = -np.inf
    ranked = top_k(s, k)
    return [[int(i) for i in row if np.isfinite(s[r, i])] for r, row in enumerate(ranked)]


def ease_recommend(
    train: sp.csr_matrix, users: np.ndarray, k: int, reg: float, batch: int = 1024
) -> list[list[int]]:
    model = EASE(reg).fit(train)
    out: list[list[int]] = []
    for start in range(0, users.size, batch):
        ub = users[start : start + batch]
        out += rank_unseen(model.score(train, ub), train, ub, k)
    return out


def mostpop_recommend(train: sp.csr_matrix, users: np.ndarray, k: int) -> list[list[int]]:
    pop = np.asarray(train.sum(0)).ravel()
    return rank_unseen(np.broadcast_to(pop, (users.size, pop.size)), train, users, k)


def _as_ids(lists: list[list[int]], ids: Sequence[str]) -> list[list[str]]:
    return [[ids[i] for i in lst] for lst in lists]


def _positives(target: sp.csr_matrix, users: np.ndarray) -> list[set[int]]:
    return [set(target.indices[target.indptr[u] : target.indptr[u + 1]].tolist()) for u in users]


def choose_reg(
    train: sp.csr_matrix, k: int, seed: int, regs: Sequence[float] = REGS, max_users: int = 5000
) -> tuple[float, dict[float, float]]:
    """EASE's reg by NDCG@k on a 10%-per-user validation split of ``train``; (best, ndcg per reg)."""
    coo = train.tocoo()
    held = holdout_mask(coo.row.astype(np.int64), 0.1, seed)
    fit = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=train.shape)
    valid = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), shape=train.shape)
    users = sample_users(valid, max_users, seed)
    pos, n = _positives(valid, users), train.shape[1]
    ndcg = {reg: list_metrics(ease_recommend(fit, users, k, reg), pos, k, n)[f"ndcg@{k}"] for reg in regs}
    return max(ndcg, key=lambda r: ndcg[r]), ndcg


def sample_users(target: sp.csr_matrix, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` users with at least one held-out item, seeded, in index order."""
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    if users.size > n:
        users = np.sort(np.random.default_rng(seed).choice(users, size=n, replace=False))
    return users


# ------------------------------------------------------------------------------------------- HTTP


# ------------------------------------------------------------------------------------------ report
def markdown(rows: dict[str, dict[str, float]], k: int) -> str:
    cols = (f"ndcg@{k}", f"recall@{k}", f"hit@{k}", f"coverage@{k}")
    out = ["| | " + " | ".join(cols) + " | users |", "|---" * (len(cols) + 2) + "|"]
    for name, m in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {int(m['users'])} |")
    return "\n".join(out)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The figures, JSON-ready. SystemExit when more than 1% of the requests failed."""
    if not 1 <= args.k <= 100:
        raise SystemExit(f"--k {args.k}: the service accepts k in 1..100")
    if args.users < 1 or args.concurrency < 1:
        raise SystemExit("--users and --concurrency must be at least 1")
    ds = load_goodbooks(args.catalog / "books.csv", args.catalog / "ratings.csv")
    data = read_holdout(args.holdout or args.catalog / "holdout.csv", ds)
    sampled = sample_users(data.target, args.users, args.seed)
    if not sampled.size:
        raise SystemExit(f"no user has a held-out item in {args.holdout or args.catalog / 'holdout.csv'}")
    served = asyncio.run(
        fetch_lists(
            args.url,
            [data.user_ids[u] for u in sampled],
            args.k,
            args.api_key,
            args.concurrency,
            variant=args.variant,
        )
    )
    svc = service_stats(served, len(sampled))
    if svc["failed"] > MAX_FAILED_SHARE * len(sampled):
        raise SystemExit(
            f"{svc['failed']} of {len(sampled)} /recommend requests to {args.url} failed "
            f"(more than {MAX_FAILED_SHARE:.0%}): {svc['failures']}"
        )
    users = np.asarray([u for u in sampled if data.user_ids[u] in served.lists], dtype=np.int64)
    ids, n_items, k = ds.catalog.item_ids, len(ds.catalog), args.k
    pos = [{ids[i] for i in p} for p in _positives(data.target, users)]
    folio = [served.lists[data.user_ids[u]] for u in users]
    svc["unknown_item_ids"] = len({i for lst in folio for i in lst} - set(ids))
    if svc["unknown_item_ids"]:
        print(f"warning: the service returned {svc['unknown_item_ids']} item ids not in the catalog")
    reg, valid = choose_reg(data.train, k, args.seed)
    print(
        f"EASE reg {reg:g} (validation ndcg@{k}: "
        + ", ".join(f"{r:g}: {v:.4f}" for r, v in valid.items())
        + ")"
    )
    rows = {
        ROWS[0]: list_metrics(folio, pos, k, n_items),
        ROWS[1]: list_metrics(_as_ids(ease_recommend(data.train, users, k, reg), ids), pos, k, n_items),
        ROWS[2]: list_metrics(_as_ids(mostpop_recommend(data.train, users, k), ids), pos, k, n_items),
    }
    folio_ndcg, ease_ndcg = rows[ROWS[0]][f"ndcg@{k}"], rows[ROWS[1]][f"ndcg@{k}"]
    return {
        "url": args.url,
        "catalog": str(args.catalog),
        "variant": args.variant,
        "k": k,
        "rows": rows,
        "relative_ndcg_vs_ease": (folio_ndcg - ease_ndcg) / ease_ndcg if ease_ndcg else None,
        "ease_reg": reg,
        "ease_validation_ndcg": {f"{r:g}": v for r, v in valid.items()},
        "service": svc,
    }


def cmd_evaluate(args: argparse.Namespace) -> None:
    report = evaluate(args)
    svc, k = report["service"], report["k"]
    print(markdown(report["rows"], k))
    if report["relative_ndcg_vs_ease"] is not None:
        print(f"\nFolio vs EASE, ndcg@{k}: {100 * report['relative_ndcg_vs_ease']:+.1f}%")
    shares = ", ".join(f"{n} {svc[n + '_share']:.1%}" for n in ("fallback", "cold_start", "cached"))
    print(
        f"service: {svc['succeeded']}/{svc['requests']} answered, failures {svc['failures']}, {shares}, "
        f"429 retries {svc['retries_429']}, shed-503 retries {svc['retries_503']}, "
        f"versions {svc['model_versions']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.served_quality", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "split", help="protocol + per-user holdout; writes books.csv, ratings.csv, holdout.csv"
    )
    s.add_argument("--dataset", required=True, help="ml-100k, ml-1m or a folder with books.csv + ratings.csv")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--holdout-share", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=2020)
    s.add_argument("--data-dir", type=Path, default=None, help="default: training.fetch.default_data_dir()")
    s.set_defaults(func=cmd_split)
    e = sub.add_parser("evaluate", help="score a running service's /recommend against the holdout")
    e.add_argument("--url", default="http://127.0.0.1:3000")
    e.add_argument("--catalog", type=Path, required=True, help="the split folder (books.csv, ratings.csv)")
    e.add_argument("--holdout", type=Path, default=None, help="default: <catalog>/holdout.csv")
    e.add_argument("--users", type=int, default=1000)
    e.add_argument("--k", type=int, default=10)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--api-key", default=None, help="sent as X-API-Key")
    e.add_argument("--concurrency", type=int, default=8)
    e.add_argument("--variant", default=None, help="int8, fp16, fp32 or an A/B variant (default: the user's)")
    e.add_argument("--json", type=Path, default=None)
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
