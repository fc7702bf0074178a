"""/docs.json made true: the OpenAPI document BentoML 1.4 generates, post-processed to say what the
server really answers.

BentoML builds the document from the endpoints' pydantic models (``Service.openapi_spec``) and serves
it from ``ServiceAppFactory.openapi_spec_view``; ``install()`` wraps that view with ``true_spec``.
What BentoML gets wrong, and what ``true_spec`` does about it:

* Error responses: every endpoint lists 400/404/500 with one made-up body (``detail`` a string). The
  real ones: BentoML's validation 400 ``{"error", "detail": [pydantic errors]}``; the guard's refusals
  ``{"error"}`` (401 with ``WWW-Authenticate``, 413, 415, 429 with ``Retry-After``); the endpoints'
  ``service.problem()`` answers ``{"error", "request_id"}`` (``SERVICE_ERRORS``: keep it in step with
  service.py, a unit test compares them); BentoML's 500 and 504 ``{"error"}``.
* Nullable fields: the request and response bodies are inlined with ``anyOf: [T, null]`` cut to ``T``
  (so ``null`` reads as refused), and the components use JSON Schema 2020-12 forms that OpenAPI 3.0
  lacks (``type: null``, numeric ``exclusiveMinimum``, ``const``). Bodies become references to the
  components, which are rewritten in 3.0 terms (``nullable: true``, boolean exclusive bounds, ``enum``).
* Request bodies: BentoML marks none required. A body whose model has required fields is
  ``required: true`` (no body is a 400); one whose fields all have defaults stays optional, and the
  server reads no body as ``{}`` (BentoML's JSON serde), so the two agree.
* Values the configuration fixes: ``variant`` of /recommend is one of the precisions or the configured
  A/B variants' names (anything else is a 400), so the document lists them (``served_choices``).
* The feedback ``ts`` window: a ``ts`` is accepted only within [now - FOLIO_FEEDBACK_MAX_AGE_S,
  now + FOLIO_FEEDBACK_MAX_SKEW_S] of the server's clock (else a 400 Problem, nothing recorded). No
  static bound says that (it moves with the clock): the schema keeps its fixed bounds, and the field
  and the 400 of /feedback and /feedback/batch state the window, with its bounds in seconds in
  ``x-folio-accepted-window`` (``served_window``).
* The infrastructure routes: /readyz can answer 503 (text); /metrics is behind the API key.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from runners.platform.bentoml_patch import supported

log = logging.getLogger(__name__)
JSON = "application/json"
REF = "#/components/schemas/"
Spec = dict[str, Any]

SCHEMAS: dict[str, Spec] = {
    "Error": {
        "type": "object",
        "title": "Error",
        "description": "A refusal before the endpoint ran (auth, size, type, rate), or a server error",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what went wrong, and what to send"}},
    },
    "Problem": {
        "type": "object",
        "title": "Problem",
        "description": "The endpoint's answer to a request it could not serve",
        "required": ["error", "request_id"],
        "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}},
    },
    "ValidationError": {
        "type": "object",
        "title": "ValidationError",
        "description": "The body is not JSON or breaks the request schema; `detail` lists each problem",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "example": "1 validation error for RecommendRequest"},
            "detail": {"type": "array", "items": {"$ref": REF + "ValidationErrorDetail"}},
        },
    },
    "ValidationErrorDetail": {
        "type": "object",
        "title": "ValidationErrorDetail",
        "required": ["type", "loc", "msg"],
        "properties": {
            "type": {"type": "string", "example": "missing"},
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string", "example": "Field required"},
            "url": {"type": "string"},
        },
    },
}
# What each endpoint answers through service.problem() (status -> when), besides what every API route
# can answer (400 validation, 401, 413, 415, 429, 503 at capacity, 500, 504).
SERVICE_ERRORS: dict[str, dict[int, str]] = {
    "/recommend": {400: "unknown variant"},
    "/similar": {404: "unknown item"},
    "/feedback": {
        400: "an event's ts outside the accepted window: nothing recorded",
        404: "unknown item",
        409: "a withdrawn item: nothing recorded",
        429: "too much feedback for this user: nothing recorded",
        503: "the state store is unreachable, or busy (with Retry-After): nothing recorded",
    },
    "/forget": {503: "the state store is unreachable, or busy (with Retry-After): nothing deleted"},
    "/admin/reload": {
        403: "admin endpoints are off (no FOLIO_API_KEYS)",
        409: "version refused or not reloadable",
    },
}
SERVICE_ERRORS["/feedback/batch"] = SERVICE_ERRORS["/feedback"]
_CATALOG_ERRORS = {
    403: "admin endpoints are off (no FOLIO_API_KEYS)",
    404: "withdraw / restore of a book no served version knows nor was added: nothing changed",
    503: "the state store is unreachable, or busy (with Retry-After): nothing changed",
}
SERVICE_ERRORS["/admin/catalog/books"] = {
    **_CATALOG_ERRORS,
    400: "an item_id twice, or a record out of bounds: nothing changed",
}
SERVICE_ERRORS["/admin/catalog/withdraw"] = SERVICE_ERRORS["/admin/catalog/restore"] = _CATALOG_ERRORS
OPEN_INFRA = ("/healthz", "/livez", "/readyz")
# The fields whose values the server accepts only within a window of its clock, the routes that take
# them, and what their 400 Problem's error says (runners/stages/pipeline.py InvalidEvent).
WINDOWED_FIELDS = (("FeedbackEvent", "ts"),)
WINDOWED_ROUTES = ("/feedback", "/feedback/batch")
WINDOW_REFUSAL = "is outside the accepted window"
Window = tuple[float, float]  # (FOLIO_FEEDBACK_MAX_AGE_S, FOLIO_FEEDBACK_MAX_SKEW_S), seconds
_BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse")

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "integer"}}
}
_RETRY_AFTER_SHED = {"Retry-After": {**_RETRY_AFTER["Retry-After"], "required": False}}
AT_CAPACITY = "the worker is at capacity (runners/http/admission.py): retry after Retry-After seconds"
_AUTHENTICATE = {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "example": "Bearer"}}}
_REQUEST_ID = {
    "X-Request-ID": {"description": "the request's id (also in the logs)", "schema": {"type": "string"}}
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "one of FOLIO_API_KEYS' keys"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _json(schema: Spec, description: str, headers: Spec | None = None) -> Spec:
    answer: Spec = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _ref(name: str) -> Spec:
    return {"$ref": REF + name}


def _either(*names: str) -> Spec:
    return _ref(names[0]) if len(names) == 1 else {"anyOf": [_ref(n) for n in names]}


def _guard_errors(with_body: bool) -> dict[str, Spec]:
    out = {
        "401": _json(_ref("Error"), "missing or invalid API key (when FOLIO_API_KEYS is set)", _AUTHENTICATE),
        "429": _json(_ref("Error"), "rate limit of the key (or client address) exceeded", _RETRY_AFTER),
    }
    if with_body:  # an API route (/metrics is neither read for a body nor shed)
        out["503"] = _json(_ref("Problem"), AT_CAPACITY, _RETRY_AFTER_SHED)
        out["413"] = _json(_ref("Error"), "body over FOLIO_MAX_BODY_BYTES (the connection is closed)")
        out["415"] = _json(_ref("Error"), "a body that is not Content-Type: application/json")
    return out


def window_extension(window: Window) -> Spec:
    """``x-folio-accepted-window``: the bounds of the ts window, relative to the server's clock."""
    max_age, max_skew = window
    return {
        "max-age-s": max_age,
        "max-skew-s": max_skew,
        "relative-to": "the server's clock when it reads the request",
        "refusal": f"400 Problem whose error says '{WINDOW_REFUSAL}'; nothing recorded",
    }


