"""GuardMiddleware at the ASGI level, in front of a tiny app that reads its whole body: the body limit
counts the bytes received whatever the framing, and only JSON bodies get through."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runners.http.guard import GuardMiddleware, Runtime
from runners.platform.settings import Settings, hash_key

LIMIT = 2048
Message = dict[str, Any]


class BodyApp:
    """Reads the body to its end, answers 200 with its length; remembers what it saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.body = b""
        self.after_body: Message | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        if scope["method"] not in ("GET", "HEAD"):
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            self.after_body = await receive()
        body = json.dumps({"length": len(self.body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


class Client:
    """The server side of one request: hands out ``chunks`` as http.request messages (then a
    disconnect), counting what the guard pulled, and collects the response."""

    def __init__(self, chunks: list[bytes], disconnect_early: bool = False) -> None:
        self.chunks = chunks
        self.pulled = 0
        self.disconnect_early = disconnect_early
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pulled >= len(self.chunks) or (self.disconnect_early and self.pulled == 1):
            self.pulled += 1
            return {"type": "http.disconnect"}
        self.pulled += 1
        more = self.pulled < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.pulled - 1], "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return self.sent[0]["status"] if self.sent else None

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def call(
    headers: dict[str, str],
    chunks: list[bytes],
    method: str = "POST",
    path: str = "/feedback",
    disconnect_early: bool = False,
    keys: bool = False,
) -> tuple[Client, BodyApp]:
    app = BodyApp()
    settings = Settings(max_body_bytes=LIMIT, rate_limit_rps=0)
    digests = [hash_key("k").encode()] if keys else []
    guard = GuardMiddleware(app, Runtime(settings=settings, digests=digests))
    client = Client(chunks, disconnect_early)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
    }
    asyncio.run(guard(scope, client.receive, client.send))
    return client, app


JSON = {"content-type": "application/json"}
KB = b"x" * 1024


def test_a_chunked_body_under_the_limit_is_accepted_and_reaches_the_app_whole() -> None:
    chunks = [b'{"user_id": "u1"', b", " * 10, b"}"]
    client, app = call({**JSON, "transfer-encoding": "chunked"}, chunks)
    assert client.status == 200 and app.body == b"".join(chunks)
    assert app.after_body == {"type": "http.disconnect"}  # the server's receive, after the replay


@pytest.mark.parametrize(
    "framing",
    [
        {"transfer-encoding": "chunked"},
        {"content-length": "1", "transfer-encoding": "chunked"},  # the lie the limit used to trust
        {"content-length": "1"},
    ],
)
def test_a_body_past_the_limit_is_413_whatever_the_framing_without_reading_the_rest(
    framing: dict[str, str],
) -> None:
    client, app = call({**JSON, **framing}, [KB] * 50)
    assert client.status == 413 and app.calls == 0
    assert client.json == {"error": f"request body over {LIMIT} bytes"}
    assert (
        client.headers[b"connection"] == b"close" and client.headers[b"content-type"] == b"application/json"
    )
    assert client.pulled == 3  # 3 KB read, 47 left unread


def test_a_body_exactly_at_the_limit_passes() -> None:
    client, app = call({**JSON, "transfer-encoding": "chunked"}, [KB, KB])
    assert client.status == 200 and len(app.body) == LIMIT


def test_an_oversize_content_length_is_refused_before_any_byte_is_read() -> None:
    client, app = call({**JSON, "content-length": str(LIMIT + 1)}, [KB] * 3)
    assert client.status == 413 and client.pulled == 0 and app.calls == 0


def test_a_client_that_leaves_mid_body_gets_no_answer_and_the_app_never_runs() -> None:
    client, app = call({**JSON, "transfer-encoding": "chunked"}, [KB, KB], disconnect_early=True)
    assert client.sent == [] and app.calls == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data",  # no boundary: was a 500
        "multipart/form-data; boundary=xyz",
        "application/merge-patch+json",
        "application/vnd.bentoml+pickle",
        "application/json; charset=latin-1",
        None,
    ],
)
def test_a_body_that_is_not_json_is_415_and_never_reaches_the_app(content_type: str | None) -> None:
    headers = {"content-length": "17"} | ({"content-type": content_type} if content_type else {})
    client, app = call(headers, [b'{"user_id": "u1"}'])
    assert client.status == 415 and app.calls == 0
    assert "Content-Type: application/json" in client.json["error"]


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
def test_json_bodies_pass(content_type: str) -> None:
    client, app = call({"content-type": content_type, "content-length": "17"}, [b'{"user_id": "u1"}'])
    assert client.status == 200 and app.body == b'{"user_id": "u1"}'


def test_a_bodyless_post_may_omit_the_content_type() -> None:
    client, app = call({}, [b""], path="/info")
    assert client.status == 200 and app.calls == 1
    client, app = call({"content-length": "0"}, [b""], path="/info")
    assert client.status == 200 and app.calls == 1


def test_gets_and_open_paths_are_not_checked() -> None:
    client, app = call({"content-type": "text/plain"}, [], method="GET", path="/metrics")
    assert client.status == 200 and app.calls == 1
    client, app = call({"content-type": "text/plain"}, [], method="GET", path="/livez")
    assert client.status == 200 and app.calls == 1


def test_the_swagger_page_and_its_assets_need_no_key() -> None:
    for path in ("/", "/docs.json", "/static_content/swagger-ui-bundle.js"):
        client, app = call({}, [], method="GET", path=path, keys=True)
        assert client.status == 200 and app.calls == 1, path
    client, app = call({}, [], method="GET", path="/metrics", keys=True)
    assert client.status == 401 and app.calls == 0
