"""Adding a platform is one module (``tests/toy_backend.py``) and one registry line.

The line is added here with ``monkeypatch``; everything else must follow from the toy's
description alone: the configuration accepts a ``toy`` bot and checks its credential,
validation accepts a ``toy`` request and its operation, and the pipeline delivers it to a
real HTTP server (an aiohttp app on a loopback port), with retries on a 5xx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cardq import backends, validation
from cardq.backends.base import BackendType
from cardq.backends.tokens import TokenPool
from cardq.backends.transport import AiohttpTransport
from cardq.config import ConfigError, from_mapping
from cardq.errors import ValidationError
from cardq.models import Status
from cardq.testing import build_pipeline, job
from tests.toy_backend import Toy

KEY = "toy-key-9f2c61"


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = cast(MutableMapping[str, BackendType], backends.REGISTRY)
    monkeypatch.setitem(registry, "toy", Toy)  # the one registry line


class ToyServer:
    """The toy platform: records what it accepted; answers 503 ``busy`` times first."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self.busy = 0

    async def messages(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"ok": False, "error": "bad key"}, status=400)
        if self.busy:
            self.busy -= 1
            return web.json_response({"ok": False, "error": "busy"}, status=503)
        body = await request.json()
        self.accepted.append((request.match_info["room"], body))
        return web.json_response({"ok": True, "id": f"m{len(self.accepted)}"})


@pytest.fixture
async def toy() -> AsyncIterator[tuple[ToyServer, str]]:
    platform = ToyServer()
    app = web.Application()
    app.router.add_post("/rooms/{room}/messages", platform.messages)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield platform, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def config(base_url: str, credentials: dict[str, Any] | None = None) -> dict[str, Any]:
    bot = {"backend": "toy", "base_url": base_url}
    bot["credentials"] = {"key": {"env": "TOY_KEY"}} if credentials is None else credentials
    return {"bots": {"room-bot": bot}}


def request(rid: str, text: str = "hello") -> dict[str, Any]:
    return {
        "version": 1,
        "request_id": rid,
        "backend": "toy",
        "bot": "room-bot",
        "target": {"room": "lobby"},
        "msg_type": "text",
        "content": {"text": text},
    }


async def test_a_toy_backend_delivers_over_http_from_its_description_alone(
    toy: tuple[ToyServer, str],
) -> None:
    platform, base_url = toy
    settings = from_mapping(config(base_url), env={"TOY_KEY": KEY})
    transport = AiohttpTransport()
    ctx = backends.BackendContext(transport=transport, timeout_s=2.0, tokens=TokenPool(transport))
    pipeline = build_pipeline({"room-bot": backends.build(settings.bots["room-bot"], ctx)})
    platform.busy = 1  # the first attempt meets a 503 and is retried
    try:
        sent = validation.from_dict(request("r1"))
        assert sent.destination == "toy/room-bot/room:lobby"
        result = await pipeline.run(job(sent))
    finally:
        await transport.aclose()
    assert result is not None and result.status is Status.DELIVERED
    assert result.attempts == 2 and result.message_id == "m1"
    assert platform.accepted == [("lobby", {"text": "hello", "id": "r1"})]


def test_the_configuration_checks_the_toy_credentials_from_its_description() -> None:
    with pytest.raises(ConfigError) as unknown:
        from_mapping(config("http://toy", {"kee": {"env": "TOY_KEY"}}), env={})
    assert unknown.value.key == "bots.room-bot.credentials.kee"
    assert "did you mean key?" in unknown.value.reason
    with pytest.raises(ConfigError) as missing:
        from_mapping(config("http://toy", {}), env={})
    assert missing.value.key == "bots.room-bot.credentials.key"
    with pytest.raises(ConfigError) as misspelt:
        from_mapping({"bots": {"b": {"backend": "tooy"}}}, env={})
    assert misspelt.value.key == "bots.b.backend" and "did you mean toy?" in misspelt.value.reason


def test_validation_reads_the_toy_operations_and_rules() -> None:
    with pytest.raises(ValidationError) as operation:
        validation.from_dict({**request("r2"), "operation": "delete"})
    assert operation.value.field == "operation" and "toy supports send" in operation.value.reason
    with pytest.raises(ValidationError) as target:
        validation.from_dict({**request("r3"), "target": {}})
    assert target.value.field == "target.room"
    with pytest.raises(ValidationError) as long:
        validation.from_dict(request("r4", "x" * 201))
    assert (long.value.field, long.value.code) == ("content.text", "invalid_content")