def window_text(window: Window | None) -> str:
    if window is None:
        return "[now - FOLIO_FEEDBACK_MAX_AGE_S, now + FOLIO_FEEDBACK_MAX_SKEW_S] of the server's clock"
    return (
        f"[now - {window[0]:.15g} s, now + {window[1]:.15g} s] of the server's clock"
        " (FOLIO_FEEDBACK_MAX_AGE_S, FOLIO_FEEDBACK_MAX_SKEW_S)"
    )


def api_responses(route: str, ok: Spec, window: Window | None = None) -> dict[str, Spec]:
    """The responses of the API route ``route`` whose 200 is ``ok``; ``window``: the ts window
    (``served_window``), stated in the 400 of ``WINDOWED_ROUTES``."""
    service = SERVICE_ERRORS.get(route, {})
    responses: dict[str, Spec] = {"200": ok, **_guard_errors(with_body=True)}
    refused = f"; or {service[400]}" if 400 in service else ""
    if route in WINDOWED_ROUTES:
        refused = (
            f"; or an event's `ts` outside {window_text(window)}, although within the schema's static"
            f" bounds: a Problem whose error says 'ts <value> {WINDOW_REFUSAL} [<oldest>, <newest>]',"
            " nothing recorded"
        )
    responses["400"] = _json(
        _either("ValidationError", *(["Problem"] if 400 in service else [])),
        "the body is not valid JSON or breaks the schema" + refused,
    )
    if route in WINDOWED_ROUTES and window is not None:
        responses["400"]["x-folio-accepted-window"] = window_extension(window)
    for status, when in service.items():
        if status == 400:
            continue
        if status == 429:
            responses["429"] = _json(
                _either("Error", "Problem"), f"rate limit exceeded, or {when}", _RETRY_AFTER
            )
        elif status == 503:
            responses["503"] = _json(_ref("Problem"), f"{AT_CAPACITY}; or {when}", _RETRY_AFTER_SHED)
        else:
            responses[str(status)] = _json(_ref("Problem"), when)
    responses["500"] = _json(_ref("Error"), "unexpected server error (logged with the request id)")
    responses["504"] = _json(_ref("Error"), "not answered within the request timeout")
    ok.setdefault("headers", {}).update(_REQUEST_ID)
    return dict(sorted(responses.items()))


