"""Reading Folio's /docs.json in tests: a schema node as plain JSON Schema."""

from __future__ import annotations

from typing import Any


def resolved(spec: dict[str, Any], node: Any) -> Any:
    """``node`` with every $ref replaced by its component (no cycles here), ``nullable`` as JSON Schema."""
    if isinstance(node, list):
        return [resolved(spec, v) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return resolved(spec, spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
    out = {k: resolved(spec, v) for k, v in node.items()}
    if out.pop("nullable", False):  # OpenAPI 3.0's nullable, in JSON Schema terms
        return {"anyOf": [out, {"type": "null"}]}
    return out
