"""Fuzz a real `bentoml serve` from its own OpenAPI document (/docs.json) with schemathesis.

Each documented operation gets its own `schemathesis run` (the CLI: its examples, coverage and fuzzing
phases, schema-valid and schema-violating bodies) with every check on (``[checks] enabled = true``,
as ``--checks all``, in the generated configuration, where one operation can still turn one off): no 5xx
(not_a_server_error), a documented status code, content type, headers and body
(status_code_conformance, content_type_conformance, response_headers_conformance,
response_schema_conformance), invalid bodies rejected with a 4xx (negative_data_rejection) and valid
ones accepted (positive_data_acceptance), unexpected methods answered 405 (unsupported_method), and
Folio's own checks in tests/fuzz/hooks.py. A failure shows schemathesis' report: each distinct failure
with the check, the response and the curl command that reproduces it.

* The feedback ``ts`` window: /feedback and /feedback/batch accept a ``ts`` only within [now -
  FOLIO_FEEDBACK_MAX_AGE_S, now + FOLIO_FEEDBACK_MAX_SKEW_S] of the server's clock, which no static
  schema can say (the document says it in words and in ``x-folio-accepted-window``). For those two
  operations positive_data_acceptance is replaced by tests/fuzz/hooks.py's folio_positive_data_acceptance:
  the same expected statuses, plus a 400 that refuses a ts the case really had outside the window
  (recomputed from this server's configured window, ``MAX_AGE_S``/``MAX_SKEW_S``, at send time).

* Deep cases: the synthetic catalog's real ids (items ``b0``.., users ``u0``..), its genres, the
  ranker precisions, the store's two versions and timestamps inside the window are fuzz dictionaries bound to
  the body fields (``[parameters]`` in the generated schemathesis.toml), used in ~70% of the cases that
  have the field; tests/fuzz/hooks.py fails a run in which an operation never answered 2xx.
* One server with API keys (so /admin/reload is live, and swaps between two stored versions) and no
  rate limit (FOLIO_RATE_LIMIT_RPS=0; 429 is not tested here). ``test_fuzz_without_key`` fuzzes every
  operation without the key (401s, documented); ``test_admin_off`` checks /admin/reload's 403 on a
  server without keys; ``test_fuzz_stateful`` chains operations through the links schemathesis
  infers; ``test_raw_bodies`` and ``test_framing`` send what the document cannot describe (other
  content types, multipart without a boundary, bytes that are not JSON, out-of-range numbers such as
  1e309, deep nesting, chunked and oversized bodies) and check the answers the same way.

Size: ``FOLIO_FUZZ_CASES`` fuzzing-phase cases per operation (default 200: with the examples and
coverage phases about 250 requests an operation, ~3 minutes for the module on 2 cores);
``FOLIO_FUZZ_CASES=1000`` is the long run. ``FOLIO_FUZZ_SEED`` replays a run (each report ends with
its seed). Failures found are kept in .pytest_cache/folio-fuzz and replayed first by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from models import registry
from runners.platform.processes import ROOT, ServedFolio
from runners.platform.settings import hash_key
from tests.synthetic_catalog import BOOKS_PER_GENRE, GENRES

pytestmark = pytest.mark.integration
KEY = "fuzz-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CASES = int(os.environ.get("FOLIO_FUZZ_CASES", "200"))
SEED = os.environ.get("FOLIO_FUZZ_SEED")
CACHE = ROOT / ".pytest_cache" / "folio-fuzz"
HOOKS = Path(__file__).resolve().parents[1] / "fuzz" / "hooks.py"
ITEMS = [f"b{n}" for n in range(BOOKS_PER_GENRE * len(GENRES))]
USERS = [f"u{n}" for n in range(0, 1000, 7)]  # the catalog's users are u0..u999
# The fuzzed server's feedback ts window (FOLIO_FEEDBACK_MAX_AGE_S, FOLIO_FEEDBACK_MAX_SKEW_S).
MAX_AGE_S, MAX_SKEW_S = 365 * 86400.0, 300.0
# Where the window applies: positive_data_acceptance is replaced there (tests/fuzz/hooks.py).
WINDOW_OPERATIONS = ["POST /feedback", "POST /feedback/batch"]
# Bodies whose records are keyed by item_id, each at most once: their 400 for a repeated id is due
# (tests/fuzz/hooks.py; positive_data_acceptance is replaced there too).
UNIQUE_ID_OPERATIONS = ["POST /admin/catalog/books"]
# positive_data_acceptance's expected statuses. A valid body can still be too large in bytes (1,000
# events of 128 astral characters, \u-escaped, pass 1 MB): JSON Schema cannot bound bytes, so 413
# (documented: status_code_conformance) is an acceptable answer to a schema-valid body. The rest is
# schemathesis' default list.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
# negative_data_rejection's expected statuses: schemathesis' default list plus 413. A schema-violating
# body can also be over FOLIO_MAX_BODY_BYTES (seen in CI: a 1.4 MB book description over its maxLength),
# and the 413 that refuses it before it is parsed is a rejection as much as a 400.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
# Every operation of the document; test_every_operation_is_fuzzed keeps this list complete.
OPERATIONS = [
    ("POST", "/recommend"),
    ("POST", "/similar"),
    ("POST", "/trending"),
    ("POST", "/feedback"),
    ("POST", "/feedback/batch"),
    ("POST", "/forget"),
    ("POST", "/info"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/catalog/books"),
    ("POST", "/admin/catalog/withdraw"),
    ("POST", "/admin/catalog/restore"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
]
RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SAVE = (
    "import json, sys; from pathlib import Path; from models import registry; "
    "print(registry.save(Path(sys.argv[1]), {'dataset': 'synthetic'}, json.loads(sys.argv[2])).tag)"
)


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)  # strings (JSON escapes are TOML escapes), numbers


def write_config(path: Path, tags: list[str]) -> Path:
    """schemathesis.toml: the fuzz dictionaries of real ids, bound to the body fields."""
    now = time.time()  # each stays inside the window for a day at least (the run: minutes)
    dictionaries = {
        "users": ["u1", *USERS],
        "items": ITEMS,
        "genres": list(GENRES),
        "variants": ["int8", "fp16", "fp32"],
        "tags": tags,
        "timestamps": [now - MAX_AGE_S + 86400, now - 30 * 86400, now - 3600, now - 1, now + MAX_SKEW_S / 5],
    }
    # (dictionary, share of the cases that have the field): the rest is schemathesis' own data. A tag
    # from the dictionary may swap the served version (seconds each), hence its smaller share.
    bind = {
        "body.user_id": ("users", 0.7),
        "body.events[*].user_id": ("users", 0.7),
        "body.item_id": ("items", 0.7),
        "body.events[*].item_id": ("items", 0.8),  # a batch is all or nothing
        "body.item_ids[*]": ("items", 0.8),  # catalog withdraw / restore: all or nothing too
        "body.genre": ("genres", 0.7),
        "body.genres[*]": ("genres", 0.7),
        "body.variant": ("variants", 0.7),
        "body.tag": ("tags", 0.3),
        "body.ts": ("timestamps", 0.7),
        "body.events[*].ts": ("timestamps", 0.8),
    }
    # the ts-window operations and the unique-id one (tests/fuzz/hooks.py)
    window_paths = [label.split(" ", 1)[1] for label in (*WINDOW_OPERATIONS, *UNIQUE_ID_OPERATIONS)]
    lines = [
        # Every check on, as --checks all (which, named on the command line, would also override the
        # per-operation switch below).
        "[checks]\nenabled = true",
        f"[checks.positive_data_acceptance]\nexpected-statuses = {toml_value(ACCEPTED)}",
        f"[checks.negative_data_rejection]\nexpected-statuses = {toml_value(REJECTED)}",
        # the ts-window operations: folio_positive_data_acceptance instead (tests/fuzz/hooks.py)
        f"[[operations]]\ninclude-path = {toml_value(window_paths)}",
        "checks.positive_data_acceptance.enabled = false",
        # Error feedback steers generation by the 400s' messages, and ends a phase after a few cases
        # when schema-valid bodies are refused (seen: 2 of 200): keep the case count as asked.
        "[phases.fuzzing.error-feedback]\nenabled = false",
        f"[cache]\ndirectory = {toml_value(str(CACHE / 'schemathesis'))}",
        f"[generation]\ndatabase = {toml_value(str(CACHE / 'hypothesis'))}",
        *(f"[dictionaries.{name}]\nvalues = {toml_value(values)}" for name, values in dictionaries.items()),
        "[parameters]",
        *(
            f"{json.dumps(k)} = {toml_value({'dictionary': d, 'probability': p})}"
            for k, (d, p) in bind.items()
        ),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Fuzz:
    """`schemathesis run` against a served Folio, from a scratch directory."""

    def __init__(self, server: ServedFolio, config: Path) -> None:
        self.server, self.config = server, config

    def run(
        self,
        *args: str,
        key: bool = True,
        expect: str = "deep",
        timeout_s: float = 900,
        window: tuple[float, float] = (MAX_AGE_S, MAX_SKEW_S),
        fails: bool = False,
    ) -> str:
        """The report; fails the test when the run fails (with ``fails``: when it passes). ``window``:
        the ts window the hooks believe the server applies."""
        cli = Path(sys.executable).with_name("schemathesis")
        cmd = [
            str(cli),
            "--no-color",
            "--config-file",
            str(self.config),
            "run",
            f"{self.server.url}/docs.json",
            "--mode",
            "all",
            "--continue-on-failure",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--output-sanitize",
            "false",  # the reproducing curl commands carry the (test) key
            "--suppress-health-check",
            "too_slow,filter_too_much,data_too_large",
            *(("--header", f"Authorization: Bearer {KEY}") if key else ()),
            *(("--seed", SEED) if SEED else ()),
            *args,
        ]
        ts_window = {
            "operations": WINDOW_OPERATIONS,
            "max_age_s": window[0],
            "max_skew_s": window[1],
            "expected_statuses": ACCEPTED,
        }
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(HOOKS),
            "FOLIO_FUZZ_EXPECT": expect,
            "FOLIO_FUZZ_TS_WINDOW": json.dumps(ts_window),
        }
        out = subprocess.run(
            cmd, cwd=self.config.parent, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        report = out.stdout + out.stderr
        if not self.server.alive():
            pytest.fail(f"bentoml serve died during the fuzz run:\n{self.server.log_tail()}\n\n{report}")
        if fails and out.returncode == 0:
            pytest.fail(f"schemathesis found no problem:\n{report}", pytrace=False)
        if not fails and out.returncode != 0:
            pytest.fail(f"schemathesis found problems (exit {out.returncode}):\n{report}", pytrace=False)
        return report


@pytest.fixture(scope="module")
def versions(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An isolated model store with two versions of the trained run, the first one in production
    (so /admin/reload is live: FOLIO_MODEL_TAG would pin the served version)."""
    home = tmp_path_factory.mktemp("fuzz_home")
    stored = registry.get(model_tag)
    env = {**os.environ, "BENTOML_HOME": str(home)}
    metadata = json.dumps(stored.info.metadata)

    def run(*args: str) -> str:
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    tags = [run(sys.executable, "-c", SAVE, stored.path, metadata) for _ in range(2)]
    run(sys.executable, "-m", "training", "promote", tags[0])
    return home, tags


