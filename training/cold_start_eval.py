"""Offline evaluation of item cold start: content vectors (models/content.py) for books never trained on.

    python -m training.cold_start_eval --dataset ml-1m --seed 2020 [--json out.json]

1. Prepare the dataset with the project's protocol, hold out a random ``--cold-share`` of the items
   entirely (every interaction of theirs leaves training), train the retrieval model on the rest
   (``training.train_retrieval``, early-stopped on a warm validation split, as ``training.experiment``).
2. Fit ``ContentEncoder`` on the warm items' records and trained vectors; encode the cold items.
3. Evaluate, for the users with at least one cold interaction and one warm training interaction, whose
   user vector is computed from their warm training interactions:
   (a) cold only: rank the cold items alone; Recall@10 / NDCG@10 of the user's cold items.
   (b) full catalog: top-50 over the warm item vectors plus the cold items' vectors, the user's warm
       training items masked (what the live FAISS index would return); Recall@50 of the user's cold
       items, of their held-out warm items (valid + test), and the cold items' share of the top-50.
   (c) ``/similar`` for a cold item with at least ``--min-users`` users: its 10 nearest warm items
       against its 10 true collaborative neighbours, the warm items with the highest co-occurrence
       cosine ``co(c, j) / sqrt(n_c n_j)`` over users (the cold item's held-out interactions against
       every warm interaction): overlap@10, hit@10 and quality@10 (the summed cosine of the 10 returned
       over that of the ideal 10). The same for the warm items with their trained vectors, as a
       reference (their neighbours were trained on those co-occurrences: an optimistic ceiling).
       Informational rows re-rank the neighbours by ``cos + beta * log1p(training popularity)``, for
       the cold items and for the warm reference alike: the co-occurrence cosine leans to popular items.

Baselines ("genre-pop"): (a) a cold item scores the sum over its genres g of the user's affinity
(share of their history with genre g) times the genre's popularity (mean warm training interactions
per warm item of genre g); the mean over its genres instead of the sum is reported too (weaker: the
sum also favours many-genre items, which are more popular on MovieLens). The "popularity oracle"
ranks the cold items by their held-out interaction counts: not knowable, a reference only.
(b, c) a cold item's vector is the normalized mean over its genres of the centroid of the genre's
``--genre-top`` most popular warm items; (c) also "genre-pop (direct)", the warm items sharing most
genres (Jaccard), then the most popular. Random: uniform scores / vectors.
Ablations: the content encoder restricted to some feature blocks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from models.content import BLOCKS, BookRecord, ContentEncoder, book_records
from models.features import genre_matrix
from models.retrieval import RetrievalConfig, RetrievalWeights
from training.dataset import Dataset, Interactions
from training.loaders import load_dataset
from training.metrics import accuracy, hits_matrix, top_k
from training.protocol import folds, prepare, protocol_for, split, user_item_matrix
from training.train_retrieval import train_retrieval

log = logging.getLogger("training.cold_start_eval")

ABLATIONS: dict[str, tuple[str, ...]] = {
    "content (genres)": ("genre", "genre_pair"),
    "content (genres + year)": ("genre", "genre_pair", "year"),
    "content (title only)": ("title",),
}
PRIOR_BETAS = (0.05, 0.1)


@dataclass
class Setup:
    """The prepared dataset split into warm and cold items, and the matrices every measure reads."""

    ds: Dataset
    cold: np.ndarray  # int64 item indices (prepared dataset) held out
    warm: np.ndarray  # int64 item indices kept, in warm-index order
    train: sp.csr_matrix  # users x warm: warm training interactions (the model's input and history)
    warm_all: sp.csr_matrix  # users x warm: every warm interaction
    heldout_warm: sp.csr_matrix  # users x warm: warm valid + test interactions
    cold_target: sp.csr_matrix  # users x cold: every cold interaction
    weights: RetrievalWeights
    retrieval: dict[str, float]


def holdout_items(n_items: int, share: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of ``round(share * n_items)`` items drawn at random (seeded)."""
    rng = np.random.default_rng([seed, 12])
    return np.sort(rng.choice(n_items, round(share * n_items), replace=False)).astype(np.int64)


def warm_dataset(ds: Dataset, cold: np.ndarray) -> tuple[Dataset, np.ndarray]:
    """The dataset without the ``cold`` items and their interactions, items re-indexed densely
    (users keep their indices); and the kept items' indices in ``ds``."""
    n = len(ds.catalog)
    warm = np.setdiff1d(np.arange(n), cold)
    item_map = np.full(n, -1, dtype=np.int64)
    item_map[warm] = np.arange(warm.size)
    inter = ds.interactions
    kept = inter.take(item_map[inter.items] >= 0)
    out = Interactions(kept.users, item_map[kept.items], kept.ratings, kept.timestamps, kept.user_ids)
    return Dataset(ds.name, ds.catalog.subset(warm), out, ds.source), warm


