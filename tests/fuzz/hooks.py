"""Folio's own schemathesis checks, loaded by the fuzz runs (SCHEMATHESIS_HOOKS=<this file>).

``FOLIO_FUZZ_EXPECT`` says what the run expects:

* ``deep`` (default): every operation the run tested answered 2xx at least once, so the fuzz
  dictionaries (the catalog's real ids) took the cases past validation and the 404s into the pipeline.
  A run whose cases all bounce off 400/404/409 tests only the validation layer, and fails here.
* ``401``: the run sends no API key to a server that has keys: every answer outside the open routes
  (health probes, the API document) is a 401.

``FOLIO_FUZZ_TS_WINDOW`` (JSON: ``operations``, ``max_age_s``, ``max_skew_s``, ``expected_statuses``):
the operations whose feedback ``ts`` the server accepts only within [now - max_age_s, now + max_skew_s]
of its clock, a rule no static schema states (runners/http/openapi.py documents it in words and in
``x-folio-accepted-window``). The run turns schemathesis' positive_data_acceptance off for exactly these
operations, and ``folio_positive_data_acceptance`` takes its place: a schema-valid case must get one of
``expected_statuses`` (positive_data_acceptance's list), or a 400 that names one of the case's ts as
outside the accepted window when that ts really was, recomputed from the times the request was sent and
its answer read.

The same check covers ``UNIQUE_ID_OPERATIONS``: bodies that list records keyed by ``item_id``, each id
at most once (a rule JSON Schema cannot state about one field of a list's objects; the document says it
in words). There a 400 is due when it names an ``item_id`` the request really repeated.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import schemathesis
from schemathesis.core.transport import expand_status_codes
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs.json", "/"})
EXPECT = os.environ.get("FOLIO_FUZZ_EXPECT", "deep")
WINDOW: dict[str, Any] = json.loads(os.environ.get("FOLIO_FUZZ_TS_WINDOW") or "{}")
WINDOW_REFUSAL = re.compile(r"^ts (\S+) is outside the accepted window ")
SENT_AT: dict[str, float] = {}  # case id -> when its request was last sent (one worker: ordered)
UNIQUE_ID_OPERATIONS = ("POST /admin/catalog/books",)
DUPLICATE_REFUSAL = re.compile(r"^item_id ('.*'|\".*\") appears twice")  # repr() uses "" when the id holds '


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.label in WINDOW.get("operations", ()):
        SENT_AT[case.id] = time.time()


@schemathesis.check
class folio_reaches_the_pipeline:  # lower case: the name schemathesis prints
    """Fail the run if an operation it tested never answered 2xx."""

    def __init__(self) -> None:
        self.tested: set[str] = set()
        self.reached: set[str] = set()

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        if EXPECT != "deep":
            return
        self.tested.add(case.operation.label)
        if 200 <= response.status_code < 300:
            self.reached.add(case.operation.label)

    def after_run(self, ctx: Any) -> None:
        never = self.tested - self.reached
        if never:
            raise AssertionError(
                "never answered 2xx (no case got past validation and the 404s; when other failures of"
                " the operation cut its run short, fix those first): " + ", ".join(sorted(never))
            )


@schemathesis.check
def folio_needs_a_key(ctx: Any, response: Any, case: Any) -> bool | None:
    """Without a key, every route but the open ones answers 401."""
    if EXPECT == "401" and case.path not in OPEN_PATHS and response.status_code != 401:
        raise AssertionError(f"{case.operation.label} answered {response.status_code} without an API key")
    return None


def sent_timestamps(response: Any) -> list[float]:
    """The ``ts`` values of the events the request carried (one event, or a batch's)."""
    body = response.request.body
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return []
    events = data.get("events") if isinstance(data, dict) and "events" in data else [data]
    if not isinstance(events, list):
        return []
    found = [e.get("ts") for e in events if isinstance(e, dict)]
    return [float(t) for t in found if isinstance(t, int | float) and not isinstance(t, bool)]


def window_refusal_is_due(response: Any, sent_at: float, read_at: float) -> str | None:
    """Why a 400 is not a due ts-window refusal (None: it is one). The server read its clock at some
    moment in [sent_at, read_at]: a ts is refused for sure only when it is before read_at - max_age or
    after sent_at + max_skew."""
    try:
        error = response.json().get("error", "")
    except (ValueError, AttributeError):
        return "its body is not a JSON object"
    named = WINDOW_REFUSAL.match(error) if isinstance(error, str) else None
    if named is None:
        return "it does not refuse a ts as outside the accepted window"
    try:
        ts = float(named.group(1))
    except ValueError:
        return f"it names no number as the ts: {named.group(1)!r}"
    if ts not in sent_timestamps(response):
        return f"it names ts {ts!r}, which the request did not carry"
    oldest, newest = read_at - WINDOW["max_age_s"], sent_at + WINDOW["max_skew_s"]
    if oldest <= ts <= newest:
        return (
            f"ts {ts!r} was inside the window: [{oldest:.3f}, {newest:.3f}] at least (sent at"
            f" {sent_at:.3f}, answered by {read_at:.3f})"
        )
    return None


def duplicate_refusal_is_due(response: Any) -> str | None:
    """Why a 400 is not a due refusal of a repeated item_id (None: it is one)."""
    try:
        error = response.json().get("error", "")
        books = json.loads(response.request.body or b"{}").get("books", [])
        ids = [b.get("item_id") for b in books if isinstance(b, dict)]
    except (ValueError, AttributeError):
        return "its body or the request's is not a JSON object"
    named = DUPLICATE_REFUSAL.match(error) if isinstance(error, str) else None
    if named is None:
        return "it does not refuse a repeated item_id"
    repeated = {repr(i) for i in ids if ids.count(i) > 1}
    return None if named.group(1) in repeated else f"the request did not repeat {named.group(1)}"


@schemathesis.check
def folio_positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance for the ts-window operations (FOLIO_FUZZ_TS_WINDOW), which accepts a
    400 refusing a ts that really was outside the window, and nothing else it would not."""
    read_at = time.time()
    windowed = case.operation.label in WINDOW.get("operations", ())
    if not windowed and case.operation.label not in UNIQUE_ID_OPERATIONS:
        return None
    if case.meta is None or is_unexpected_http_status_case(case):
        return True  # as positive_data_acceptance: no generation metadata, or a request-shape probe
    if not case.meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status in expand_status_codes(WINDOW["expected_statuses"]):
        return None
    why = "not an expected status"
    if status == 400:
        if windowed:
            sent_at = SENT_AT.get(case.id, read_at - response.elapsed)
            not_due = window_refusal_is_due(response, sent_at, read_at)
        else:
            not_due = duplicate_refusal_is_due(response)
        if not_due is None:
            return None
        why = f"a 400, but {not_due}"
    age, skew = WINDOW.get("max_age_s", 0.0), WINDOW.get("max_skew_s", 0.0)
    due = (
        f"a 400 refusing a ts outside [now - {age:.15g} s, now + {skew:.15g} s]"
        if windowed
        else "a 400 refusing an item_id the request repeated"
    )
    raise AssertionError(
        f"Schema-valid data of {case.operation.label} rejected with {status} ({why}). Expected:"
        f" {', '.join(WINDOW['expected_statuses'])}, or {due}"
    )