@pytest.fixture(scope="module")
def fuzz_server(
    versions: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedFolio]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "BENTOML_HOME": str(versions[0]),
        "FOLIO_STATE_DIR": str(tmp / "state"),
        "FOLIO_API_KEYS": hash_key(KEY),
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_MODEL_WATCH_S": "0",
        "FOLIO_MAX_BODY_BYTES": "1000000",  # test_framing's 413s
        "FOLIO_FEEDBACK_MAX_AGE_S": str(MAX_AGE_S),  # the window the hooks recompute
        "FOLIO_FEEDBACK_MAX_SKEW_S": str(MAX_SKEW_S),
    }
    server = ServedFolio(env, tmp / "serve.log")
    server.env.pop("FOLIO_MODEL_TAG", None)
    with server:
        yield server


@pytest.fixture(scope="module")
def fuzz(
    fuzz_server: ServedFolio, versions: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Fuzz:
    tags = versions[1]
    config = write_config(tmp_path_factory.mktemp("schemathesis") / "schemathesis.toml", tags)
    return Fuzz(fuzz_server, config)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServedFolio) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/docs.json", timeout=30)


def test_every_operation_is_fuzzed(fuzz_server: ServedFolio) -> None:
    doc = httpx.get(f"{fuzz_server.url}/docs.json", timeout=30).json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert documented == set(OPERATIONS)