def setup(raw: Dataset, seed: int, cold_share: float, cache: Path | None) -> Setup:
    ds = prepare(raw, protocol_for(raw.name))
    cold = holdout_items(len(ds.catalog), cold_share, seed)
    warm_ds, warm = warm_dataset(ds, cold)
    s = split(warm_ds.interactions, (0.8, 0.1, 0.1), seed)
    val, _ = folds(warm_ds, s)
    inter = ds.interactions
    cold_map = np.full(len(ds.catalog), -1, dtype=np.int64)
    cold_map[cold] = np.arange(cold.size)
    rows = np.flatnonzero(cold_map[inter.items] >= 0)
    cold_target = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (inter.users[rows], cold_map[inter.items[rows]])),
        shape=(inter.n_users, cold.size),
    )
    cold_target.data[:] = 1.0
    n_warm = warm.size
    warm_inter = warm_ds.interactions
    warm_all = user_item_matrix(warm_inter, np.arange(len(warm_inter)), n_warm)
    heldout = user_item_matrix(warm_inter, np.concatenate([s.valid, s.test]), n_warm)

    meta = {"dataset": ds.name, "seed": seed, "cold": int(cold.size), "warm_nnz": int(val.train.nnz)}
    sidecar = cache.with_suffix(".json") if cache is not None else None
    if cache is not None and sidecar is not None and sidecar.exists():
        saved = json.loads(sidecar.read_text())
        if saved.get("meta") == meta:
            log.info("retrieval weights from %s", cache)
            return Setup(
                ds, cold, warm, val.train, warm_all, heldout, cold_target,
                RetrievalWeights.load(str(cache)), saved["retrieval"],
            )  # fmt: skip
    t = time.perf_counter()
    weights, valid = train_retrieval(val, RetrievalConfig(), seed, warm_ds.catalog.genres)
    retrieval = {
        "valid_ndcg@10": valid["ndcg@10"],
        "epoch": valid["epoch"],
        "seconds": time.perf_counter() - t,
    }
    if cache is not None:
        weights.save(str(cache))
        cache.with_suffix(".json").write_text(json.dumps({"meta": meta, "retrieval": retrieval}))
    return Setup(ds, cold, warm, val.train, warm_all, heldout, cold_target, weights, retrieval)


# --- baselines -----------------------------------------------------------------------------------


def genre_pop_vectors(
    warm_vectors: np.ndarray, warm_genres: np.ndarray, pop: np.ndarray, cold_genres: np.ndarray, top: int
) -> np.ndarray:
    """A cold item's vector: the normalized mean over its genres of the centroid of each genre's
    ``top`` most popular warm items (the overall top items where it has no known genre)."""
    dim = warm_vectors.shape[1]
    centroids = np.zeros((warm_genres.shape[1], dim))
    for g in range(warm_genres.shape[1]):
        members = np.flatnonzero(warm_genres[:, g] > 0)
        if members.size:
            best = members[np.argsort(-pop[members], kind="stable")[:top]]
            centroids[g] = warm_vectors[best].mean(0)
    overall = warm_vectors[np.argsort(-pop, kind="stable")[:top]].mean(0)
    counts = cold_genres.sum(1, keepdims=True)
    out = np.where(counts > 0, cold_genres @ centroids / np.maximum(counts, 1), overall)
    return _normalize(out)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --- the three measures ---------------------------------------------------------------------------


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = a - b
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0}


