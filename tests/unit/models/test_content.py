"""models/content.py: the cold-start content encoder, on a synthetic catalog with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.content import (
    BLOCKS,
    BookRecord,
    ContentEncoder,
    _Ridge,
    book_records,
    feature_keys,
    tokens,
)

DIM = 16
WORDS = [f"word{i}" for i in range(200)]


def _catalog(seed: int = 0, per_author: int = 12):
    """Four authors, two per genre, each with a direction of their own in a 16-d item space: the genre
    alone cannot tell an author's books from the other author's in the same genre; the author can."""
    rng = np.random.default_rng(seed)
    authors = [
        ("Ann Archer", "fantasy"),
        ("Bo Baker", "fantasy"),
        ("Cy Cole", "mystery"),
        ("Di Dunn", "mystery"),
    ]
    centers = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:4]
    records, vectors, owner = [], [], []
    for a, (name, genre) in enumerate(authors):
        for _ in range(per_author):
            title = " ".join(rng.choice(WORDS, 3, replace=False))
            year = float(rng.integers(1950, 2020))
            records.append(BookRecord(title, name, (genre,), year))
            v = centers[a] + 0.15 * rng.standard_normal(DIM)
            vectors.append(v / np.linalg.norm(v))
            owner.append(a)
    return records, np.asarray(vectors, dtype=np.float32), np.asarray(owner), authors


def test_tokens_are_normalized_and_deterministic():
    rec = BookRecord(
        "  A  b, a!", " Neil  Gaiman ,, terry pratchett,Neil Gaiman", ("x", "X ", ""), None, "Hi hi you"
    )
    assert tokens(rec) == [
        (0, "x"),
        (2, "neil gaiman"),
        (2, "terry pratchett"),
        (3, "unknown"),
        (4, "a"),
        (4, "b"),
        (4, "a b"),
        (4, "b a"),
        (5, "hi"),
        (5, "you"),
    ]
    book = BookRecord("The Colour of Magic", "Terry Pratchett", ("Fantasy", "Humor"), 1983.0)
    assert [t for b, t in tokens(book) if BLOCKS[b] in ("genre_pair", "year")] == [
        "fantasy|humor",
        "5:396",
        "10:198",
        "25:79",
    ]
    # A stable hash (blake2b), not Python's per-process salted hash(): the same keys in every process.
    assert feature_keys(book)[0][:3].tolist() == [
        2206165327000553209,
        -8162405887462199923,
        5804706998600578303,
    ]
    assert (
        feature_keys(BookRecord("t", year=float("nan")))[0].tolist()
        == feature_keys(BookRecord("t"))[0].tolist()
    )


def test_book_records_maps_nan_years_to_none():
    recs = book_records(["a", "b"], ["x", ""], [("g",), ()], np.array([1990.0, np.nan], dtype=np.float32))
    assert recs == [BookRecord("a", "x", ("g",), 1990.0), BookRecord("b", "", (), None)]


def test_new_book_by_an_author_lands_among_that_authors_books():
    records, vectors, owner, authors = _catalog()
    enc = ContentEncoder.fit(records, vectors, seed=1)
    assert enc.dim == DIM and enc.report["lambda"] > 0
    for a, (name, genre) in enumerate(authors):
        new = BookRecord("word7 unseenword word9", name, (genre,), 2021.0)
        v = enc.encode([new])[0]
        nearest = np.argsort(-(vectors @ v))[:10]
        assert (owner[nearest] == a).all(), (name, owner[nearest])
    # The genre alone says "one of the two authors of that genre", not which one.
    v = enc.encode([BookRecord("unseenword", "", ("fantasy",), None)])[0]
    sims = [float(vectors[owner == a].mean(0) @ v) for a in range(4)]
    assert min(sims[0], sims[1]) > max(sims[2], sims[3])
    assert abs(sims[0] - sims[1]) < 0.5 * abs(sims[0] - sims[2])


def test_title_words_carry_a_series():
    """No author, one genre for every book: only the series word in the title tells the clusters apart."""
    rng = np.random.default_rng(3)
    centers = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:3]
    records, vectors, series = [], [], []
    for s, word in enumerate(("discworld", "earthsea", "narnia")):
        for _ in range(10):
            records.append(BookRecord(f"{word} {' '.join(rng.choice(WORDS, 2))}", "", ("fantasy",), None))
            v = centers[s] + 0.1 * rng.standard_normal(DIM)
            vectors.append(v / np.linalg.norm(v))
            series.append(s)
    vecs, series_arr = np.asarray(vectors), np.asarray(series)
    enc = ContentEncoder.fit(records, vecs, seed=0)
    v = enc.encode([BookRecord("Earthsea: The Other Wind", "", ("fantasy",), 2001.0)])[0]
    assert (series_arr[np.argsort(-(vecs @ v))[:10]] == 1).all()


def test_encode_contract():
    records, vectors, _, _ = _catalog()
    enc = ContentEncoder.fit(records, vectors)
    out = enc.encode([*records[:5], BookRecord("zzz qqq", "Nobody", ("unknown-genre",), None)])
    assert out.dtype == np.float32 and out.shape == (6, DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()
    empty = enc.encode([BookRecord("zzz")])  # no known feature at all: the normalized intercept
    np.testing.assert_allclose(empty[0], enc.bias / np.linalg.norm(enc.bias), atol=1e-6)
    assert enc.encode([]).shape == (0, DIM)
    # Trained items are reproduced far better than chance.
    assert float(np.mean(np.sum(enc.encode(records) * vectors, axis=1))) > 0.8


def test_fit_validates_its_inputs():
    records, vectors, _, _ = _catalog()
    with pytest.raises(ValueError, match="one vector per record"):
        ContentEncoder.fit(records, vectors[:-1])
    with pytest.raises(ValueError, match="unknown feature blocks"):
        ContentEncoder.fit(records, vectors, block_weights={"isbn": 1.0})
    with pytest.raises(ValueError, match="sample_weight"):
        ContentEncoder.fit(records, vectors, sample_weight=np.zeros(len(records)))


def test_zero_weight_blocks_stay_out_of_the_vocabulary():
    records, vectors, _, _ = _catalog()
    full = ContentEncoder.fit(records, vectors)
    genres_only = ContentEncoder.fit(records, vectors, block_weights={b: 0.0 for b in BLOCKS if b != "genre"})
    assert genres_only.n_features == 2 < full.n_features  # fantasy, mystery


@pytest.mark.parametrize("n_features", [5, 40])  # primal (features <= items) and dual (features > items)
def test_ridge_matches_a_direct_solve_with_an_unpenalized_intercept(n_features):
    rng = np.random.default_rng(n_features)
    n, d, lam = 20, 3, 0.7
    x = sp.random(n, n_features, density=0.3, random_state=1, format="csr") + sp.eye(
        n, n_features, format="csr"
    )
    y = rng.standard_normal((n, d))
    w = rng.uniform(0.5, 2.0, n)
    ridge = _Ridge(x.tocsr(), y, w)
    weights, bias = ridge.solve(lam)
    # Direct: augment with a constant column, penalize every coefficient but the intercept.
    a = np.hstack([x.toarray(), np.ones((n, 1))])
    pen = np.eye(n_features + 1) * lam * ridge.scale
    pen[-1, -1] = 0.0
    coef = np.linalg.solve(a.T @ (w[:, None] * a) + pen, a.T @ (w[:, None] * y))
    np.testing.assert_allclose(weights, coef[:-1], atol=1e-8)
    np.testing.assert_allclose(bias, coef[-1], atol=1e-8)


def test_save_load_round_trip(tmp_path):
    records, vectors, _, _ = _catalog()
    enc = ContentEncoder.fit(records, vectors)
    path = tmp_path / "content.npz"
    enc.save(path)
    back = ContentEncoder.load(path)
    probe = [*records[:3], BookRecord("new one", "Ann Archer", ("fantasy",), 2030.0, "a description")]
    np.testing.assert_array_equal(back.encode(probe), enc.encode(probe))
    assert back.report == enc.report and back.n_features == enc.n_features
    with np.load(path, allow_pickle=False) as z:  # nothing pickled
        assert {z[k].dtype.kind for k in z.files} <= {"i", "f", "U"}


def _corrupt(tmp_path, enc: ContentEncoder, **changes):
    path = tmp_path / "bad.npz"
    enc.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(path, **arrays)
    return path


def test_malformed_files_are_refused_with_a_clear_message(tmp_path):
    records, vectors, _, _ = _catalog()
    enc = ContentEncoder.fit(records, vectors)
    f = enc.n_features
    cases = [
        ({"weights": None}, "missing \\['weights'\\]"),
        ({"weights": enc.weights[:-1]}, "weights: float32"),
        ({"weights": enc.weights.astype(np.float64)}, "weights: float32"),
        ({"bias": np.zeros(DIM + 1, np.float32)}, "bias: float32"),
        ({"idf": enc.idf[:-1]}, "idf: float32"),
        ({"keys": enc.keys[::-1].copy()}, "not sorted"),
        ({"keys": enc.keys.astype(np.float64)}, "keys: int64"),
        ({"keys": np.asarray(["k"] * f)}, "keys: int64"),
        ({"format": np.asarray("1")}, "format"),
        ({"block_weights": np.ones(2, np.float32)}, "block_weights"),
        ({"blocks": np.asarray(["genre"])}, "feature blocks"),
        ({"format": np.int64(99)}, "format"),
        ({"weights": np.full((f, DIM), np.nan, np.float32)}, "non-finite"),
        ({"report": np.asarray("{not json")}, "report"),
        ({"weights": np.array([object()], dtype=object)}, "content encoder"),  # would need pickle
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            ContentEncoder.load(_corrupt(tmp_path, enc, **changes))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"definitely not a zip file")
    with pytest.raises(ValueError, match=r"junk\.npz: not a content encoder file"):
        ContentEncoder.load(junk)
    with pytest.raises(ValueError, match="not a content encoder file"):
        ContentEncoder.load(tmp_path / "missing.npz")
