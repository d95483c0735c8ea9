"""The MindOffice robot group adapter against the simulator, over real HTTP.

MindOffice documents only the success shape (``code`` 200): the simulator's error answers
are its own choice (see ``worker/cardq/simulator/_mindoffice.py``), and the adapter reads them
the way ``backend-facts.md`` §6 asks: HTTP 5xx and timeouts retryable, HTTP 429 a
throttle, any other code final. There is no token, so no ``AuthExpired``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from cardq.backends import BackendContext, build
from cardq.backends.base import Backend
from cardq.backends.mindoffice_group import PATH, classify
from cardq.backends.tokens import TokenPool
from cardq.backends.transport import AiohttpTransport, HttpRequest, MockTransport, Response
from cardq.config import BotSettings, LimitOverrides, WindowSetting, from_mapping
from cardq.errors import Rejected, Throttled, Unavailable
from cardq.models import Delivery, SendRequest
from cardq.simulator import Simulator, SimulatorConfig
from cardq.validation import from_dict
from tests import helpers

ROBOT = "robot_mo_test"
ROBOT_SECRET = "mo-secret-52be19"
GROUP = "grp_6f2c9a41e7d3"
CARD = {
    "header": {"title": {"content": "XX项目3日留存"}, "template": "red"},
    "elements": [
        {"tag": "markdown", "content": '**已更新** <at user_id="all">所有人</at>'},
        {
            "tag": "action",
            "action": [
                {
                    "tag": "button",
                    "text": {"content": "查看", "tag": "plain_text"},
                    "type": "view",
                    "url": "https://example.com/report",
                }
            ],
        },
    ],
}


ENV = {"T_MO_SECRET": ROBOT_SECRET, "T_MO_WRONG": "not-the-robot-secret"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig()) as simulator:
        simulator.add_mindoffice_robot(ROBOT, ROBOT_SECRET)
        yield simulator


def settings(base_url: str, secret_env: str = "T_MO_SECRET", **kw: Any) -> BotSettings:
    return BotSettings(
        name="mind",
        backend="mindoffice_group",
        base_url=base_url,
        app_id=ROBOT,
        credentials={"app_secret": helpers.credential(secret_env, ENV)},
        **kw,
    )


def backend(transport: AiohttpTransport, bot: BotSettings, timeout_s: float = 2.0) -> Backend:
    ctx = BackendContext(transport=transport, timeout_s=timeout_s, tokens=TokenPool(transport))
    return build(bot, ctx)


def send(
    rid: str = "r1", group: str = GROUP, msg_type: str = "text", content: Any = None, **extra: Any
) -> SendRequest:
    return from_dict(
        {
            "version": 1,
            "request_id": rid,
            "backend": "mindoffice_group",
            "bot": "mind",
            "target": {"group_id": group},
            "msg_type": msg_type,
            "content": {"text": f"hello {rid}"} if content is None else content,
            **extra,
        }
    )


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        ("text", {"text": "<at user_id='all'>所有人</at> hello"}),
        ("markdown", {"text": "#### title \n + one"}),
        ("rich_text", [{"type": "paragraph", "content": [{"type": "text", "text": "文本"}]}]),
        ("interactive", CARD),
    ],
)
async def test_send_returns_the_platform_message_id(
    sim: Simulator, transport: AiohttpTransport, msg_type: str, content: Any
) -> None:
    mind = backend(transport, settings(sim.base_url))
    delivery = await mind.send(send("r1", msg_type=msg_type, content=content))
    (accepted,) = sim.accepted
    assert delivery.message_id is not None and delivery.message_id == accepted.message_id
    assert delivery.platform_code == 200
    assert accepted.destination == f"group:{GROUP}" and accepted.sender == ROBOT
    assert accepted.idempotency == "r1"  # the x-request-id header
    body = accepted.body
    assert body["group_id"] == GROUP and body["msg_type"] == msg_type
    assert isinstance(body["content"], str)  # the documented JSON-encoded string
    assert orjson.loads(body["content"]) == content


async def test_request_id_makes_the_platform_drop_a_resend_after_a_lost_answer(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    mind = backend(transport, settings(sim.base_url))
    request = send("r1", idempotency_key="order-42/paid")
    sim.faults.ack_loss_ratio = 1.0  # delivered, then HTTP 500
    with pytest.raises(Unavailable):
        await mind.send(request)
    sim.faults.ack_loss_ratio = 0.0
    delivery = await mind.send(request)
    (accepted,) = sim.accepted
    assert delivery.message_id == accepted.message_id
    assert accepted.idempotency == "order-42/paid"
    assert sim.stats.duplicates["mindoffice_group"] == 1


# --------------------------------------------------------------------------- Rejected


async def test_wrong_secret_is_rejected(sim: Simulator, transport: AiohttpTransport) -> None:
    mind = backend(transport, settings(sim.base_url, secret_env="T_MO_WRONG"))
    with pytest.raises(Rejected) as caught:
        await mind.send(send())
    error = caught.value
    assert (error.platform_code, error.http_status) == (401, 200)  # HTTP 200, code 401
    assert not error.retryable and "not-the-robot-secret" not in str(error)


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        ("interactive", {"header": {"template": "red"}}),  # a card without elements
        ("rich_text", {"text": "not a list"}),
        (
            "interactive",
            {"elements": [{"tag": "action", "action": [{"tag": "button", "type": "click"}]}]},
        ),  # a click button needs event
    ],
    ids=["no-elements", "rich-text-object", "click-without-event"],
)
async def test_refused_content_is_rejected(
    sim: Simulator, transport: AiohttpTransport, msg_type: str, content: Any
) -> None:
    mind = backend(transport, settings(sim.base_url))
    # Bypass our own validation: these are what the platform refuses if they get through.
    bad = dataclasses.replace(send(), msg_type=msg_type, content=content)
    with pytest.raises(Rejected) as caught:
        await mind.send(bad)
    assert caught.value.platform_code == 400 and caught.value.platform_msg
    assert sim.accepted == []


# --------------------------------------------------------------------------- Throttled


async def test_http_429_is_throttled(sim: Simulator, transport: AiohttpTransport) -> None:
    sim.config.mindoffice_limits = ((2, 1.0),)
    mind = backend(transport, settings(sim.base_url))
    await mind.send(send("r1"))
    await mind.send(send("r2"))
    with pytest.raises(Throttled) as caught:
        await mind.send(send("r3"))
    error = caught.value
    assert (error.platform_code, error.http_status) == (429, 429)
    assert error.retryable and error.scope == "destination"
    assert error.retry_after is None  # no reset time is documented: the pipeline backs off
    await mind.send(send("r4", group="grp_other"))


def test_no_limit_unless_configured() -> None:
    """MindOffice documents no rate limit: none is applied unless the bot configures one."""
    bot = settings("http://127.0.0.1:9")
    transport = AiohttpTransport()  # never used: rate_scopes does no I/O
    ctx = BackendContext(transport=transport, timeout_s=1.0, tokens=TokenPool(transport))
    assert build(bot, ctx).rate_scopes(send()) == ()
    limited = dataclasses.replace(
        bot,
        limits=LimitOverrides(destination=(WindowSetting(20, 60.0),), app=(WindowSetting(5, 1.0),)),
    )
    group, robot = build(limited, ctx).rate_scopes(send())
    assert group.kind == "destination" and [(w.limit, w.seconds) for w in group.windows] == [
        (20, 60.0)
    ]
    assert robot.kind == "app" and [(w.limit, w.seconds) for w in robot.windows] == [(5, 1.0)]


# --------------------------------------------------------------------------- Unavailable


async def test_server_error_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    mind = backend(transport, settings(sim.base_url))
    sim.faults.error_ratio = 1.0
    with pytest.raises(Unavailable) as caught:
        await mind.send(send())
    assert caught.value.http_status == 500 and caught.value.platform_code == 500
    assert caught.value.retryable and sim.accepted == []


async def test_timeout_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    mind = backend(transport, settings(sim.base_url), timeout_s=0.2)
    sim.faults.timeout_ratio = 1.0
    sim.faults.hang_s = 5.0
    with pytest.raises(Unavailable) as caught:
        await mind.send(send())
    assert caught.value.code == "timeout"


async def test_configured_retry_codes_make_a_mindoffice_code_retryable() -> None:
    """MindOffice documents no error codes: operators can mark one as passing."""

    def handler(request: HttpRequest) -> Response:
        return Response(200, {}, orjson.dumps({"code": 503001, "msg": "busy"}))

    transport = MockTransport(handler)
    ctx = BackendContext(transport=transport, timeout_s=1.0, tokens=TokenPool(transport))
    base = {
        "name": "m", "backend": "mindoffice_group", "app_id": "robot_1",
        "credentials": {"app_secret": {"env": "T_MO_RETRY_SECRET"}},
    }  # fmt: skip
    env = {"T_MO_RETRY_SECRET": "mo-retry-secret-1"}
    final = build(from_mapping({"bots": {"m": base}}, env=env).bots["m"], ctx)
    retried = build(
        from_mapping({"bots": {"m": {**base, "retry_codes": [503001]}}}, env=env).bots["m"], ctx
    )
    request = from_dict(
        {"version": 1, "request_id": "r", "backend": "mindoffice_group", "bot": "m",
         "target": {"group_id": "g"}, "msg_type": "text", "content": {"text": "x"}}
    )  # fmt: skip
    with pytest.raises(Rejected):
        await final.send(request)
    with pytest.raises(Unavailable):
        await retried.send(request)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"code": 200, "data": {"message_id": 42}}, "42"),
        (200, {"code": "200", "data": {}}, None),
        (200, {"code": 40001, "msg": "group not found"}, Rejected),
        (400, {"code": 200}, Rejected),  # a 200 code does not make an HTTP error a success
        (429, {"code": 42900}, Throttled),
        (502, {"code": 200}, Unavailable),
        (200, None, Unavailable),  # a proxy's HTML page, not MindOffice
        (200, {"code": 503001, "msg": "busy"}, Rejected),  # final unless configured
    ],
)
def test_classify_reads_status_then_code(status: int, body: Any, expected: Any) -> None:
    raw = b"<html>bad gateway</html>" if body is None else orjson.dumps(body)
    response = Response(status, {}, raw)
    if isinstance(expected, type):
        with pytest.raises(expected) as caught:
            classify(response)
        assert caught.value.http_status == status
    else:
        assert classify(response) == Delivery(message_id=expected, platform_code=200)


def test_classify_retries_only_the_codes_an_operator_lists() -> None:
    busy = Response(200, {}, orjson.dumps({"code": 503001, "msg": "busy"}))
    with pytest.raises(Unavailable) as caught:
        classify(busy, retry_codes=frozenset({503001}))
    assert (caught.value.platform_code, caught.value.platform_msg) == (503001, "busy")


async def test_send_puts_the_idempotency_key_in_x_request_id() -> None:
    """What goes on the wire, read from the :class:`MockTransport`'s requests."""
    transport = MockTransport(
        lambda request: Response(200, {}, orjson.dumps({"code": 200, "data": {"message_id": 7}}))
    )
    ctx = BackendContext(transport=transport, timeout_s=1.0, tokens=TokenPool(transport))
    mind = build(settings("http://mind.invalid"), ctx)
    delivery = await mind.send(send())
    (sent,) = transport.requests
    assert delivery.message_id == "7"
    assert sent.headers["x-request-id"] == send().idempotency_key
    assert sent.headers["app-id"] == ROBOT and sent.headers["app-secret"] == ROBOT_SECRET
    assert sent.url == "http://mind.invalid" + PATH
    assert orjson.loads(sent.body)["group_id"] == send().target["group_id"]
