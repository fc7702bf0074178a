"""loadtests.served_quality without a server: metrics, EASE/MostPop ranking, the split, the HTTP loop."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from loadtests.served.client import fetch_lists
from loadtests.served.data import holdout_mask, read_holdout, write_split
from loadtests.served_quality import (
    REGS,
    choose_reg,
    ease_recommend,
    list_metrics,
    main,
    mostpop_recommend,
    sample_users,
)
from tests.synthetic_catalog import write_catalog
from training.dataset import Catalog, Dataset, Interactions
from training.loaders import load_goodbooks
from training.protocol import split_counts

D2 = 1 / math.log2(3)  # discount at rank 2


def test_a_perfect_list_scores_one_and_an_empty_list_zero() -> None:
    perfect = list_metrics([["a", "b"]], [{"a", "b"}], k=10, n_items=4)
    assert perfect == {"ndcg@10": 1.0, "recall@10": 1.0, "hit@10": 1.0, "coverage@10": 0.5, "users": 1.0}
    empty = list_metrics([[]], [{"a"}], k=10, n_items=4)
    assert empty == {"ndcg@10": 0.0, "recall@10": 0.0, "hit@10": 0.0, "coverage@10": 0.0, "users": 1.0}


def test_metrics_follow_recbole_definitions() -> None:
    # one hit at rank 2 of 1 held-out item; one hit at rank 1 of 3 held-out (ideal DCG over min(3, k=2))
    m = list_metrics([["x", "a"], ["b", "y", "c"]], [{"a"}, {"b", "c", "d"}], k=2, n_items=10)
    assert m["ndcg@2"] == pytest.approx((D2 + 1 / (1 + D2)) / 2)
    assert m["recall@2"] == pytest.approx((1 + 1 / 3) / 2)  # "c" at rank 3 is past k
    assert m["hit@2"] == 1.0 and m["coverage@2"] == pytest.approx(0.4)  # x, a, b, y


def test_a_short_list_is_not_rewarded_and_a_repeat_scores_once() -> None:
    short = list_metrics([["a"]], [{"a", "b"}], k=10, n_items=3)
    assert short["ndcg@10"] == pytest.approx(1 / (1 + D2))  # ideal DCG over both held-out items
    assert list_metrics([["a", "a"]], [{"a", "b"}], k=10, n_items=3) == short


def _blocks() -> sp.csr_matrix:
    """Items 0-2 and 3-5 are two blocks; every user reads two items of one block; item 6 is unrated."""
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)] * 5
    rows = np.repeat(np.arange(len(pairs)), 2)
    cols = np.asarray(pairs).ravel()
    return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(len(pairs), 7))


def test_ease_recommends_the_missing_item_of_the_users_block() -> None:
    train = _blocks()
    users = np.arange(6)  # one user per pair
    top1 = [lst[0] for lst in ease_recommend(train, users, k=1, reg=1.0)]
    assert top1 == [2, 1, 0, 5, 4, 3]
    full = ease_recommend(train, users, k=10, reg=1.0)
    for u, lst in zip(users, full, strict=True):  # seen and unrated items are never recommended
        assert len(lst) == 4 and not set(lst) & (set(train[u].indices) | {6})


def test_mostpop_ranks_unseen_items_by_popularity() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], np.float32))
    assert mostpop_recommend(train, np.array([2, 3]), k=3) == [[1], [0, 1, 2]]


def test_holdout_keeps_a_training_interaction_and_holds_out_the_share() -> None:
    sizes = [1, 2, 3, 9, 10, 25, 40]
    users = np.repeat(np.arange(len(sizes)), sizes)
    held = holdout_mask(users, 0.1, seed=2020)
    for u, n in enumerate(sizes):
        assert held[users == u].sum() == split_counts(n, (0.9, 0.1))[1]
        assert (~held[users == u]).sum() >= 1
    assert [held[users == u].sum() for u in range(len(sizes))] == [0, 1, 1, 1, 1, 2, 4]
    assert np.array_equal(held, holdout_mask(users, 0.1, seed=2020))
    assert not np.array_equal(held, holdout_mask(users, 0.1, seed=1))


def _odd_dataset() -> Dataset:
    """Quotes, commas, multi-genre, unknown years and timestamps, fractional ratings."""
    cat = Catalog(
        item_ids=["10", "20", "30", "40"],
        titles=["Eats, Shoots & Leaves", 'The "Quoted" Book', "Plain", "Unrated"],
        authors=["Lynne Truss", "", "A, B", ""],
        genres=[("grammar", "humour"), (), ("fiction",), ("x",)],
        years=np.array([2003, np.nan, 1999, np.nan], np.float32),
    )
    inter = Interactions(
        users=np.array([0, 0, 0, 1, 1, 2, 1], np.int64),
        items=np.array([0, 1, 2, 0, 2, 1, 1], np.int64),
        ratings=np.array([4.5, 3, 5, 1, 2, 4, 3.25], np.float32),
        timestamps=np.array([1e9, np.nan, 1e9 + 1, 7, 8, 9, 10.5]),
        user_ids=["alice", "bob", "carol"],
    )
    return Dataset("odd", cat, inter)


def test_the_split_loads_back_with_the_same_interactions(tmp_path: Path) -> None:
    ds = _odd_dataset()
    held = write_split(ds, tmp_path, 0.4, seed=3)
    back = load_goodbooks(tmp_path / "books.csv", tmp_path / "ratings.csv")
    for name in ("item_ids", "titles", "authors", "genres"):
        assert getattr(back.catalog, name) == getattr(ds.catalog, name), name
    np.testing.assert_array_equal(back.catalog.years, ds.catalog.years)
    kept, got = ds.interactions.take(~held), back.interactions
    assert got.user_ids == kept.user_ids  # every user keeps a row, in first-appearance order
    for name in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(got, name), getattr(kept, name), err_msg=name)
    data = read_holdout(tmp_path / "holdout.csv", back)
    rows = np.flatnonzero(held)
    expected = {
        (ds.interactions.user_ids[ds.interactions.users[r]], ds.catalog.item_ids[ds.interactions.items[r]])
        for r in rows
    }
    coo = data.target.tocoo()
    assert {
        (data.user_ids[u], ds.catalog.item_ids[i]) for u, i in zip(coo.row, coo.col, strict=True)
    } == expected
    assert data.train.shape == data.target.shape and data.train.nnz == len(kept)


def test_holdout_reading_adds_unknown_users_and_refuses_unknown_books(tmp_path: Path) -> None:
    ds = _odd_dataset()
    write_split(ds, tmp_path, 0.4, seed=3)
    back = load_goodbooks(tmp_path / "books.csv", tmp_path / "ratings.csv")
    inter = back.interactions
    alice_book = back.catalog.item_ids[inter.items[inter.users == inter.user_ids.index("alice")][0]]
    (tmp_path / "h.csv").write_text(f"user_id,book_id\nnew,10\nalice,{alice_book}\n")
    data = read_holdout(tmp_path / "h.csv", back)
    assert data.user_ids[-1] == "new" and data.target[len(data.user_ids) - 1, 0] == 1
    assert data.target.nnz == 1  # alice's book is in ratings.csv: no one may recommend it
    (tmp_path / "bad.csv").write_text("user_id,book_id\nalice,99\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: unknown book_id '99'"):
        read_holdout(tmp_path / "bad.csv", back)


def test_split_command_on_a_catalog_folder(tmp_path: Path) -> None:
    write_catalog(tmp_path / "src", n_users=60)
    args = ["split", "--dataset", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--seed", "5"]
    main(args)
    first = [(tmp_path / "out" / f).read_bytes() for f in ("books.csv", "ratings.csv", "holdout.csv")]
    main(args)
    assert [(tmp_path / "out" / f).read_bytes() for f in ("books.csv", "ratings.csv", "holdout.csv")] == first
    held = (tmp_path / "out" / "holdout.csv").read_text().splitlines()[1:]
    assert len({line.split(",")[0] for line in held}) == 60  # 11-17 books each: one held out per user
    assert len(held) == 60


def test_reg_choice_and_user_sampling() -> None:
    train = sp.random(80, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    train.data[:] = 1.0
    reg, ndcg = choose_reg(train, k=5, seed=0)
    assert reg in REGS and list(ndcg) == list(REGS) and ndcg[reg] == max(ndcg.values())
    users = sample_users(train, 10, seed=0)
    assert users.size == 10 and np.all(np.diff(users) > 0)
    assert np.array_equal(users, sample_users(train, 10, seed=0))


def test_http_loop_retries_429_and_shed_503_and_counts_failures() -> None:
    calls: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        user = sent["user_id"]
        assert request.headers["x-api-key"] == "KEY" and sent["variant"] == "fp16" and sent["k"] == 5
        calls[user] = calls.get(user, 0) + 1
        if user == "slow" and calls[user] < 3:
            return httpx.Response(429, headers={"retry-after": "0"}, json={"error": "rate limit"})
        if user == "shed" and calls[user] < 2:  # admission control: 503 with Retry-After
            return httpx.Response(503, headers={"retry-after": "0"}, json={"error": "at capacity"})
        if user == "broken":
            return httpx.Response(503, json={"error": "down"})
        body = {
            "items": [
                {"item_id": "b1", "title": "t", "authors": "", "genres": [], "score": 1.0, "reason": "r"}
            ],
            "model_version": "folio:v1",
            "variant": "default",
            "precision": "int8",
            "cold_start": user == "new",
            "fallback": "none",
            "cached": False,
            "request_id": "x",
        }
        return httpx.Response(200, json=body)

    served = asyncio.run(
        fetch_lists(
            "http://folio",
            ["slow", "broken", "new", "shed"],
            5,
            "KEY",
            2,
            transport=httpx.MockTransport(answer),
            variant="fp16",
        )
    )
    assert served.lists == {"slow": ["b1"], "new": ["b1"], "shed": ["b1"]}
    assert calls["slow"] == 3 and served.retries_429 == 2 and served.retries_503 == 1
    assert served.failures == {"503": 1} and served.cold_start == 1  # a 503 without Retry-After
    assert served.model_versions == {"folio:v1": 3} and served.fallback == {"none": 3}
    assert served.precisions == {"int8": 3}
