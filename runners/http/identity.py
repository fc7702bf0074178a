"""Who is calling: open paths, API keys (sha256 digests compared in constant time), the principal
that rate limits count against (the key, or the client address without auth). Keys are never logged."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs.json", "/"})
OPEN_PREFIXES = ("/static_content/",)  # the Swagger page's scripts and styles

Scope = dict[str, Any]


def is_open(path: str) -> bool:
    """Health, the API docs and the Swagger page: no key, no rate limit, no body checks."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v).decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    auth = header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return header(scope, b"x-api-key")


def key_matches(key: str, digests: list[bytes]) -> bytes | None:
    """The matching digest; compares against all of them in constant time."""
    given = hashlib.sha256(key.encode()).hexdigest().encode()
    found = None
    for d in digests:
        if hmac.compare_digest(given, d):
            found = d
    return found


def client_principal(scope: Scope) -> str:
    """What an anonymous request is counted as: its peer address (X-Forwarded-For only from trusted
    proxies, which runners/platform/bentoml_patch.py resolves into the scope)."""
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"
