"""``python -m training catalog``: change a running service's catalog through its admin API.

    python -m training catalog add --books new.csv|new.json --url http://127.0.0.1:3000
    python -m training catalog withdraw ID [ID ...] --url ...
    python -m training catalog restore ID [ID ...] --url ...
    python -m training catalog status --url ...

The API key is read from ``FOLIO_API_KEY`` (never a flag: it would land in shell history). ``--books``
takes a Goodbooks-style ``books.csv`` (training/loaders.py: book_id, title, authors, optional
original_publication_year and genres/tags) or a JSON list of the ``/admin/catalog/books`` records
(with ``description``). Books go in requests of at most ``runners.state.catalog.MAX_CHANGES``; each request
is all or nothing, and the command stops at the first refusal, printing the server's reason.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import httpx

from runners.state.catalog import MAX_CHANGES
from training.artifacts import catalog_json
from training.loaders import read_books


class CatalogCommandError(RuntimeError):
    pass


def book_records(path: Path) -> list[dict[str, Any]]:
    """The records of a books.csv or a JSON list, as the admin API takes them."""
    if path.suffix.lower() == ".json":
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            raise CatalogCommandError(f"{path}: expected a JSON list of books")
        return records
    return catalog_json(read_books(str(path), path.read_bytes()))


def _post(client: httpx.Client, route: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(route, json=body)
    if r.status_code != 200:
        raise CatalogCommandError(f"{route}: HTTP {r.status_code}: {r.text}")
    return dict(r.json())


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    key = os.environ.get("FOLIO_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        if args.action == "status":
            return [_post(client, "/info", {})["catalog"]]
        if args.action == "add":
            records = book_records(args.books)
            return [
                _post(client, "/admin/catalog/books", {"books": records[i : i + MAX_CHANGES]})
                for i in range(0, len(records), MAX_CHANGES)
            ]
        ids = list(args.item_ids)
        return [
            _post(client, f"/admin/catalog/{args.action}", {"item_ids": ids[i : i + MAX_CHANGES]})
            for i in range(0, len(ids), MAX_CHANGES)
        ]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("catalog", help="add, correct, withdraw or restore books of a running service")
    p.add_argument("action", choices=("add", "withdraw", "restore", "status"))
    p.add_argument("item_ids", nargs="*", help="withdraw / restore: the books' ids")
    p.add_argument("--books", type=Path, help="add: a books.csv or a JSON list of records")
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_catalog)


def cmd_catalog(args: argparse.Namespace) -> None:
    if args.action == "add" and args.books is None:
        raise CatalogCommandError("add needs --books FILE")
    if args.action in ("withdraw", "restore") and not args.item_ids:
        raise CatalogCommandError(f"{args.action} needs at least one item id")
    for answer in run(args):
        print(json.dumps(answer))
