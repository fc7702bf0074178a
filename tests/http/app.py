"""The entry service as an ASGI app under Starlette's test client, configured through FOLIO_* variables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from starlette.testclient import TestClient

from runners.platform.settings import load_settings


@contextmanager
def asgi_client(env: dict[str, str]) -> Iterator[TestClient]:
    """A started app (lifespan included: the embedded tritonserver is real) with ``env`` set."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        load_settings.cache_clear()
        from service import Recommender

        try:
            with TestClient(Recommender.to_asgi()) as client:
                yield client
        finally:
            load_settings.cache_clear()
