"""/docs.json after runners/http/openapi.py: a valid OpenAPI 3.0 document whose error responses are the ones
the server sends, with nullable fields nullable, bodies required exactly when the server needs one, and
the feedback ts window stated; and its table of service errors matches service.py."""

from __future__ import annotations

import ast
import copy
import json
import time
from collections.abc import Iterator
from typing import Any, Literal

import bentoml
import jsonschema
import pytest
from _bentoml_impl.server.app import ServiceAppFactory
from pydantic import BaseModel, Field
from schemathesis.specs.openapi.definitions import OPENAPI_30  # the OpenAPI 3.0 meta-schema
from starlette.testclient import TestClient

from runners.http import openapi
from runners.http.guard import GuardMiddleware, Runtime
from runners.http.schemas import FeedbackBatch, FeedbackEvent
from runners.platform import bentoml_patch
from runners.platform.settings import Settings, hash_key, load_settings
from runners.stages.pipeline import InvalidEvent
from runners.stages.pipeline import Recommender as Pipeline
from runners.state.protocol import TS_MAX
from tests.openapi_doc import resolved
from tests.paths import ROOT


class Query(BaseModel):
    user_id: str = Field(min_length=1)
    note: str | None = Field(None, max_length=10)
    ts: float | None = Field(None, gt=0)
    kind: Literal["one"] = "one"


class Answer(BaseModel):
    user_id: str
    year: int | None = None


class Page(BaseModel):  # every field has a default: the body is optional
    k: int = Field(10, ge=1)


@bentoml.service
class Docs:
    @bentoml.api(route="/similar")
    def similar(self, query: Query, /) -> Answer:
        return Answer(user_id=query.user_id)

    @bentoml.api(route="/page")
    def page(self, page: Page, /) -> Answer:
        return Answer(user_id=str(page.k))


@bentoml.service
class Feedback:  # the routes whose ts has a window (not served: only its document is read)
    @bentoml.api(route="/feedback")
    def feedback(self, event: FeedbackEvent, /) -> Answer:
        return Answer(user_id=event.user_id)

    @bentoml.api(route="/feedback/batch")
    def feedback_batch(self, batch: FeedbackBatch, /) -> Answer:
        return Answer(user_id=batch.events[0].user_id)


Docs.add_asgi_middleware(  # type: ignore[attr-defined]
    GuardMiddleware,
    runtime=Runtime(
        settings=Settings(max_body_bytes=1024, rate_limit_rps=0), digests=[hash_key("k").encode()]
    ),
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    bentoml_patch.install()
    Docs.inject_config()
    with TestClient(ServiceAppFactory(Docs, is_main=True, enable_metrics=False)()) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    return client.get("/docs.json").json()


def conforms(spec: dict[str, Any], path: str, status: int, body: Any) -> None:
    """Raises unless ``status`` is documented for POST ``path`` and ``body`` matches its schema."""
    responses = spec["paths"][path]["post"]["responses"]
    assert str(status) in responses, f"{status} is not documented for {path}: {sorted(responses)}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    jsonschema.Draft4Validator(resolved(spec, schema)).validate(body)


def test_the_document_is_valid_openapi_30(spec: dict[str, Any]) -> None:
    errors = list(jsonschema.Draft4Validator(OPENAPI_30).iter_errors(spec))
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]]


