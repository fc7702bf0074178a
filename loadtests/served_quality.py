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
import csv
import json
import sys
from collections import Counter
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import scipy.sparse as sp

from runners.http.schemas import RecommendResponse
from training.baselines import EASE
from training.dataset import Catalog, Dataset
from training.fetch import DATASETS, fetch
from training.loaders import load_dataset, load_goodbooks
from training.metrics import accuracy, top_k
from training.protocol import PROTOCOLS, prepare, protocol_for, split_counts

T = TypeVar("T", bound=Hashable)
REGS = (100.0, 250.0, 500.0, 1000.0, 2000.0)
ROWS = ("Folio (served over HTTP)", "EASE (same data)", "MostPop")
BOOK_COLUMNS = ("book_id", "title", "authors", "original_publication_year", "genres")
MAX_FAILED_SHARE = 0.01


# ------------------------------------------------------------------------------------------ split
def holdout_mask(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean per row: held out. Per user, a random order cut by ``split_counts(n, (1 - share, share))``,
    as ``training.protocol.split`` does."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(users.size)
    order = order[np.argsort(users[order], kind="stable")]  # grouped by user, shuffled within
    held = np.zeros(users.size, dtype=bool)
    for rows in np.split(order, np.flatnonzero(np.diff(users[order])) + 1):
        n_train, _ = split_counts(rows.size, (1.0 - share, share))
        held[rows[n_train:]] = True
    return held


def _num(x: float) -> str:
    """A number as loaders read it back: "" for NaN, shortest round-trip digits otherwise."""
    return "" if np.isnan(x) else np.format_float_positional(x, trim="-")


def _text(s: str) -> str:
    return " ".join(s.splitlines()).strip()  # the loaders read one record per physical line, stripped


def write_books(path: Path, cat: Catalog) -> None:
    """``cat`` as a Goodbooks-style books.csv (what load_goodbooks reads back)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(BOOK_COLUMNS)
        for i, t, a, g, y in zip(cat.item_ids, cat.titles, cat.authors, cat.genres, cat.years, strict=True):
            w.writerow([i, _text(t), _text(a), _num(float(y)), "|".join(g)])


def write_ratings(path: Path, ds: Dataset, rows: np.ndarray) -> None:
    """The interactions ``rows`` of ``ds`` (in that order) as a Goodbooks-style ratings.csv."""
    inter, cat = ds.interactions, ds.catalog
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("user_id", "book_id", "rating", "timestamp"))
        for r in rows:
            u, i = inter.user_ids[inter.users[r]], cat.item_ids[inter.items[r]]
            w.writerow((u, i, _num(float(inter.ratings[r])), _num(float(inter.timestamps[r]))))


def write_split(ds: Dataset, out: Path, share: float, seed: int) -> np.ndarray:
    """Write books.csv, ratings.csv (kept rows, file order) and holdout.csv; returns the held-out mask."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout share must be in (0, 1), got {share}")
    inter, cat = ds.interactions, ds.catalog
    held = holdout_mask(inter.users, share, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_books(out / "books.csv", cat)
    write_ratings(out / "ratings.csv", ds, np.flatnonzero(~held))
    write_holdout(out / "holdout.csv", ds, held)
    return held


def write_holdout(path: Path, ds: Dataset, held: np.ndarray) -> None:
    """holdout.csv: (user_id, book_id) of the interactions ``held`` (bool per row) marks."""
    inter, cat = ds.interactions, ds.catalog
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("user_id", "book_id"))
        w.writerows(
            (inter.user_ids[inter.users[r]], cat.item_ids[inter.items[r]]) for r in np.flatnonzero(held)
        )


def prepared_dataset(name: str, data_dir: Path) -> Dataset:
    """The dataset (fetched when it is a known one) after its evaluation protocol (training.protocol)."""
    if name in DATASETS:
        fetch(name, data_dir)
    raw = load_dataset(name, data_dir)
    return prepare(raw, protocol_for(raw.name))


def warn_if_protocol_folder(out: Path) -> None:
    if out.resolve().name in PROTOCOLS:
        print(
            f"warning: training on a folder named {out.resolve().name!r} applies that dataset's "
            "protocol again; rename the folder",
            file=sys.stderr,
        )


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
@dataclass(frozen=True)
class EvalData:
    """ratings.csv (binary users x items) and holdout.csv in the same index space."""

    user_ids: list[str]  # ratings.csv users, then holdout-only users
    train: sp.csr_matrix
    target: sp.csr_matrix