def test_the_document_states_the_window_and_required_bodies_as_served(fuzz_server: ServedFolio) -> None:
    doc = httpx.get(f"{fuzz_server.url}/docs.json", timeout=30).json()
    stated = {"max-age-s": MAX_AGE_S, "max-skew-s": MAX_SKEW_S}
    for label in WINDOW_OPERATIONS:
        refused = doc["paths"][label.split(" ", 1)[1]]["post"]["responses"]["400"]
        assert refused["x-folio-accepted-window"].items() >= stated.items(), refused
    bodies = {
        p: op["requestBody"] for p, ops in doc["paths"].items() for op in ops.values() if "requestBody" in op
    }
    required = {p for p, body in bodies.items() if body.get("required")}
    assert required == {
        "/recommend", "/similar", "/feedback", "/feedback/batch", "/forget",
        "/admin/catalog/books", "/admin/catalog/withdraw", "/admin/catalog/restore",
    }, required  # fmt: skip
    # and the server agrees: no body is a 400 where one is required, `{}` where every field has a default
    for route in ("/recommend", "/trending", "/info"):
        answer = httpx.post(f"{fuzz_server.url}{route}", headers=AUTH, timeout=30)
        assert answer.status_code == (400 if route in required else 200), (route, answer.text)
    # strict request models: no `true` for an integer, no `0` for a boolean
    for route, body in (("/trending", {"k": True}), ("/recommend", {"user_id": "u1", "exclude_seen": 0})):
        answer = httpx.post(f"{fuzz_server.url}{route}", json=body, headers=AUTH, timeout=30)
        assert answer.status_code == 400 and answer.json()["detail"], (route, body, answer.text)


