"""Item cold start as a running Folio service answers it over HTTP: books it never trained on, added
through the admin API, then recommended and answered by /similar.

    python -m loadtests.served_new_books split --dataset ml-100k --out /tmp/nb/ml100k-items [--item-share 0.1]
    BENTOML_HOME=/tmp/nb/home100 FOLIO_STATE_DIR=/tmp/nb/state100 \\
        python -m training main --dataset /tmp/nb/ml100k-items --no-feedback --no-catalog-changes \\
        --out /tmp/nb/repo100
    DIGEST=$(python -c "from runners.platform.settings import hash_key; print(hash_key('nb-key'))")
    BENTOML_HOME=/tmp/nb/home100 FOLIO_STATE_DIR=/tmp/nb/state100 FOLIO_API_KEYS=$DIGEST \\
        FOLIO_RATE_LIMIT_RPS=0 FOLIO_CACHE_TTL_S=0 bentoml serve service:Recommender --port 3111 &
    FOLIO_API_KEY=nb-key python -m loadtests.served_new_books evaluate --url http://127.0.0.1:3111 \\
        --catalog /tmp/nb/ml100k-items --per-list 2 [--json out.json]

``split`` applies the dataset's evaluation protocol (training.protocol), holds out a random share of the
items entirely (``training.cold_start_eval.holdout_items``: the same books the offline evaluation holds
out for the same seed) and writes ``books.csv`` + ``ratings.csv`` (the other books and every interaction
on them, Goodbooks style), ``new_books.json`` (the held-out books' records as /admin/catalog/books takes
them) and ``holdout.csv`` (user_id, book_id: every interaction on a held-out book). Name the output folder
after no protocol dataset ("ml-1m", "ml-100k"): training picks the protocol by the folder's name and
would filter the written ratings again.

``evaluate`` (the key from ``FOLIO_API_KEY``, sent as ``Authorization: Bearer``) POSTs new_books.json to
/admin/catalog/books (batches of at most 1,000), then:

* /recommend (k=50, exclude_seen) for up to ``--users`` sampled users with a held-out-book interaction
  and at least ``--min-history`` (5) books in ratings.csv, scored against that user's held-out books only
  (RecBole definitions, ``served_quality.list_metrics``): Recall@50, NDCG@10, hit@50, and how many new
  books the service placed (it places at most FOLIO_NEW_BOOKS_PER_LIST an answer; /info does not show
  it: ``--per-list`` only labels the report). Baselines at equal exposure ("same slots"): the positions
  at which the service placed new books, filled with the new books ranked by popularity-in-genre for the
  user (a book scores the sum over its genres g of the user's share of ratings.csv books with genre g
  times g's mean ratings.csv interactions per book: ``training.cold_start_eval`` (a)), or at random.
* /similar (k=10) for up to ``--similar-books`` (300) held-out books with at least ``--min-users`` (5)
  users in holdout.csv: overlap@10 (and hit@10, quality@10 as in ``training.cold_start_eval`` (c)) with
  the 10 books of books.csv with the highest co-occurrence cosine (holdout.csv users of the new book
  against ratings.csv), against "same genres, most popular" (books.csv ranked by genre Jaccard with the
  new book, ties by popularity) and random books. New books in a /similar answer count as misses.

Prints markdown tables; ``--json`` writes everything. Exits 1 when more than 1% of the requests failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from loadtests.served.client import (
    MAX_FAILED_SHARE,
    SimilarServed,
    add_books,
    fetch_lists,
    fetch_similar,
    service_stats,
)
from loadtests.served.data import (
    ItemSplit,
    genre_matrices,
    prepared_dataset,
    read_item_split,
    warn_if_protocol_folder,
    write_item_split,
)
from loadtests.served_quality import list_metrics
from training.cold_start_eval import cooccurrence
from training.metrics import top_k

K_RECOMMEND, K_NDCG, K_SIMILAR = 50, 10, 10
K_SIMILAR_DEEP = 100  # /similar is asked for this many: the first 10 are scored, the rest diagnose
POSITION_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)  # [0,1), [1,2), [2,3), [3,5), ... of a new book's rank
REC_ROWS = ("Folio (served over HTTP)", "popularity-in-genre, same slots", "random, same slots")
SIM_ROWS = (
    "Folio /similar (served over HTTP)",
    "same genres, most popular",
    "random",
    "Folio /similar, first 10 trained books of k=100 (diagnostic)",
)


# ------------------------------------------------------------------------------------------ split


def cmd_split(args: argparse.Namespace) -> None:
    ds = prepared_dataset(args.dataset, args.data_dir)
    cold = write_item_split(ds, args.out, args.item_share, args.seed)
    held = np.isin(ds.interactions.items, cold)
    print(
        f"{ds.name}: {ds.interactions.n_users} users, {len(ds.catalog)} items; {cold.size} books held out "
        f"({args.out / 'new_books.json'}) with {int(held.sum())} interactions of "
        f"{np.unique(ds.interactions.users[held]).size} users ({args.out / 'holdout.csv'}); "
        f"{int((~held).sum())} interactions on the other books in {args.out / 'ratings.csv'}"
    )
    warn_if_protocol_folder(args.out)


# --------------------------------------------------------------------------------------- baselines
def same_slots(served: Sequence[str], new_ids: set[str] | frozenset[str], ranked: Sequence[str]) -> list[str]:
    """``served`` with the positions holding a new book (in ``new_ids``) refilled, top position first,
    by the best of ``ranked`` (new books, best first); the other positions unchanged."""
    out, fill = list(served), iter(ranked)
    for at, item in enumerate(served):
        if item in new_ids:
            out[at] = next(fill)
    return out


def genre_pop_scores(
    history: sp.csr_matrix, users: np.ndarray, warm_genres: np.ndarray, new_genres: np.ndarray
) -> np.ndarray:
    """[len(users), new books]: popularity-in-genre (training.cold_start_eval (a)). ``history``: binary,
    every user x warm books (popularity is over all of it); a new book scores sum over its genres g of
    (the user's share of books with genre g) x (g's mean interactions per warm book of genre g)."""
    pop = np.asarray(history.sum(0), dtype=np.float64).ravel()
    rows = history[users]
    n_hist = np.maximum(np.diff(rows.indptr), 1)
    affinity = np.asarray(rows @ warm_genres) / n_hist[:, None]
    genre_pop = (pop @ warm_genres) / np.maximum(warm_genres.sum(0), 1.0)
    return np.asarray((affinity * genre_pop) @ new_genres.T)


def per_user_recall(lists: Sequence[Sequence[str]], held: Sequence[set[str]], k: int) -> np.ndarray:
    return np.array([len(set(lst[:k]) & pos) / len(pos) for lst, pos in zip(lists, held, strict=True)])


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = a - b
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0}


def rec_row(lists: Sequence[Sequence[str]], held: Sequence[set[str]], new_ids: set[str]) -> dict[str, float]:
    at50 = list_metrics(lists, held, K_RECOMMEND, max(len(new_ids), 1))
    at10 = list_metrics(lists, held, K_NDCG, max(len(new_ids), 1))
    placed = [[i for i in lst[:K_RECOMMEND] if i in new_ids] for lst in lists]
    return {
        f"recall@{K_RECOMMEND}": at50[f"recall@{K_RECOMMEND}"],
        f"ndcg@{K_NDCG}": at10[f"ndcg@{K_NDCG}"],
        f"hit@{K_RECOMMEND}": at50[f"hit@{K_RECOMMEND}"],
        f"recall@{K_NDCG}": at10[f"recall@{K_NDCG}"],
        "new_per_list": float(np.mean([len(p) for p in placed])) if placed else 0.0,
        "new_coverage": len({i for p in placed for i in p}) / max(len(new_ids), 1),
        "users": float(len(lists)),
    }


# ------------------------------------------------------------------------------------------- data


# ------------------------------------------------------------------------------------------- HTTP


# ------------------------------------------------------------------------------------- evaluation
def sample(candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    if candidates.size > n:
        candidates = np.sort(np.random.default_rng(seed).choice(candidates, size=n, replace=False))
    return candidates


def evaluate_recommend(
    data: ItemSplit, served_lists: dict[str, list[str]], users: np.ndarray, seed: int
) -> dict[str, Any]:
    new_set = set(data.new_ids)
    users = np.asarray([u for u in users if data.user_ids[u] in served_lists], dtype=np.int64)
    held = [
        {data.new_ids[j] for j in data.holdout.indices[data.holdout.indptr[u] : data.holdout.indptr[u + 1]]}
        for u in users
    ]
    folio = [served_lists[data.user_ids[u]][:K_RECOMMEND] for u in users]
    warm_g, new_g = genre_matrices(data, data.new_books)
    gp = genre_pop_scores(data.history, users, warm_g, new_g) if users.size else np.zeros((0, len(new_set)))
    ranked_gp = top_k(gp, len(data.new_ids)) if users.size else np.zeros((0, 0), np.int64)
    rng = np.random.default_rng([seed, 7])
    genre_lists, random_lists = [], []
    for r, lst in enumerate(folio):
        genre_lists.append(same_slots(lst, new_set, [data.new_ids[j] for j in ranked_gp[r]]))
        random_lists.append(
            same_slots(lst, new_set, [data.new_ids[j] for j in rng.permutation(len(data.new_ids))])
        )
    rows = {
        REC_ROWS[0]: rec_row(folio, held, new_set),
        REC_ROWS[1]: rec_row(genre_lists, held, new_set),
        REC_ROWS[2]: rec_row(random_lists, held, new_set),
    }
    placed = [[(at, i) for at, i in enumerate(lst) if i in new_set] for lst in folio]
    counts = Counter(len(p) for p in placed)
    by_book = Counter(i for p in placed for _, i in p)
    positions = [at for p in placed for at, _ in p]
    n = max(len(folio), 1)
    exposure = {
        "lists": len(folio),
        "lists_by_new_count": {str(c): counts[c] for c in sorted(counts)},
        "share_with_new": sum(v for c, v in counts.items() if c > 0) / n,
        "new_per_list": len(positions) / n,
        "new_in_top10_per_list": sum(at < K_NDCG for at in positions) / n,
        "position_mean": float(np.mean(positions)) if positions else None,
        "position_quartiles": np.percentile(positions, [25, 50, 75]).tolist() if positions else None,
        "positions": {
            f"{lo + 1}-{hi}" if hi - lo > 1 else str(hi): int(sum(lo <= at < hi for at in positions))
            for lo, hi in pairwise(POSITION_BUCKETS)
        },
        "distinct_new_books": len(by_book),
        "most_placed": [
            {
                "item_id": i,
                "title": next(b["title"] for b in data.new_books if b["item_id"] == i),
                "lists": c,
                "share": c / n,
            }
            for i, c in by_book.most_common(5)
        ],
        "new_books_with_holdout_users_in_sample": int(len(set().union(*held)) if held else 0),
        "held_out_per_user_mean": float(np.mean([len(h) for h in held])) if held else 0.0,
    }
    diff = (
        {
            f"folio - genre-pop recall@{K_RECOMMEND} (paired)": paired(
                per_user_recall(folio, held, K_RECOMMEND), per_user_recall(genre_lists, held, K_RECOMMEND)
            ),
            f"folio - random recall@{K_RECOMMEND} (paired)": paired(
                per_user_recall(folio, held, K_RECOMMEND), per_user_recall(random_lists, held, K_RECOMMEND)
            ),
        }
        if folio
        else {}
    )
    return {"rows": rows, "exposure": exposure, "paired": diff}


def evaluate_similar(data: ItemSplit, served: SimilarServed, books: np.ndarray, seed: int) -> dict[str, Any]:
    books = np.asarray([b for b in books if data.new_ids[b] in served.lists], dtype=np.int64)
    warm_ids = data.warm.catalog.item_ids
    position = {b: n for n, b in enumerate(warm_ids)}
    co = cooccurrence(data.holdout[:, books], data.history)
    truth = top_k(co, K_SIMILAR)
    ideal = np.take_along_axis(co, truth, 1).sum(1)
    warm_g, new_g = genre_matrices(data, [data.new_books[b] for b in books])
    pop = np.asarray(data.history.sum(0), dtype=np.float64).ravel()
    shared = new_g @ warm_g.T
    jaccard = shared / np.maximum(new_g.sum(1)[:, None] + warm_g.sum(1)[None, :] - shared, 1.0)
    rng = np.random.default_rng([seed, 11])
    deep = [served.lists[data.new_ids[b]] for b in books]
    served_lists = [lst[:K_SIMILAR] for lst in deep]
    trained = [[position[i] for i in lst if i in position] for lst in deep]
    preds = {
        SIM_ROWS[0]: [[position.get(i, -1) for i in lst] for lst in served_lists],  # new books: -1, a miss
        SIM_ROWS[1]: top_k(jaccard * (pop.max() + 1.0) + pop, K_SIMILAR).tolist(),
        SIM_ROWS[2]: [rng.choice(len(warm_ids), K_SIMILAR, replace=False).tolist() for _ in books],
        SIM_ROWS[3]: [t[:K_SIMILAR] for t in trained],
    }
    rows: dict[str, dict[str, float]] = {}
    for name, pred in preds.items():
        overlap = (
            np.array([len(set(p) & set(t.tolist())) for p, t in zip(pred, truth, strict=True)]) / K_SIMILAR
        )
        quality = np.array(
            [sum(co[r, j] for j in set(p) if j >= 0) for r, p in enumerate(pred)]
        ) / np.maximum(ideal, 1e-12)
        rows[name] = {
            f"overlap@{K_SIMILAR}": float(overlap.mean()) if books.size else 0.0,
            f"hit@{K_SIMILAR}": float(np.mean(overlap > 0)) if books.size else 0.0,
            f"quality@{K_SIMILAR}": float(quality.mean()) if books.size else 0.0,
            "books": float(books.size),
        }
    new_set = set(data.new_ids)
    n_new = [sum(i in new_set for i in lst) for lst in served_lists]
    return {
        "rows": rows,
        "served_answers": {
            "new_books_per_answer": float(np.mean(n_new)) if n_new else 0.0,
            "answers_with_new_books": float(np.mean([c > 0 for c in n_new])) if n_new else 0.0,
            "short_answers": int(sum(len(lst) < K_SIMILAR for lst in served_lists)),
            "unknown_ids": len({i for lst in deep for i in lst} - new_set - set(position)),
            f"trained_books_in_k{K_SIMILAR_DEEP}_mean": float(np.mean([len(t) for t in trained]))
            if deep
            else 0.0,
            f"first_trained_rank_in_k{K_SIMILAR_DEEP}_median": float(
                np.median([next((r for r, i in enumerate(lst) if i in position), len(lst)) for lst in deep])
            )
            if deep
            else 0.0,
        },
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    api_key = os.environ.get("FOLIO_API_KEY", "")
    if not api_key:
        raise SystemExit("set FOLIO_API_KEY (the admin API needs a key)")
    data = read_item_split(args.catalog)
    n_hist = np.diff(data.history.indptr)
    eligible = np.flatnonzero((np.diff(data.holdout.indptr) > 0) & (n_hist >= args.min_history))
    users = sample(eligible, args.users, args.seed)
    n_users = np.diff(data.holdout.tocsc().indptr)
    books = sample(np.flatnonzero(n_users >= args.min_users), args.similar_books, args.seed)
    if not users.size:
        raise SystemExit("no user has a held-out book and enough history")

    t = time.perf_counter()
    added = asyncio.run(add_books(args.url, data.new_books, api_key))
    admin_s = time.perf_counter() - t
    print(f"added {len(data.new_books)} books in {len(added)} request(s), {admin_s:.2f} s: {added[-1]}")
    time.sleep(args.settle_s)  # every worker serves the change within FOLIO_CATALOG_POLL_S (0.25 s)

    served = asyncio.run(
        fetch_lists(args.url, [data.user_ids[u] for u in users], K_RECOMMEND, api_key, args.concurrency)
    )
    svc = service_stats(served, len(users))
    sim = asyncio.run(
        fetch_similar(args.url, [data.new_ids[b] for b in books], K_SIMILAR_DEEP, api_key, args.concurrency)
    )
    requests = len(users) + len(books) + len(added)
    failed = svc["failed"] + sum(sim.failures.values())
    report: dict[str, Any] = {
        "url": args.url,
        "catalog": str(args.catalog),
        "per_list": args.per_list,
        "new_books": len(data.new_ids),
        "warm_books": len(data.warm.catalog),
        "eligible_users": int(eligible.size),
        "admin": {"requests": len(added), "seconds": admin_s, "answers": added},
        "recommend": evaluate_recommend(data, served.lists, users, args.seed) | {"service": svc},
        "similar": evaluate_similar(data, sim, books, args.seed)
        | {"requests": len(books), "failed": sum(sim.failures.values()), "failures": dict(sim.failures)},
        "requests": requests,
        "failed": failed,
    }
    return report


# ------------------------------------------------------------------------------------------ report
def table(rows: dict[str, dict[str, float]], cols: Sequence[str], count: str) -> str:
    out = ["| | " + " | ".join(cols) + f" | {count} |", "|---" * (len(cols) + 2) + "|"]
    for name, m in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {int(m[count])} |")
    return "\n".join(out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    report = evaluate(args)
    rec, sim = report["recommend"], report["similar"]
    print(f"\n/recommend (k={K_RECOMMEND}), new books per list at most {args.per_list}:")
    cols = (
        f"recall@{K_RECOMMEND}",
        f"ndcg@{K_NDCG}",
        f"hit@{K_RECOMMEND}",
        f"recall@{K_NDCG}",
        "new_per_list",
    )
    print(table(rec["rows"], cols, "users"))
    for name, d in rec["paired"].items():
        print(f"{name}: {d['mean']:+.4f} ± {d['se']:.4f} (SE)")
    print("exposure:", json.dumps(rec["exposure"]))
    svc = rec["service"]
    print(
        f"service: {svc['succeeded']}/{svc['requests']} answered, failures {svc['failures']}, "
        f"cold_start {svc['cold_start_share']}, fallback {svc['fallback']}, versions {svc['model_versions']}"
    )
    print(f"\n/similar of new books (asked for k={K_SIMILAR_DEEP}; the first {K_SIMILAR} scored):")
    print(table(sim["rows"], (f"overlap@{K_SIMILAR}", f"hit@{K_SIMILAR}", f"quality@{K_SIMILAR}"), "books"))
    print("answers:", json.dumps(sim["served_answers"]), "failures:", sim["failures"])
    print(f"\nrequests {report['requests']}, failed {report['failed']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if report["failed"] > MAX_FAILED_SHARE * report["requests"]:
        raise SystemExit(
            f"{report['failed']} of {report['requests']} requests to {args.url} failed "
            f"(more than {MAX_FAILED_SHARE:.0%})"
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.served_new_books", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "split",
        help="protocol + items held out entirely; books.csv, ratings.csv, new_books.json, holdout.csv",
    )
    s.add_argument("--dataset", required=True, help="ml-100k, ml-1m or a folder with books.csv + ratings.csv")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--item-share", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=2020)
    s.add_argument("--data-dir", type=Path, default=None, help="default: training.fetch.default_data_dir()")
    s.set_defaults(func=cmd_split)
    e = sub.add_parser(
        "evaluate", help="add the held-out books to a running service, score /recommend and /similar"
    )
    e.add_argument("--url", default="http://127.0.0.1:3000")
    e.add_argument("--catalog", type=Path, required=True, help="the split folder")
    e.add_argument("--users", type=int, default=1000)
    e.add_argument(
        "--min-history", type=int, default=5, help="users with at least this many ratings.csv books"
    )
    e.add_argument("--similar-books", type=int, default=300)
    e.add_argument(
        "--min-users", type=int, default=5, help="/similar: new books with at least this many users"
    )
    e.add_argument(
        "--per-list", type=int, default=2, help="the server's FOLIO_NEW_BOOKS_PER_LIST (report only)"
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--concurrency", type=int, default=8)
    e.add_argument("--settle-s", type=float, default=2.0, help="wait after the catalog change")
    e.add_argument("--json", type=Path, default=None)
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