def test_nullable_fields_are_nullable_and_30_keywords_are_used(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/similar"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    query = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert query["properties"]["note"] == {
        "default": None,
        "title": "Note",
        "maxLength": 10,
        "type": "string",
        "nullable": True,
    }
    ts = query["properties"]["ts"]
    assert ts["minimum"] == 0 and ts["exclusiveMinimum"] is True and ts["nullable"] is True
    assert query["properties"]["kind"]["enum"] == ["one"] and "const" not in query["properties"]["kind"]
    assert query["required"] == ["user_id"] and query["x-bentoml-root-input"] is True
    ok = spec["paths"]["/similar"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert spec["components"]["schemas"][ok["$ref"].rsplit("/", 1)[1]]["properties"]["year"]["nullable"]


def test_the_documented_statuses(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/similar"]["post"]["responses"]
    assert sorted(responses) == ["200", "400", "401", "404", "413", "415", "429", "500", "503", "504"]
    assert responses["429"]["headers"]["Retry-After"]["required"] is True
    assert "at capacity" in responses["503"]["description"]  # admission control, on every API route
    assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["text/plain"]
    assert sorted(spec["paths"]["/metrics"]["get"]["responses"]) == ["200", "401", "429"]
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(spec["components"]["schemas"])


def test_what_the_server_answers_is_what_the_document_says(client: TestClient, spec: dict[str, Any]) -> None:
    key = {"Authorization": "Bearer k"}
    answers = [
        client.post("/similar", json={"user_id": ""}, headers=key),  # BentoML's validation 400
        client.post("/similar", content=b"{nope", headers={**key, "content-type": "application/json"}),
        client.post("/similar", json={"user_id": "u"}),  # no key: 401
        client.post("/similar", content=b"user_id=u", headers={**key, "content-type": "text/plain"}),
        client.post("/similar", json={"user_id": "u" * 2000}, headers=key),  # 413
        client.post("/similar", json={"user_id": "u", "note": None, "ts": None}, headers=key),  # 200
    ]
    assert [r.status_code for r in answers] == [400, 400, 401, 415, 413, 200]
    for r in answers:
        conforms(spec, "/similar", r.status_code, r.json())
    assert isinstance(answers[0].json()["detail"], list)  # BentoML documented it as a string


def test_a_body_is_required_exactly_when_the_server_needs_one(
    client: TestClient, spec: dict[str, Any]
) -> None:
    """A model with required fields: ``required: true`` (no body is a 400). All fields defaulted: the body
    is optional, and no body (or an empty one) is read as ``{}``."""
    key = {"Authorization": "Bearer k"}
    assert spec["paths"]["/similar"]["post"]["requestBody"]["required"] is True
    assert spec["paths"]["/page"]["post"]["requestBody"].get("required", False) is False
    missing = client.post("/similar", headers=key)
    assert missing.status_code == 400, missing.text
    conforms(spec, "/similar", 400, missing.json())
    for answer in (client.post("/page", headers=key), client.post("/page", content=b"", headers=key)):
        assert answer.status_code == 200, answer.text
        assert answer.json()["user_id"] == "10"
        conforms(spec, "/page", 200, answer.json())


def test_the_ts_window_is_stated_where_it_applies() -> None:
    spec = openapi.true_spec(Feedback.openapi_spec.asdict(), window=(3600.0, 60.0))
    errors = list(jsonschema.Draft4Validator(OPENAPI_30).iter_errors(spec))
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]]
    stated = {"max-age-s": 3600.0, "max-skew-s": 60.0}
    schemas = spec["components"]["schemas"]
    for name in ("FeedbackEvent", "FeedbackEventIODescriptor"):
        ts = schemas[name]["properties"]["ts"]
        assert ts["maximum"] == TS_MAX and ts["minimum"] == 0 and ts["exclusiveMinimum"] is True
        assert ts["x-folio-accepted-window"].items() >= stated.items()
        assert "[now - 3600 s, now + 60 s]" in ts["description"]
    for route in openapi.WINDOWED_ROUTES:
        op = spec["paths"][route]["post"]
        assert op["requestBody"]["required"] is True
        refused = op["responses"]["400"]
        assert refused["x-folio-accepted-window"].items() >= stated.items()
        assert "[now - 3600 s, now + 60 s]" in refused["description"]
        assert openapi.WINDOW_REFUSAL in refused["description"]
        assert {"$ref": openapi.REF + "Problem"} in refused["content"]["application/json"]["schema"]["anyOf"]
    # without a known window, the rule is still said (with the settings' names), without numbers
    generic = openapi.true_spec(Feedback.openapi_spec.asdict())
    refused = generic["paths"]["/feedback"]["post"]["responses"]["400"]
    assert "FOLIO_FEEDBACK_MAX_AGE_S" in refused["description"] and "x-folio-accepted-window" not in refused


