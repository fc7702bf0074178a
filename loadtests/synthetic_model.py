"""A complete, servable synthetic ``folio`` version of any catalog size, for the growth benchmark.

    build_synthetic_version(1_000_000)  ->  "folio:<version>"  (labels: dataset=synthetic-1000000)

No training run and no dataset: every artifact of models/version.py ARTIFACTS is generated, with the
shapes and structure a trained version has, and written with the project's own code where it exists:

* catalog: Goodbooks-like entries (item_id, title, authors, genres, year), a primary genre per item
  plus up to two more, about 4% of years unknown; popularity is Zipf (s = 1.1) over a random item
  order, stored like training's interaction counts (expected counts for a notional reader base plus
  the counts in the synthetic histories);
* users: ``n_users`` histories (5..200 items, log-normal lengths) drawn from clustered preferences (one
  or two favourite genres, Zipf within a genre); split per user 80/10/10 into train / valid / test;
  every interaction has a Goodbooks-like 1..5 rating, stored as its rating weight
  (models.candidates.rating_weight: 1, 2 or 3) in ``histories.npz["weights"]``;
* retrieval: RetrievalWeights with structured random weights: ``item_in`` = genre centre + a shared
  popularity direction + noise, a random user projection, and item vectors = the encoder's output for
  a one-item history (L2-normalized), so users land near their genres' popular items;
* FAISS index: training.index.build_index (exact up to 100k items, IVF-Flat above);
* item-item sources (``item_item.npz``, models.item_item.ItemItem): the layout training.item_item gives
  a catalog of that size, EASE (``ease``, and ``ease_rated`` on the same matrix with rating weights)
  plus the timeline neighbours (``timeline``) up to training.item_item.EASE_MAX_ITEMS items, those
  alone above (training inverts no n_items x n_items matrix there). Each matrix has, per item,
  ``SPARSE_K`` distinct random neighbours (about 80% from its primary genre, the rest Zipf-popular items
  of the whole catalog, never itself; fewer in a small catalog), EASE-like signed or cosine-like
  positive weights, stored as training stores a matrix (models.item_item: dense up to DENSE_MAX_ITEMS
  items, CSR rows above);
* ranker: models.ranker.Ranker (an MLP, item tables inside the graph, the candidate features of
  models.candidates.feature_names(item_item) as its 4th input), randomly initialized with its feature
  normalizer fitted on the candidates training.pipeline.retrieve generates (models.candidates: FAISS-
  equivalent top list merged with the first item-item source, per-candidate features of every source;
  ``fit_steps`` > 0 adds a short listwise fit with
  training.pipeline.train_ranker's loss; off by default: latency does not depend on the weights, and
  the fits tried scored worse under INT8 parity than the random ranker), exported by
  training.export.export_all (FP32, FP16, INT8 calibrated on those candidates);
* parity: training.export.check_parity, unchanged, on validation / test candidates (retrieval top 200
  outside the seen items) of at most 512 users. Concessions, both recorded in the metadata
  (``synthetic.parity_users``, ``synthetic.parity_failures``, ``synthetic.ranker_init_seed``):
  check_parity evaluates on dense [users, n_items] score matrices, so the parity users are capped to
  keep users x n_items under 1.5e8 cells (150 users at 1M items), which makes the NDCG@10 comparison
  noisier, never laxer; and a random ranker's INT8 variant sometimes misses the 0.002 NDCG rule (seen
  on 2,000 items: 0.0391 vs 0.0412), so up to PARITY_ATTEMPTS initializations are tried and the first
  that passes is kept. The failures stay in the metadata; the stored numbers are check_parity's own
  and registry.parity_problems still decides servability.

Memory at 1M items (dim 64, hidden 128): item_in 512 MB, item vectors 256 MB, each ONNX ranker
carries the item tables (vectors, scalars, genres: 348 bytes per item, ~350 MB; FP16 half of it),
far below protobuf's 2 GB limit, which ``write_synthetic_artifacts`` checks. ``item_item.npz``: a CSR
matrix costs 8 + SPARSE_K x 8 = 2,056 bytes per item (2.06 GB at 1M items, ItemKNN alone; 4.1 kB per
item with EASE's matrix too, e.g. at 10k items); a dense one n_items x 4 bytes per item.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from models import registry, version
from models.candidates import feature_names, rating_weight
from models.features import FeatureSpec, genre_matrix, item_tables
from models.item_item import DENSE_MAX_ITEMS, SPARSE_K, ItemItem, Matrix, Source, SparseRows
from models.ranker import Ranker
from models.user_encoder import RetrievalWeights
from training.export import ParityError, check_parity, export_all
from training.index import EXACT_MAX_ITEMS, build_index, index_kind, recall_at_k
from training.item_item import EASE_MAX_ITEMS
from training.pipeline import CandidateBatch, histories, listwise_loss, retrieve
from training.protocol import Fold

log = logging.getLogger(__name__)

GENRES = (
    "fantasy", "romance", "mystery", "thriller", "science-fiction", "historical-fiction", "classics",
    "young-adult", "horror", "biography", "history", "poetry", "philosophy", "self-help", "business",
    "comics", "travel", "cookbooks", "religion", "science",
)  # fmt: skip
WORDS = (
    "Shadow", "River", "Crown", "Garden", "Winter", "Silent", "Empire", "Letters", "Stone", "Night",
    "Glass", "House", "Wind", "Secret", "Last", "Iron", "Summer", "Lost", "City", "Star", "Sea", "Road",
)  # fmt: skip
ONNX_LIMIT_BYTES = 2**31  # protobuf's 2 GB message limit
PARITY_CELLS = 150_000_000  # cap on users x n_items in check_parity's dense score matrices
CANDIDATES = 200  # retrieval depth for the ranker fit and the parity candidates (RankerConfig default)
CHUNK = 65_536  # rows per step when deriving item vectors
PARITY_ATTEMPTS = 4  # ranker initializations tried until one passes the parity rule
RATINGS = (1, 2, 3, 4, 5)
RATING_SHARES = (0.02, 0.07, 0.23, 0.35, 0.33)  # Goodbooks-10k's rating distribution, roughly
SAME_GENRE = 0.8  # share of an item's item-item neighbours drawn from its primary genre
ROW_CHUNK = 16_384  # item-item rows drawn per step (2 x SPARSE_K draws each: ~0.4 GB of temporaries)


def _labels(n_items: int) -> str:
    return f"synthetic-{n_items}"


def _catalog(rng: np.random.Generator, n_items: int, genres: tuple[str, ...], primary: np.ndarray) -> tuple:
    """(catalog.json entries, item genre tuples, years float32 with NaN)."""
    n_genres = len(genres)
    extra = rng.integers(0, 3, n_items)
    second = rng.integers(0, n_genres, n_items)
    third = rng.integers(0, n_genres, n_items)
    years = np.clip(np.round(rng.normal(1995, 20, n_items)), 1800, 2024).astype(np.float32)
    years[rng.random(n_items) < 0.04] = np.nan
    n_authors = max(1, n_items // 4)
    author = rng.zipf(1.3, n_items) % n_authors
    w = rng.integers(0, len(WORDS), (n_items, 3))
    item_genres: list[tuple[str, ...]] = []
    entries: list[dict[str, Any]] = []
    for i in range(n_items):
        gs = [genres[primary[i]]]
        for j, g in ((1, second[i]), (2, third[i])):
            if extra[i] >= j and genres[g] not in gs:
                gs.append(genres[g])
        item_genres.append(tuple(gs))
        y = years[i]
        entries.append(
            {
                "item_id": str(i + 1),
                "title": f"The {WORDS[w[i, 0]]} of {WORDS[w[i, 1]]} {WORDS[w[i, 2]]} #{i + 1}",
                "authors": f"Author {author[i] + 1}",
                "genres": gs,
                "year": None if np.isnan(y) else int(y),
            }
        )
    return entries, item_genres, years


def _histories(
    rng: np.random.Generator, n_users: int, n_items: int, n_genres: int, primary: np.ndarray, zipf: np.ndarray
) -> list[np.ndarray]:
    """Per user: 5..200 distinct items from one or two favourite genres, Zipf-popular within a genre."""
    by_genre = [np.flatnonzero(primary == g) for g in range(n_genres)]
    cum = [np.cumsum(zipf[ix]) / zipf[ix].sum() if ix.size else ix for ix in by_genre]
    lengths = np.clip(np.round(rng.lognormal(np.log(25), 0.6, n_users)), 5, 200).astype(int)
    out = []
    for u in range(n_users):
        favs = rng.choice(n_genres, size=2, replace=False)
        share = rng.uniform(0.6, 1.0)
        picks: list[np.ndarray] = []
        want = min(int(lengths[u]), n_items)
        for _ in range(8):  # redraw duplicates a few times
            g = np.where(rng.random(want) < share, favs[0], favs[1])
            for gg in np.unique(g):
                if by_genre[gg].size:
                    k = int((g == gg).sum())
                    picks.append(
                        by_genre[gg][
                            np.searchsorted(cum[gg], rng.random(k), side="right").clip(
                                max=by_genre[gg].size - 1
                            )
                        ]
                    )
            items = np.unique(np.concatenate(picks))
            if items.size >= want:
                break
        out.append(rng.permutation(items)[:want].astype(np.int64))
    return out


def _csr(rows: list[np.ndarray], n_items: int, values: list[np.ndarray] | None = None) -> sp.csr_matrix:
    """users x items, ones or ``values`` (aligned with ``rows``) as data; indices sorted per row."""
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
    if values is None:
        data = np.ones(indices.size, dtype=np.float32)
    else:
        data = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    m = sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_items))
    m.sort_indices()  # keeps data aligned
    return m


def _rating_weights(rng: np.random.Generator, hists: list[np.ndarray]) -> list[np.ndarray]:
    """Per user, one rating weight per history item (Goodbooks-like ratings through rating_weight)."""
    weight = {r: rating_weight(float(r)) for r in RATINGS}
    table = np.array([weight[r] for r in RATINGS], dtype=np.float32)
    return [table[rng.choice(len(RATINGS), size=h.size, p=RATING_SHARES)] for h in hists]


def item_item_sources(n_items: int) -> tuple[Source, ...]:
    """The sources training.item_item.fit_item_item serves at this catalog size (EASE only up to
    EASE_MAX_ITEMS items); ``sources[0]`` generates candidates."""
    timeline = Source("timeline", "timeline", rated=False)
    if n_items > EASE_MAX_ITEMS:
        return (timeline,)
    return (Source("ease", "ease", rated=False), Source("ease_rated", "ease", rated=True), timeline)


def synthetic_rows(
    rng: np.random.Generator, primary: np.ndarray, zipf: np.ndarray, *, signed: bool, k: int = SPARSE_K
) -> SparseRows:
    """CSR rows with ``min(k, n - 1)`` distinct neighbours per item (fewer where the item's genre is too
    small to draw them from), sorted int32 columns, never the item itself; about SAME_GENRE of them from the
    item's primary genre, the rest Zipf-popular items. Weights float32: EASE-like (``signed``: mostly
    small positive, some negative) or cosine-like (in (0, 0.5]). Built in steps, so the peak
    is the result plus about 0.4 GB (ROW_CHUNK rows at a time)."""
    n = primary.size
    k = min(k, n - 1)
    order = np.argsort(primary, kind="stable").astype(np.int32)  # items grouped by primary genre
    sizes = np.bincount(primary, minlength=int(primary.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cum = np.cumsum(zipf) / zipf.sum()
    indptr = np.zeros(n + 1, np.int64)
    indices = np.empty(n * k, np.int32)
    data = np.empty(n * k, np.float32)
    nnz = 0
    draws = 2 * k  # duplicates and the item itself are dropped; 2k distinct-enough draws leave k
    for s in range(0, n, ROW_CHUNK):
        e = min(n, s + ROW_CHUNK)
        m = e - s
        g = primary[s:e]
        pos = starts[g][:, None] + (rng.random((m, draws)) * sizes[g][:, None]).astype(np.int64)
        cols = order[np.minimum(pos, n - 1)]
        popular = rng.random((m, draws)) >= SAME_GENRE
        cols[popular] = np.minimum(np.searchsorted(cum, rng.random(int(popular.sum()))), n - 1)
        cols.sort(axis=1)
        drop = np.zeros_like(cols, dtype=bool)
        drop[:, 1:] = cols[:, 1:] == cols[:, :-1]
        drop |= cols == np.arange(s, e)[:, None]
        # k of each row's distinct columns at random: the k smallest random keys (float64: no ties),
        # the dropped ones keyed last; the mask keeps the sorted order.
        keys = rng.random((m, draws))
        keys[drop] = 2.0
        kth = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
        keep = (keys <= kth) & ~drop
        counts = keep.sum(1)
        block = cols[keep]
        if signed:  # EASE: small weights, positive for most neighbours, some negative
            vals = rng.normal(0.01, 0.02, block.size).astype(np.float32)
        else:  # cosine similarity of co-occurrence
            vals = (0.5 * rng.random(block.size, dtype=np.float32)).clip(min=1e-3)
        indices[nnz : nnz + block.size] = block
        data[nnz : nnz + block.size] = vals
        indptr[s + 1 : e + 1] = nnz + np.cumsum(counts)
        nnz += block.size
    indices.resize(nnz, refcheck=False)  # in place: no second copy of the largest arrays
    data.resize(nnz, refcheck=False)
    return SparseRows(indptr, indices, data)


def _dense(rows: SparseRows, n: int) -> np.ndarray:
    out = np.zeros((n, n), np.float32)
    out[np.repeat(np.arange(n), np.diff(rows.indptr)), rows.indices] = rows.data
    return out


def synthetic_item_item(rng: np.random.Generator, primary: np.ndarray, zipf: np.ndarray) -> ItemItem:
    """The item-item sources of a synthetic version, stored as training stores them (dense up to
    DENSE_MAX_ITEMS items, SparseRows above)."""
    n = primary.size
    sources = item_item_sources(n)
    matrices: dict[str, Matrix] = {}
    for name in dict.fromkeys(src.matrix for src in sources):
        rows = synthetic_rows(rng, primary, zipf, signed=name == "ease")
        matrices[name] = _dense(rows, n) if n <= DENSE_MAX_ITEMS else rows
    return ItemItem(matrices, sources)


def _weights(
    rng: np.random.Generator, n_items: int, dim: int, hidden: int, primary: np.ndarray, zipf: np.ndarray
) -> RetrievalWeights:
    n_genres = int(primary.max()) + 1
    centres = rng.standard_normal((n_genres, hidden)).astype(np.float32)
    pop_dir = rng.standard_normal(hidden).astype(np.float32)
    logpop = np.log(zipf).astype(np.float32)
    logpop = (logpop - logpop.mean()) / (logpop.std() + 1e-6)
    item_in = np.empty((n_items, hidden), dtype=np.float32)
    for s in range(0, n_items, CHUNK):
        e = min(n_items, s + CHUNK)
        noise = rng.standard_normal((e - s, hidden), dtype=np.float32)
        item_in[s:e] = 0.3 * (centres[primary[s:e]] + 0.5 * logpop[s:e, None] * pop_dir + 0.8 * noise)
    bias_in = (0.05 * rng.standard_normal(hidden)).astype(np.float32)
    user_w = (rng.standard_normal((dim, hidden)) / np.sqrt(hidden)).astype(np.float32)
    user_b = np.zeros(dim, dtype=np.float32)
    vectors = np.empty((n_items, dim), dtype=np.float32)
    for s in range(0, n_items, CHUNK):  # the encoder's vector for a one-item history
        v = np.tanh(item_in[s : s + CHUNK] + bias_in) @ user_w.T + user_b
        vectors[s : s + CHUNK] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return RetrievalWeights(item_in, bias_in, user_w, user_b, vectors)


def _retrieve(
    weights, tables, item_item, history, seen, users: np.ndarray, n: int, chunk: int = 64
) -> CandidateBatch:
    """training.pipeline.retrieve in user chunks (its score matrix is [users, n_items]); ``history``
    holds rating weights."""
    parts = [
        retrieve(weights, tables, item_item, history, seen, users[s : s + chunk], n)
        for s in range(0, users.size, chunk)
    ]
    return CandidateBatch(
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.items for p in parts]),
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.cand_features for p in parts]),
    )


def _fit_ranker(
    ranker: Ranker, cands: CandidateBatch, target: sp.csr_matrix, seed: int, steps: int
) -> float | None:
    """Fit the feature normalizer, then ``steps`` listwise softmax steps (training.pipeline.train_ranker's
    loss); returns the last loss (None without steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = cands.items.shape[1]
    labels = cands.labels(target)
    sample = np.arange(min(cands.users.size, 256))
    ranker.fit_normalizer(
        torch.from_numpy(cands.items[sample].reshape(-1)),
        torch.from_numpy(np.repeat(cands.features[sample], n, axis=0)),
        torch.from_numpy(cands.cand_features[sample].reshape(sample.size * n, -1)),
    )
    fit = np.flatnonzero(labels.sum(1) > 0)
    loss = None
    if fit.size == 0 or steps == 0:
        return loss
    opt = torch.optim.AdamW(ranker.parameters(), lr=1e-3, weight_decay=1e-4)
    ranker.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster, above all on a shared machine
    for _ in range(steps):
        out = listwise_loss(ranker, cands, labels, rng.choice(fit, size=min(64, fit.size), replace=False))
        opt.zero_grad()
        out.backward()
        opt.step()
        loss = float(out.item())
    torch.set_num_threads(threads)
    ranker.eval()
    return loss


def write_synthetic_artifacts(
    out: Path,
    n_items: int,
    *,
    n_users: int = 2000,
    dim: int = 64,
    hidden: int = 128,
    n_genres: int = 20,
    seed: int = 0,
    fit_steps: int = 0,
) -> dict[str, Any]:
    """Write every artifact of a version (models/version.py) into ``out``; returns the version metadata."""
    if not 1 <= n_genres <= len(GENRES):
        raise ValueError(f"n_genres must lie in [1, {len(GENRES)}]")
    if n_items < 2 * CANDIDATES:
        raise ValueError(f"n_items must be at least {2 * CANDIDATES}")
    writer = version.VersionWriter(out)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = round(times.get(name, 0.0) + now - t, 2)  # summed over parity attempts
        t = now
        log.info("synthetic-%d: %s %.1fs", n_items, name, times[name])

    genres = GENRES[:n_genres]
    shares = rng.dirichlet(np.full(n_genres, 2.0))
    primary = rng.choice(n_genres, size=n_items, p=shares)
    rank = rng.permutation(n_items)
    zipf = (1.0 / (rank + 1.0) ** 1.1).astype(np.float64)
    entries, item_genres, years = _catalog(rng, n_items, genres, primary)
    writer.catalog(entries)
    del entries
    lap("catalog")

    hists = _histories(rng, n_users, n_items, n_genres, primary, zipf)
    # Own generators from here on for what older versions lacked, so the other artifacts stay the same.
    rated = _rating_weights(np.random.default_rng(seed + 2), hists)
    train_rows, valid_rows, test_rows, train_weights = [], [], [], []
    for h, w in zip(hists, rated, strict=True):
        n_hold = max(1, round(0.1 * h.size))
        test_rows.append(h[:n_hold])
        valid_rows.append(h[n_hold : 2 * n_hold])
        train_rows.append(h[2 * n_hold :])
        train_weights.append(w[2 * n_hold :])
    train, valid_t, test_t = (_csr(r, n_items) for r in (train_rows, valid_rows, test_rows))
    train_rated = _csr(train_rows, n_items, train_weights)  # rating weights: what retrieve() reads
    everything = _csr(hists, n_items, rated)
    user_ids = np.array([str(u + 1) for u in range(n_users)])
    writer.histories(version.Histories(everything.indptr, everything.indices, everything.data, user_ids))
    counts = np.bincount(everything.indices, minlength=n_items)
    notional_ratings = 200.0 * n_items  # a Goodbooks-like reader base: ~200 ratings per book on average
    popularity = (np.round(zipf / zipf.sum() * notional_ratings) + counts).astype(np.float32)
    writer.popularity(popularity)
    lap("histories")

    weights = _weights(rng, n_items, dim, hidden, primary, zipf)
    weights.save(str(writer.path(version.RETRIEVAL)))
    lap("retrieval weights")

    index = build_index(weights.item_vectors)
    faiss.write_index(index, str(writer.path(version.INDEX)))
    lap("faiss index")
    queries = weights.user_vectors(histories(train, np.arange(min(200, n_users))))
    index_info = {
        "kind": index_kind(index),
        "recall@10_vs_exact": recall_at_k(index, weights.item_vectors, queries),
        "exact_max_items": EXACT_MAX_ITEMS,
    }
    del index
    lap("index recall")

    item_item = synthetic_item_item(np.random.default_rng(seed + 3), primary, zipf)
    item_item.save(writer.path(version.ITEM_ITEM))
    item_item_info = {
        "sources": [src.name for src in item_item.sources],
        "storage": "dense" if n_items <= DENSE_MAX_ITEMS else "sparse",
        "bytes": (out / version.ITEM_ITEM).stat().st_size,
    }
    lap("item-item sources")

    spec = FeatureSpec(retrieval_dim=dim, genres=genres, candidate_features=feature_names(item_item))
    tables = item_tables(popularity, years, genre_matrix(item_genres, genres))
    valid = Fold(train=train, seen=train, target=valid_t, weights=train_rated)
    test = Fold(train=train, seen=(train + valid_t).tocsr(), target=test_t, weights=train_rated)
    users = np.random.default_rng(seed + 1).permutation(n_users)
    n_parity = int(np.clip(PARITY_CELLS // n_items, 64, 512))
    parity_users = np.sort(users[:n_parity])
    fit_users = np.sort(users[n_parity : n_parity + 1024]) if n_users > n_parity else parity_users

    def cands(seen: sp.csr_matrix, users: np.ndarray) -> CandidateBatch:
        return _retrieve(weights, tables, item_item, train_rated, seen, users, CANDIDATES)

    fit_c, valid_c, test_c = (
        cands(train, fit_users),
        cands(valid.seen, parity_users),
        cands(test.seen, parity_users),
    )
    lap("candidates")

    failures: list[str] = []
    for attempt in range(PARITY_ATTEMPTS):
        torch.manual_seed(seed + attempt)  # the ranker's initialization
        ranker = Ranker(spec, tables, width=hidden)
        loss = _fit_ranker(ranker, fit_c, valid_t, seed + attempt, fit_steps)
        lap("ranker fit")
        paths = export_all(ranker, out, fit_c)
        del ranker
        sizes = {v: p.stat().st_size for v, p in paths.items()}
        too_big = {v: s for v, s in sizes.items() if s >= ONNX_LIMIT_BYTES}
        if too_big:
            raise RuntimeError(f"ONNX rankers past protobuf's 2 GB limit: {too_big}")
        lap("onnx export")
        try:
            parity = check_parity(paths, valid_c, valid, test_c, test, item_genres, popularity)
            break
        except ParityError as exc:  # the version would not be servable: try another initialization
            log.warning("synthetic-%d, ranker seed %d: %s", n_items, seed + attempt, exc)
            failures.append(f"ranker seed {seed + attempt}: {exc}")
            lap("parity")
    else:
        raise ParityError(f"no ranker initialization out of {PARITY_ATTEMPTS} passed parity: {failures}")
    lap("parity")

    writer.ranker_meta(
        version.RankerMeta(
            user_feature_dim=spec.user_dim,
            n_items=n_items,
            candidate_feature_dim=len(spec.candidate_features),
            feature_spec=spec,
            candidates=CANDIDATES,
        )
    )
    synthetic = {
        "n_items": n_items,
        "n_users": n_users,
        "dim": dim,
        "hidden": hidden,
        "n_genres": n_genres,
        "seed": seed,
        "interactions": int(everything.nnz),
        "parity_users": int(parity_users.size),
        "ranker_fit_steps": fit_steps,
        "ranker_init_seed": seed + len(failures),
        "parity_failures": failures,
        "onnx_bytes": sizes,
        "item_item": item_item_info,
        "build_seconds": times,
    }
    if loss is not None:  # the model store's metadata takes no None
        synthetic["ranker_fit_loss"] = loss
    test_ndcg = {"Folio (retrieve + rank)": {"ndcg@10": parity.test_ndcg.get("fp32")}}
    valid_ndcg = {"Folio (retrieve + rank)": {"ndcg@10": parity.ndcg.get("fp32")}}
    writer.metrics(
        {
            "test": test_ndcg,
            "valid": valid_ndcg,
            "tuned": {},
            "parity": parity.to_json(),
            "index": index_info,
            "synthetic": synthetic,
        },
    )
    writer.finish()
    lap("metadata")
    return {
        "dataset": _labels(n_items),
        "source": "loadtests/synthetic_model.py",
        "seed": seed,
        "test": test_ndcg,
        "valid": valid_ndcg,
        "tuned": {},
        "parity": parity.to_json(),
        "index": index_info,
        "n_items": n_items,
        "n_users": n_users,
        "synthetic": synthetic,
        "seconds": round(sum(times.values()), 1),
    }


def build_synthetic_version(
    n_items: int, *, n_users: int = 2000, dim: int = 64, hidden: int = 128, n_genres: int = 20, seed: int = 0
) -> str:
    """Generate a synthetic catalog of ``n_items``, write a complete version and save it in the model
    store (labels: dataset=synthetic-<n_items>, stage=candidate). Returns the tag."""
    with tempfile.TemporaryDirectory(prefix="folio-synthetic-") as tmp:
        started = time.perf_counter()
        meta = write_synthetic_artifacts(
            Path(tmp), n_items, n_users=n_users, dim=dim, hidden=hidden, n_genres=n_genres, seed=seed
        )
        model = registry.save(Path(tmp), labels={"dataset": _labels(n_items)}, metadata=meta)
        log.info("synthetic-%d saved as %s in %.0fs", n_items, model.tag, time.perf_counter() - started)
        return str(model.tag)


def find_synthetic_version(n_items: int) -> str | None:
    """The newest servable stored version labelled dataset=synthetic-<n_items>, if any."""
    import bentoml

    try:
        models = bentoml.models.list(registry.MODEL_NAME)
    except bentoml.exceptions.NotFound:  # an empty store
        return None
    found = [
        m
        for m in models
        if m.info.labels.get("dataset") == _labels(n_items) and not registry.servable_problems(m)
    ]
    return str(max(found, key=lambda m: m.info.creation_time).tag) if found else None