_DATA_KEYS = frozenset({"example", "examples", "default", "enum"})  # values, not schemas
_MAPS = frozenset({"properties", "schemas", "patternProperties", "$defs"})  # name -> schema


def to_openapi30(node: Any, is_map: bool = False) -> Any:
    """JSON Schema 2020-12 forms (pydantic's) rewritten in OpenAPI 3.0 terms, recursively, in place."""
    if isinstance(node, list):
        for item in node:
            to_openapi30(item)
        return node
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        if is_map or key not in _DATA_KEYS:
            to_openapi30(value, is_map=not is_map and key in _MAPS)
    if is_map:
        return node
    for key in ("anyOf", "oneOf"):
        if key in node and {"type": "null"} in node[key]:
            others = [s for s in node.pop(key) if s != {"type": "null"}]
            if len(others) == 1 and "$ref" in others[0]:
                node["allOf"] = others
            elif len(others) == 1:
                node.update({k: v for k, v in others[0].items() if k not in node})
            else:
                node[key] = others
            node["nullable"] = True
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(key), int | float) and not isinstance(node[key], bool):
            node[bound] = node.pop(key)
            node[key] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "root_input" in node:
        node["x-bentoml-root-input"] = node.pop("root_input")
    return node


def refs(node: Any) -> set[str]:
    """The component names ``node`` references."""
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"][len(REF) :]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(refs(v) for v in node.values()))


def _body_ref(content: Spec, components: Spec) -> None:
    """An inlined (and flattened) body schema replaced by a reference to its full component."""
    media = content.get(JSON)
    if not isinstance(media, dict):
        return
    title = media.get("schema", {}).get("title")
    for name in (title, f"info__{title}"):
        if name and name in components:
            media["schema"] = _ref(name)
            return


Choices = dict[tuple[str, str], list[str]]


def served_choices() -> Choices:
    """(request model, field) -> the values this server accepts there, as configured."""
    from models.version import PRECISIONS
    from runners.platform.settings import load_settings
    from runners.serving.variants import VariantConfig

    settings = load_settings()
    config = VariantConfig.parse(settings.variants, settings.precision, settings.model_tag)
    names = [*PRECISIONS, *(v.name for v in config.variants if v.name not in PRECISIONS)]
    return {("RecommendRequest", "variant"): names}


def served_window() -> Window:
    """The ts window this server applies (runners/stages/pipeline.py ``feedback_events``)."""
    from runners.platform.settings import load_settings

    settings = load_settings()
    return settings.feedback_max_age_s, settings.feedback_max_skew_s


def _state_window(schemas: Spec, window: Window | None) -> None:
    for model, field in WINDOWED_FIELDS:
        for name in (model, f"{model}IODescriptor"):
            prop = schemas.get(name, {}).get("properties", {}).get(field)
            if not isinstance(prop, dict):
                continue
            said = prop.get("description", "")
            prop["description"] = (
                f"{said}{'. ' if said else ''}Accepted only within {window_text(window)}, whatever the"
                f" static bounds: outside it the answer is a 400 whose error says '{WINDOW_REFUSAL}'"
            )
            if window is not None:
                prop["x-folio-accepted-window"] = window_extension(window)