def read_holdout(path: Path, ds: Dataset) -> EvalData:
    """holdout.csv (user_id, book_id) against the catalog loaded from books.csv + ratings.csv.

    Unknown books raise ValueError; held-out pairs also in ratings.csv are dropped (no one may
    recommend them)."""
    user_ids = list(ds.interactions.user_ids)
    users = {u: n for n, u in enumerate(user_ids)}
    items = {b: n for n, b in enumerate(ds.catalog.item_ids)}
    rows, cols = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            u, b = rec["user_id"].strip(), rec["book_id"].strip()
            if b not in items:
                raise ValueError(f"{path}:{line}: unknown book_id {b!r}")
            if u not in users:
                users[u] = len(user_ids)
                user_ids.append(u)
            rows.append(users[u])
            cols.append(items[b])
    shape = (len(user_ids), len(ds.catalog))
    inter = ds.interactions
    train = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.users, inter.items)), shape=shape)
    target = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    train.data[:], target.data[:] = 1.0, 1.0
    target = (target - target.multiply(train)).tocsr()
    target.eliminate_zeros()
    return EvalData(user_ids, train, target)


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
@dataclass
class Served:
    lists: dict[str, list[str]] = field(default_factory=dict)  # user_id -> recommended item ids
    failures: Counter[str] = field(default_factory=Counter)  # status or error -> count
    fallback: Counter[str] = field(default_factory=Counter)
    cold_start: int = 0
    cached: int = 0
    model_versions: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    precisions: Counter[str] = field(default_factory=Counter)
    retries_429: int = 0


def retry_after(response: httpx.Response, default_s: float = 1.0) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", default_s)), 0.05), 60.0)
    except ValueError:  # an HTTP-date: not worth parsing here
        return default_s


@dataclass(frozen=True)
class Posted:
    response: httpx.Response | None  # the first answer that is not a 429; None: none came
    failure: str | None  # why none came: the httpx error's class name, or "429 x<max_429>"
    retries_429: int  # 429 answers received (each waited out per Retry-After)


async def post_retrying(
    client: httpx.AsyncClient,
    path: str,
    body: Any,
    max_429: int = 50,
    headers: dict[str, str] | None = None,
) -> Posted:
    """POST ``body`` as JSON to ``path``, waiting out up to ``max_429`` 429s (Retry-After)."""
    retries = 0
    for _ in range(max_429):
        try:
            r = await client.post(path, json=body, headers=headers)
        except httpx.HTTPError as e:
            return Posted(None, type(e).__name__, retries)
        if r.status_code != 429:
            return Posted(r, None, retries)
        retries += 1
        await asyncio.sleep(retry_after(r))
    return Posted(None, f"429 x{max_429}", retries)


async def fetch_lists(
    url: str,
    users: Sequence[str],
    k: int,
    api_key: str | None,
    concurrency: int,
    max_429: int = 50,
    transport: httpx.AsyncBaseTransport | None = None,
    variant: str | None = None,
) -> Served:
    """POST /recommend for every user, at most ``concurrency`` in flight; 429s wait Retry-After.
    ``variant``: the ranker variant (int8, fp16, fp32) or A/B arm to ask for (None: the user's)."""
    served = Served()
    sem = asyncio.Semaphore(concurrency)
    headers = {"x-api-key": api_key} if api_key else {}
    request: dict[str, Any] = {"k": k, "exclude_seen": True} | ({"variant": variant} if variant else {})

    async def one(client: httpx.AsyncClient, user: str) -> None:
        async with sem:
            out = await post_retrying(client, "/recommend", {"user_id": user, **request}, max_429)
            served.retries_429 += out.retries_429
            if out.response is None:
                served.failures[out.failure or "no answer"] += 1
                return
            r = out.response
            if r.status_code != 200:
                served.failures[str(r.status_code)] += 1
                return
            body = RecommendResponse.model_validate_json(r.content)
            served.lists[user] = [item.item_id for item in body.items]
            served.fallback[body.fallback] += 1
            served.cold_start += body.cold_start
            served.cached += body.cached
            served.model_versions[body.model_version] += 1
            served.variants[body.variant] += 1
            served.precisions[body.precision] += 1

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0, transport=transport) as client:
        await asyncio.gather(*(one(client, u) for u in users))
    return served


# ------------------------------------------------------------------------------------------ report
def markdown(rows: dict[str, dict[str, float]], k: int) -> str:
    cols = (f"ndcg@{k}", f"recall@{k}", f"hit@{k}", f"coverage@{k}")
    out = ["| | " + " | ".join(cols) + " | users |", "|---" * (len(cols) + 2) + "|"]
    for name, m in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {int(m['users'])} |")
    return "\n".join(out)


def service_stats(served: Served, requests: int) -> dict[str, Any]:
    ok = len(served.lists)

    def share(n: int) -> float | None:
        return n / ok if ok else None

    return {
        "requests": requests,
        "succeeded": ok,
        "failed": sum(served.failures.values()),
        "failures": dict(served.failures),
        "retries_429": served.retries_429,
        "fallback_share": share(ok - served.fallback["none"]),
        "fallback": dict(served.fallback),
        "cold_start_share": share(served.cold_start),
        "cached_share": share(served.cached),
        "model_versions": dict(served.model_versions),
        "variants": dict(served.variants),
        "precisions": dict(served.precisions),
    }


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
        f"429 retries {svc['retries_429']}, versions {svc['model_versions']}"
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