def test_the_window_refusal_is_what_the_document_says() -> None:
    pipeline = object.__new__(Pipeline)  # the window is checked before the model is looked at
    pipeline.settings = Settings(feedback_max_age_s=3600, feedback_max_skew_s=60)
    for ts in (time.time() - 7200, time.time() + 600):
        event = FeedbackEvent(user_id="u", item_id="b", event="click", ts=ts)
        with pytest.raises(InvalidEvent, match=f"^ts {ts!r} {openapi.WINDOW_REFUSAL} "):
            pipeline.feedback_events([event], [None])


def test_served_window_is_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOLIO_FEEDBACK_MAX_AGE_S", "7200")
    monkeypatch.setenv("FOLIO_FEEDBACK_MAX_SKEW_S", "30")
    load_settings.cache_clear()
    try:
        assert openapi.served_window() == (7200.0, 30.0)
    finally:
        monkeypatch.delenv("FOLIO_FEEDBACK_MAX_AGE_S")
        monkeypatch.delenv("FOLIO_FEEDBACK_MAX_SKEW_S")
        load_settings.cache_clear()


def test_the_service_errors_table_matches_service_py() -> None:
    """Every ``problem(status, ...)`` an endpoint of service.py can return (in its body, in a
    ``self._helper`` or a module-level helper it calls) is in ``SERVICE_ERRORS`` for its route, and
    nothing else is."""
    tree = ast.parse((ROOT / "service.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Recommender")
    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}

    helpers = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name != "problem"}

    def statuses(fn: ast.AST, seen: set[str]) -> set[int]:
        found: set[int] = set()
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id == "problem" and node.args:
                assert isinstance(node.args[0], ast.Constant), ast.unparse(node)
                found.add(node.args[0].value)
            if isinstance(node.func, ast.Name) and node.func.id in helpers and node.func.id not in seen:
                found |= statuses(helpers[node.func.id], seen | {node.func.id})  # e.g. state_refusal
            f = node.func
            own = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self"
            if own and f.attr in methods and f.attr not in seen:  # type: ignore[union-attr]
                found |= statuses(methods[f.attr], seen | {f.attr})  # type: ignore[union-attr]
        return found

    def route(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
        for dec in fn.decorator_list:
            call = dec if isinstance(dec, ast.Call) else None
            target = call.func if call else dec
            if ast.unparse(target) == "bentoml.api":
                named = [k.value for k in (call.keywords if call else []) if k.arg == "route"]
                return named[0].value if named else f"/{fn.name}"  # type: ignore[attr-defined]
        return None

    table = {r: set(errors) for r, errors in copy.deepcopy(openapi.SERVICE_ERRORS).items()}
    found = {r: statuses(fn, {fn.name}) for fn in methods.values() if (r := route(fn))}
    assert {r: s for r, s in found.items() if s} == table


def test_configured_choices_become_an_enum_that_keeps_null() -> None:
    generated = {
        "openapi": "3.0.2",
        "paths": {},
        "components": {
            "schemas": {
                "RecommendRequestIODescriptor": {
                    "type": "object",
                    "properties": {
                        "variant": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
                    },
                }
            }
        },
    }
    spec = openapi.true_spec(generated, {("RecommendRequest", "variant"): ["int8", "treatment"]})
    variant = spec["components"]["schemas"]["RecommendRequestIODescriptor"]["properties"]["variant"]
    assert variant == {
        "default": None,
        "type": "string",
        "enum": ["int8", "treatment", None],
        "nullable": True,
    }
    assert (
        "anyOf" in generated["components"]["schemas"]["RecommendRequestIODescriptor"]["properties"]["variant"]
    )


def test_served_choices_are_the_precisions_and_the_configured_variants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variants = {"variants": [{"name": "control", "share": 0.5}, {"name": "treatment", "share": 0.5}]}
    monkeypatch.setenv("FOLIO_VARIANTS", json.dumps(variants))
    load_settings.cache_clear()
    try:
        choices = openapi.served_choices()
    finally:
        monkeypatch.delenv("FOLIO_VARIANTS")
        load_settings.cache_clear()
    assert choices == {("RecommendRequest", "variant"): ["int8", "fp16", "fp32", "control", "treatment"]}
