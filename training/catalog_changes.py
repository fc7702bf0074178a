"""The next training run applies the runtime catalog changes (runners/state/catalog.py) to its dataset.

``python -m training train`` / ``main`` read the catalog log of the state store the service uses (the
same ``FOLIO_REDIS_URL`` / ``FOLIO_STATE_DIR`` settings: Redis, or ``<state dir>/catalog.jsonl``) and:

* replace the record (title, authors, genres, year) of every known book that was corrected;
* append the books added at runtime to the catalog (a book with no interactions yet drops out of the
  trained version as every such item does, training/protocol.py; the service keeps serving its record);
* keep withdrawn books and their interactions: they still teach how the other books relate, and the
  service filters them out by the catalog state, which outlives every version.

The version records the revision it applied (its metadata's ``source.catalog_revision``). Reading the
log changes nothing in it. ``--no-catalog-changes`` trains on the dataset as it is.
"""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np

from runners.platform.settings import load_settings
from runners.state.catalog import CatalogState, LocalCatalog, open_catalog
from runners.state.redis_state import RedisState
from training.dataset import Catalog, Dataset

log = logging.getLogger(__name__)


async def _read() -> CatalogState:
    settings = load_settings()
    journal = settings.state_dir / "catalog.jsonl"
    if settings.redis_url is None:
        if not journal.exists():
            return CatalogState()
        local = LocalCatalog(journal)
        try:
            return await local.state()
        finally:
            await local.close()
    state = RedisState(settings.redis_url)
    try:
        return await open_catalog(state, journal).state()
    finally:
        await state.close()


def configured_catalog_state() -> CatalogState:
    """The catalog state of the configured state store (empty when it has no catalog log)."""
    return asyncio.run(_read())


def apply_catalog_changes(ds: Dataset, state: CatalogState) -> Dataset:
    """``ds`` with the corrected records and the added books of ``state`` (module doc)."""
    if not state.books:
        return ds
    c = ds.catalog
    ids, titles, authors = list(c.item_ids), list(c.titles), list(c.authors)
    genres, years = list(c.genres), c.years.tolist()
    position = {item: i for i, item in enumerate(ids)}
    corrected = added = 0
    for item, book in sorted(state.books.items()):
        year = math.nan if book.year is None else float(book.year)
        if (i := position.get(item)) is not None:
            titles[i], authors[i], genres[i], years[i] = book.title, book.authors, book.genres, year
            corrected += 1
        else:
            ids.append(item)
            titles.append(book.title)
            authors.append(book.authors)
            genres.append(book.genres)
            years.append(year)
            added += 1
    log.info("catalog revision %d: %d records corrected, %d books added", state.revision, corrected, added)
    catalog = Catalog(ids, titles, authors, genres, np.asarray(years, dtype=np.float32))
    return Dataset(ds.name, catalog, ds.interactions, ds.source | {"catalog_revision": str(state.revision)})