def _require_body(body: Spec, schemas: Spec) -> None:
    """``required: true`` when the body's model has required fields; else the body is optional, and
    the server reads no body as ``{}`` (BentoML's JSON serde)."""
    schema = body.get("content", {}).get(JSON, {}).get("schema", {})
    ref = schema.get("$ref")
    target = schemas.get(ref[len(REF) :], {}) if isinstance(ref, str) and ref.startswith(REF) else schema
    if target.get("required"):
        body["required"] = True
    elif target.get("properties"):
        body.setdefault("description", "optional: no body means `{}`, every field's default")


def _restrict(schemas: Spec, choices: Choices) -> None:
    for (model, field), values in choices.items():
        for name in (model, f"{model}IODescriptor"):
            prop = schemas.get(name, {}).get("properties", {}).get(field)
            if isinstance(prop, dict):
                nullable = prop.get("nullable") or {"type": "null"} in prop.get("anyOf", [])
                prop["enum"] = [*values, *([None] if nullable else [])]  # 3.0: null listed with nullable


def true_spec(generated: Spec, choices: Choices | None = None, window: Window | None = None) -> Spec:
    """``generated`` (BentoML's ``openapi_spec.asdict()``), corrected; the argument is not changed.
    ``choices``: request fields whose values the configuration fixes (``served_choices``); ``window``:
    the feedback ts window (``served_window``), stated where it applies."""
    spec = copy.deepcopy(generated)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _restrict(schemas, choices or {})
    _state_window(schemas, window)
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            op["responses"] = {str(k): v for k, v in op["responses"].items()}  # BentoML's are ints
            if path in OPEN_INFRA:
                if path == "/readyz":
                    text = {"text/plain": {"schema": {"type": "string"}}}
                    op["responses"]["503"] = {
                        "description": "not ready (starting or draining)",
                        "content": text,
                    }
                continue
            op["security"] = [{}, {"bearer": []}, {"apiKey": []}]
            if method != "post":  # /metrics
                op["responses"].update(_guard_errors(with_body=False))
                continue
            if "requestBody" in op:
                _body_ref(op["requestBody"].get("content", {}), schemas)
                _require_body(op["requestBody"], schemas)
            ok = op["responses"].get("200", {"description": "OK"})
            _body_ref(ok.get("content", {}), schemas)
            op["responses"] = api_responses(path, ok, window)
    to_openapi30(schemas, is_map=True)
    to_openapi30(spec.get("paths", {}), is_map=True)
    schemas.update(copy.deepcopy(SCHEMAS))
    used, todo = set(), refs(spec.get("paths", {}))
    while todo:
        name = todo.pop()
        used.add(name)
        todo |= refs(schemas.get(name)) - used
    for name in _BENTOML_ERROR_SCHEMAS:
        if name not in used:
            schemas.pop(name, None)
    components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEMES))
    return spec


def install() -> None:
    """Serve ``true_spec`` at /docs.json (idempotent)."""
    if not supported("bentoml", "the /docs.json corrections"):
        return
    from _bentoml_impl.server import app as bentoml_app
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    factory = getattr(bentoml_app, "ServiceAppFactory", None)
    original = getattr(factory, "openapi_spec_view", None)
    if original is None:
        log.warning("BentoML has no ServiceAppFactory.openapi_spec_view: /docs.json left as generated")
        return
    if getattr(original, "__folio__", False):
        return

    async def openapi_spec_view(self: Any, req: Request) -> Response:
        try:
            if getattr(self, "_folio_spec", None) is None:  # the same for the app's life: built once
                generated = self.service.openapi_spec.asdict()
                self._folio_spec = true_spec(generated, served_choices(), served_window())
            return JSONResponse(self._folio_spec)
        except Exception:
            log.exception("could not build /docs.json")
            return JSONResponse({"error": "Failed to generate OpenAPI spec"}, status_code=500)

    openapi_spec_view.__folio__ = True  # type: ignore[attr-defined]
    factory.openapi_spec_view = openapi_spec_view  # type: ignore[union-attr]