def cold_only(
    scores: dict[str, np.ndarray], target: sp.csr_matrix, users: np.ndarray
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """(a): ``scores[name]`` [len(users), n_cold]; metrics at 10 and each user's NDCG@10."""
    n_pos = np.diff(target.indptr)[users]
    out, per_user = {}, {}
    for name, s in scores.items():
        ranked = top_k(s, 10)
        hits = hits_matrix(ranked, target, users)
        m = accuracy(hits, n_pos, 10)
        out[name] = {k: m[k] for k in ("recall@10", "ndcg@10", "hit@10")}
        h = hits[:, :10].astype(np.float64)
        per_user[name] = h.sum(1) / n_pos
    return out, per_user


def full_catalog(
    user_vecs: np.ndarray,
    warm_vectors: np.ndarray,
    cold_vectors: dict[str, np.ndarray],
    st: Setup,
    users: np.ndarray,
    k: int = 50,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """(b): top-k over warm + cold vectors, the warm training items masked. Each method twice: as is
    (cold vectors of norm 1, the encoder's output), and with the cold vectors scaled by the ``alpha``
    that gives the cold items the same share of the top-k as they have of these users' interactions
    (an inner-product index takes any norm), so that methods compare at equal exposure."""
    n_warm = warm_vectors.shape[0]
    seen = st.train[users]
    n_cold_pos = np.diff(st.cold_target.indptr)[users]
    n_warm_pos = np.diff(st.heldout_warm.indptr)[users]
    has_warm = n_warm_pos > 0
    share = float(n_cold_pos.sum() / (n_cold_pos.sum() + st.warm_all[users].nnz))
    scores = user_vecs @ warm_vectors.T
    scores[np.repeat(np.arange(users.size), np.diff(seen.indptr)), seen.indices] = -np.inf
    warm_top = top_k(scores, k)
    warm_top_scores = np.take_along_axis(scores, warm_top, 1)

    def measure(ranked: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        warm_hits = hits_matrix(np.where(ranked < n_warm, ranked, -1), st.heldout_warm, users)
        cold_hits = hits_matrix(np.where(ranked >= n_warm, ranked - n_warm, -1), st.cold_target, users)
        cold_recall = cold_hits.sum(1) / n_cold_pos
        return {
            "cold_recall@50": float(cold_recall.mean()),
            "warm_recall@50": float(np.mean(warm_hits[has_warm].sum(1) / n_warm_pos[has_warm])),
            "all_recall@50": float(
                np.mean((cold_hits.sum(1) + warm_hits.sum(1)) / (n_cold_pos + n_warm_pos))
            ),
            "cold_share@50": float(np.mean(ranked >= n_warm)),
        }, cold_recall

    out: dict[str, dict[str, float]] = {"warm index only": measure(warm_top)[0]}
    per_user = {}
    for name, cv in cold_vectors.items():
        cold_scores = user_vecs @ cv.T

        def ranked(alpha: float, cold_scores: np.ndarray = cold_scores) -> np.ndarray:
            pos = top_k(np.hstack([warm_top_scores, alpha * cold_scores]), k)
            return np.where(
                pos < k, np.take_along_axis(warm_top, np.minimum(pos, k - 1), 1), n_warm + pos - k
            )

        m, _ = measure(ranked(1.0))
        lo, hi = -4.0, 4.0  # log10 alpha; the cold share grows with alpha
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(ranked(10**mid) >= n_warm) < share else (lo, mid)
        alpha = 10 ** ((lo + hi) / 2)
        cal, per_user[name] = measure(ranked(alpha))
        out[name] = m | {f"{key} (calibrated)": v for key, v in cal.items()} | {"alpha": alpha}
    out["target cold share"] = {"share": share}
    return out, per_user


def similar(
    neighbours: dict[str, Callable[[np.ndarray], np.ndarray]],
    co: np.ndarray,
    items: np.ndarray,
) -> dict[str, dict[str, float]]:
    """(c): ``neighbours[name](items) -> [len(items), 10]`` warm indices; ``co`` [len(items), n_warm] the
    co-occurrence cosine (its own column already excluded by the caller)."""
    truth = top_k(co, 10)
    ideal = np.take_along_axis(co, truth, 1).sum(1)
    out = {}
    for name, fn in neighbours.items():
        pred = fn(items)
        overlap = np.array([np.intersect1d(p, t).size for p, t in zip(pred, truth, strict=True)]) / 10.0
        quality = np.take_along_axis(co, pred, 1).sum(1) / np.maximum(ideal, 1e-12)
        out[name] = {
            "overlap@10": float(overlap.mean()),
            "hit@10": float(np.mean(overlap > 0)),
            "quality@10": float(quality.mean()),
        }
    return out


def cooccurrence(target: sp.csr_matrix, warm_all: sp.csr_matrix) -> np.ndarray:
    """[n_target_items, n_warm]: co-occurrence cosine over users between each column of ``target``
    and each warm item."""
    t = target.tocsc().astype(np.float64)
    w = warm_all.astype(np.float64)
    co = np.asarray((t.T @ w).todense())
    n_t = np.asarray(t.sum(0)).ravel()
    n_w = np.asarray(w.sum(0)).ravel()
    return co / np.sqrt(np.maximum(np.outer(n_t, n_w), 1.0))


# --- the run ------------------------------------------------------------------------------------


def _only(blocks: tuple[str, ...]) -> dict[str, float]:
    return {b: (1.0 if b in blocks else 0.0) for b in BLOCKS}


def evaluate(
    raw: Dataset,
    seed: int,
    cold_share: float = 0.1,
    min_users: int = 5,
    genre_top: int = 20,
    cache: Path | None = None,
    encoder_options: dict[str, Any] | None = None,
    ablations: bool = True,
) -> dict[str, Any]:
    st = setup(raw, seed, cold_share, cache)
    cat = st.ds.catalog
    records = book_records(cat.titles, cat.authors, cat.genres, cat.years)
    warm_rec = [records[i] for i in st.warm]
    cold_rec = [records[i] for i in st.cold]
    warm_vectors = st.weights.item_vectors
    opts = dict(encoder_options or {})
    if weighting := opts.pop("sample_weight", None):  # experiments: "log-pop" or "sqrt-pop"
        n = np.asarray(st.train.sum(0)).ravel()
        opts["sample_weight"] = np.log1p(n) + 1e-3 if weighting == "log-pop" else np.sqrt(n) + 1e-3

    t = time.perf_counter()
    encoder = ContentEncoder.fit(warm_rec, warm_vectors, seed=seed, **opts)
    fit_s = time.perf_counter() - t
    encoders = {"content": encoder}
    if ablations:
        for name, blocks in ABLATIONS.items():
            encoders[name] = ContentEncoder.fit(
                warm_rec, warm_vectors, seed=seed, **(opts | {"block_weights": _only(blocks)})
            )
    cold_vecs: dict[str, np.ndarray] = {name: e.encode(cold_rec) for name, e in encoders.items()}

    vocab = cat.genre_vocab
    warm_g = genre_matrix([cat.genres[i] for i in st.warm], tuple(vocab)).astype(np.float64)
    cold_g = genre_matrix([cat.genres[i] for i in st.cold], tuple(vocab)).astype(np.float64)
    pop = np.asarray(st.train.sum(0)).ravel()
    cold_vecs["genre-pop"] = genre_pop_vectors(warm_vectors, warm_g, pop, cold_g, genre_top)
    rng = np.random.default_rng([seed, 13])
    cold_vecs["random"] = _normalize(rng.standard_normal((st.cold.size, warm_vectors.shape[1])))

    n_hist = np.diff(st.train.indptr)
    users = np.flatnonzero((np.diff(st.cold_target.indptr) > 0) & (n_hist > 0))
    hist = [st.train.indices[st.train.indptr[u] : st.train.indptr[u + 1]] for u in users]
    user_vecs = st.weights.user_vectors(hist)

    # (a) cold items only
    affinity = np.asarray(st.train[users] @ warm_g) / n_hist[users, None]
    genre_pop = (pop @ warm_g) / np.maximum(warm_g.sum(0), 1.0)
    a_scores = {name: user_vecs @ v.T for name, v in cold_vecs.items() if name != "random"}
    a_scores["genre-pop"] = (affinity * genre_pop) @ cold_g.T
    a_scores["genre-pop (mean over genres)"] = a_scores["genre-pop"] / np.maximum(cold_g.sum(1), 1.0)
    cold_pop = np.asarray(st.cold_target.sum(0), dtype=np.float64).ravel()
    a_scores["popularity oracle (reference)"] = np.tile(cold_pop, (users.size, 1))
    a_scores["genre-pop vectors"] = user_vecs @ cold_vecs["genre-pop"].T
    a_scores["random"] = rng.random((users.size, st.cold.size))
    a, a_users = cold_only(a_scores, st.cold_target, users)
    a["content - genre-pop (recall@10, paired)"] = _paired(a_users["content"], a_users["genre-pop"])

    # (b) cold items among the whole warm catalog
    b, b_users = full_catalog(user_vecs, warm_vectors, cold_vecs, st, users)
    b["content - genre-pop (calibrated cold recall@50, paired)"] = _paired(
        b_users["content"], b_users["genre-pop"]
    )

    # (c) /similar for cold items, and for warm items as a reference
    n_c = np.diff(st.cold_target.tocsc().indptr)
    cold_items = np.flatnonzero(n_c >= min_users)
    co = cooccurrence(st.cold_target[:, cold_items], st.warm_all)
    shared = cold_g @ warm_g.T
    jaccard = shared / np.maximum(cold_g.sum(1)[:, None] + warm_g.sum(1)[None, :] - shared, 1.0)

    def by_scores(scores: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Neighbours from a [rows, n_warm] score matrix, rows indexed by the items asked for."""
        return lambda items: top_k(scores[items], 10)

    neigh = {name: by_scores(v @ warm_vectors.T) for name, v in cold_vecs.items() if name != "random"}
    prior = np.log1p(pop)
    for beta in PRIOR_BETAS:  # informational: /similar re-ranked with a popularity prior
        neigh[f"content + {beta} log1p(pop)"] = by_scores(
            cold_vecs["content"] @ warm_vectors.T + beta * prior
        )
    neigh["genre-pop (direct)"] = by_scores(jaccard * (pop.max() + 1.0) + pop)
    neigh["random"] = lambda items: np.stack(
        [rng.choice(st.warm.size, 10, replace=False) for _ in items]
    ).reshape(len(items), 10)
    c: dict[str, Any] = similar(neigh, co, cold_items)
    n_w = np.asarray(st.warm_all.sum(0)).ravel()
    warm_items = np.flatnonzero(n_w >= min_users)
    co_w = cooccurrence(st.warm_all[:, warm_items], st.warm_all)
    co_w[np.arange(warm_items.size), warm_items] = -np.inf  # not its own neighbour
    own = warm_vectors[warm_items] @ warm_vectors.T
    own[np.arange(warm_items.size), warm_items] = -np.inf
    rows = np.arange(warm_items.size)
    warm_ref = {"warm items, trained vectors (reference)": by_scores(own)}
    for beta in PRIOR_BETAS:
        name = f"warm items, trained vectors + {beta} log1p(pop) (reference)"
        warm_ref[name] = by_scores(own + beta * prior)
    c |= similar(warm_ref, co_w, rows)
    c["n_cold_items"] = int(cold_items.size)
    c["n_warm_items"] = int(warm_items.size)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "content.npz"
        encoder.save(path)
        size = path.stat().st_size
        same = ContentEncoder.load(path).encode(cold_rec[:50])
        assert np.allclose(same, encoder.encode(cold_rec[:50]), atol=1e-6)
    one: list[BookRecord] = cold_rec[:1]
    encoder.encode(one)
    times = []
    for rec in cold_rec[:200]:
        t0 = time.perf_counter()
        encoder.encode([rec])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    encoder.encode(records)
    batch_s = time.perf_counter() - t0

    return {
        "dataset": st.ds.name,
        "seed": seed,
        "cold_share": cold_share,
        "items": {"total": len(cat), "cold": int(st.cold.size), "warm": int(st.warm.size)},
        "users": {
            "evaluated": int(users.size),
            "with_cold_items_but_no_warm_history": int(
                np.sum((np.diff(st.cold_target.indptr) > 0) & (n_hist == 0))
            ),
        },
        "cold_interaction_share": float(st.cold_target.nnz / (st.cold_target.nnz + st.warm_all.nnz)),
        "retrieval": st.retrieval,
        "encoder": encoder.report
        | {
            "fit_seconds": fit_s,
            "file_bytes": size,
            "encode_one_ms_median": 1e3 * float(np.median(times)),
            "encode_per_item_ms_batch": 1e3 * batch_s / len(records),
        },
        "ablation_lambdas": {n: e.report["lambda"] for n, e in encoders.items() if n != "content"},
        "ablation_valid_cosine": {n: e.report["valid_cosine"] for n, e in encoders.items()},
        "a_cold_only": a,
        "b_full_catalog": b,
        "c_similar": c,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.cold_start_eval", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--dataset", default="ml-100k", help="ml-100k, ml-1m or a books.csv + ratings.csv directory"
    )
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--cold-share", type=float, default=0.1, help="share of items held out entirely")
    p.add_argument("--min-users", type=int, default=5, help="(c): cold items with at least this many users")
    p.add_argument("--genre-top", type=int, default=20, help="genre-pop vectors: popular items per genre")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--cache", type=Path, help="reuse / store the trained retrieval weights (.npz) here")
    p.add_argument(
        "--encoder",
        default="{}",
        help='ContentEncoder.fit options as JSON (experiments); "sample_weight": "log-pop" | "sqrt-pop"',
    )
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    opts = json.loads(args.encoder)
    raw = load_dataset(args.dataset, args.data_dir)
    result = evaluate(
        raw,
        args.seed,
        args.cold_share,
        args.min_users,
        args.genre_top,
        args.cache,
        opts,
        not args.no_ablations,
    )
    result["command"] = "python -m training.cold_start_eval " + " ".join(argv or sys.argv[1:])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