def test_positive_data_acceptance_is_replaced_on_the_window_operations_only(
    fuzz: Fuzz, fuzz_server: ServedFolio
) -> None:
    """The generated configuration, as `schemathesis run` reads it: every other check on everywhere."""
    config = SchemathesisConfig.from_path(fuzz.config)
    api = schemathesis.openapi.from_url(f"{fuzz_server.url}/docs.json", config=config, timeout=30)
    for method, path in OPERATIONS:
        checks = api.config.checks_config_for(operation=api[path][method])
        on = checks.positive_data_acceptance.enabled
        assert on == (f"{method} {path}" not in (*WINDOW_OPERATIONS, *UNIQUE_ID_OPERATIONS)), (
            method,
            path,
            on,
        )
        assert checks.positive_data_acceptance.expected_statuses == ACCEPTED
        names = [f.name for f in dataclasses.fields(checks) if not f.name.startswith("_")]
        off = [
            n
            for n in names
            if n not in ("positive_data_acceptance", "max_response_time")
            and not checks.get_by_name(name=n).enabled
        ]
        assert not off, (method, path, off)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(fuzz: Fuzz, method: str, path: str) -> None:
    fuzz.run(
        "--include-path",  # one method a path (test_every_operation_is_fuzzed)
        path,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(CASES),
    )


def test_the_window_check_refuses_an_undue_refusal(fuzz: Fuzz) -> None:
    """folio_positive_data_acceptance bites: told a window far wider than the server's, it takes the
    server's refusals of the coverage phase's boundary ts (just above 0, 4102444800) for undue ones."""
    wide = (1e12, 1e12)
    report = fuzz.run("--include-path", "/feedback", "--phases", "coverage", window=wide, fails=True)
    assert "folio_positive_data_acceptance" in report and "was inside the window" in report, report


def test_fuzz_stateful(fuzz: Fuzz) -> None:
    """Sequences of calls, feeding one response's values (ids, tags) into the next request."""
    fuzz.run("--phases", "stateful", "--max-examples", str(max(20, CASES // 5)))


def test_fuzz_without_key(fuzz: Fuzz) -> None:
    """Every operation without the key: 401s, documented, with a documented body."""
    phases = ("--phases", "examples,coverage,fuzzing")
    fuzz.run(*phases, "--max-examples", str(max(5, CASES // 10)), key=False, expect="401")


def test_admin_off(model_tag: str, tmp_path: Path) -> None:
    """Without FOLIO_API_KEYS the admin endpoint answers 403, documented, with a documented body."""
    env = {
        "FOLIO_MODEL_TAG": model_tag,
        "FOLIO_STATE_DIR": str(tmp_path / "state"),
        "FOLIO_RATE_LIMIT_RPS": "0",
        "FOLIO_MODEL_WATCH_S": "0",
        "FOLIO_TRITON_URL": "127.0.0.1:1",  # ranking falls back in-process: no Triton needed here
    }
    with ServedFolio(env, tmp_path / "serve.log") as served:
        api = schemathesis.openapi.from_url(f"{served.url}/docs.json", timeout=30)
        operation = api["/admin/reload"]["POST"]
        bodies: list[Any] = [{}, {"tag": model_tag}, {"tag": "folio:nope"}]
        for body in bodies:
            case = operation.Case(body=body, media_type="application/json")
            response = case.call_and_validate(checks=RESPONSE_CHECKS)
            assert response.status_code == 403, (body, response.status_code, response.text)


# --- what the document cannot describe: other content types, non-JSON, odd numbers, framing --------

ROUTES = [p for m, p in OPERATIONS if m == "POST"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "multipart/form-data",  # without a boundary
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
    None,  # no Content-Type
]
ODD_NUMBERS = ["1e309", "-1e309", "2e9", "1e19", "-1", "-0.0", "0", "1e-400", "NaN", "Infinity", "9" * 400]


def json_texts() -> st.SearchStrategy[bytes]:
    """Bodies near the valid ones, with numbers and values JSON Schema cannot rule out or express."""
    field = st.sampled_from(["user_id", "item_id", "event", "value", "ts", "k", "genre", "genres", "tag"])
    string = st.one_of(
        st.sampled_from(["u1", "b1", "click", "rate", "", "a:b:c", "\x00"]), st.text(max_size=20)
    )
    value = st.one_of(
        st.sampled_from(ODD_NUMBERS), string.map(json.dumps), st.sampled_from(["null", "[]", "{}", "true"])
    )

    def obj(pairs: list[tuple[str, str]]) -> str:
        return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"

    base = [("user_id", '"u1"'), ("item_id", '"b1"'), ("event", '"click"')]
    feedback = st.lists(st.tuples(field, value), max_size=4).map(lambda extra: obj(base + extra))
    texts = st.one_of(
        feedback,
        feedback.map(lambda e: '{"events":[' + e + "]}"),
        st.lists(st.tuples(field, value), max_size=5).map(obj),
        st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    )
    return st.one_of(texts.map(str.encode), st.binary(max_size=200))


def check_raw(api: Any, route: str, response: httpx.Response, body: bytes, headers: dict[str, str]) -> None:
    case = api[route]["POST"].Case(body=body, media_type=headers.get("Content-Type", "application/json"))
    try:
        case.validate_response(response, checks=RESPONSE_CHECKS, headers=headers)
    except (FailureGroup, AssertionError) as exc:
        sent = " ".join(f"-H '{k}: {v}'" for k, v in headers.items())
        raise AssertionError(
            f"{exc}\nThe request: curl -X POST {sent} --data-binary {body[:300]!r} {response.request.url}"
        ) from None


@settings(
    max_examples=max(50, CASES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=DirectoryBasedExampleDatabase(CACHE / "raw"),
)
@given(route=st.sampled_from(ROUTES), content_type=st.sampled_from(CONTENT_TYPES), body=json_texts())
def test_raw_bodies(
    route: str, content_type: str | None, body: bytes, api_schema: Any, fuzz_server: ServedFolio
) -> None:
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = httpx.post(f"{fuzz_server.url}{route}", content=body, headers=headers, timeout=30)
    check_raw(api_schema, route, response, body, headers)


def streamed_post(url: str, chunks: list[bytes], headers: dict[str, str]) -> httpx.Response:
    """POST a chunked body (no Content-Length); the answer on a request whose body reads back."""
    streamed = httpx.post(url, content=iter(chunks), headers=headers, timeout=30)
    request = httpx.Request(
        "POST", url, headers={**headers, "Transfer-Encoding": "chunked"}, content=b"".join(chunks)
    )
    response = httpx.Response(
        streamed.status_code, headers=streamed.headers, content=streamed.content, request=request
    )
    response.elapsed = streamed.elapsed
    return response


@pytest.mark.parametrize("route", ROUTES)
def test_framing(route: str, api_schema: Any, fuzz_server: ServedFolio) -> None:
    """Chunked bodies, and bodies over FOLIO_MAX_BODY_BYTES (1 MB) by Content-Length or chunked (413)."""
    url, headers = f"{fuzz_server.url}{route}", {**AUTH, "Content-Type": "application/json"}
    small = [b'{"user_id": "u1", ', b'"item_id": "b1", "event": "click"}']
    big = [b'{"user_id": "u1", "pad": "', *[b"x" * 50_000] * 21, b'"}']
    chunked_headers = {**headers, "Transfer-Encoding": "chunked"}
    for chunks in (small, big):
        response = streamed_post(url, chunks, headers)
        check_raw(api_schema, route, response, b"".join(chunks), chunked_headers)
        if chunks is big:
            assert response.status_code == 413, response.text
    body = b"".join(big)
    over = httpx.post(url, content=body, headers=headers, timeout=30)
    check_raw(api_schema, route, over, body, headers)
    assert over.status_code == 413, over.text
