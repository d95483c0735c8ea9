"""The Feishu/Lark IM adapter (send, reply, update) against the simulator, over real HTTP.

The adapter is built as the worker builds it and called directly for the answers and
their classification; the token-expiry cases run through :class:`Pipeline`, which owns
the one immediate retry after a refused token.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from cardq.backends import BackendContext, build
from cardq.backends.base import Backend
from cardq.backends.feishu_message import platform_uuid
from cardq.backends.tokens import TokenPool
from cardq.backends.transport import AiohttpTransport
from cardq.config import (
    BotSettings,
    LimitOverrides,
)
from cardq.errors import AuthExpired, CredentialsRefused, Rejected, Throttled, Unavailable
from cardq.models import SendRequest, Status
from cardq.simulator import Simulator, SimulatorConfig
from cardq.testing import FakeClock, build_pipeline, job
from cardq.validation import ValidationError, from_dict
from tests import helpers

APP_ID = "cli_im_test"
APP_SECRET = "im-app-secret-61c0de"
CHAT = "oc_5ad573a6411d72b8305fda3a9c1abcef"
SHARED_CARD: dict[str, Any] = {
    "config": {"update_multi": True},
    "header": {"title": {"tag": "plain_text", "content": "Deploy"}, "template": "blue"},
    "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": "**running**"}}],
}


ENV = {"T_IM_APP_SECRET": APP_SECRET, "T_IM_WRONG_SECRET": "not-the-app-secret"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(), clock=clock) as simulator:
        simulator.add_app(APP_ID, APP_SECRET)
        yield simulator


def settings(base_url: str, secret_env: str = "T_IM_APP_SECRET", **kw: Any) -> BotSettings:
    return BotSettings(
        name="app",
        backend="feishu_message",
        base_url=base_url,
        app_id=APP_ID,
        credentials={"app_secret": helpers.credential(secret_env, ENV)},
        **kw,
    )


def backend(
    transport: AiohttpTransport,
    bot: BotSettings,
    *,
    tokens: TokenPool | None = None,
    timeout_s: float = 2.0,
) -> Backend:
    pool = tokens if tokens is not None else TokenPool(transport)
    return build(bot, BackendContext(transport=transport, timeout_s=timeout_s, tokens=pool))


def send(
    rid: str = "r1",
    chat: str = CHAT,
    msg_type: str = "text",
    content: Any = None,
    **extra: Any,
) -> SendRequest:
    return from_dict(
        {
            "version": 1,
            "request_id": rid,
            "backend": "feishu_message",
            "bot": "app",
            "target": {"receive_id_type": "chat_id", "receive_id": chat},
            "msg_type": msg_type,
            "content": {"text": f"hello {rid}"} if content is None else content,
            **extra,
        }
    )


def follow_up(rid: str, operation: str, message_id: str, **fields: Any) -> SendRequest:
    target: dict[str, Any] = {"message_id": message_id}
    if "reply_in_thread" in fields:
        target["reply_in_thread"] = fields.pop("reply_in_thread")
    return from_dict(
        {
            "version": 1,
            "request_id": rid,
            "backend": "feishu_message",
            "bot": "app",
            "operation": operation,
            "target": target,
            **fields,
        }
    )


# --------------------------------------------------------------------------- success


async def test_send_returns_the_platform_message_id(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    app = backend(transport, settings(sim.base_url))
    delivery = await app.send(send("r1"))
    (accepted,) = sim.accepted
    assert delivery.message_id is not None and delivery.message_id.startswith("om_")
    assert delivery.message_id == accepted.message_id and delivery.platform_code == 0
    assert accepted.destination == f"chat_id:{CHAT}" and accepted.sender == APP_ID
    body = accepted.body
    assert isinstance(body["content"], str)  # the documented JSON-encoded string
    assert orjson.loads(body["content"]) == {"text": "hello r1"}
    assert body["uuid"] == "r1" and body["receive_id"] == CHAT and body["msg_type"] == "text"
    assert sim.stats.token_requests[APP_ID] == 1


async def test_reply_and_update_a_shared_card(sim: Simulator, transport: AiohttpTransport) -> None:
    app = backend(transport, settings(sim.base_url))
    card = await app.send(send("card", msg_type="interactive", content=SHARED_CARD))
    assert card.message_id is not None
    reply = await app.send(
        follow_up(
            "reply",
            "reply",
            card.message_id,
            reply_in_thread=True,
            msg_type="text",
            content={"text": "done"},
        )
    )
    assert reply.message_id is not None and reply.message_id != card.message_id
    updated_card = {**SHARED_CARD, "header": {**SHARED_CARD["header"], "template": "green"}}
    update = await app.send(
        follow_up("update", "update", card.message_id, msg_type="interactive", content=updated_card)
    )
    assert update.message_id == card.message_id  # an update keeps the message id
    ops = [(a.operation, a.destination) for a in sim.accepted]
    assert ops == [
        ("send", f"chat_id:{CHAT}"),
        ("reply", f"message:{card.message_id}"),
        ("update", f"message:{card.message_id}"),
    ]
    assert sim.accepted[1].body["reply_in_thread"] is True
    assert sim.accepted[1].body["uuid"] == "reply"
    assert set(sim.accepted[2].body) == {"content"}
    assert orjson.loads(sim.accepted[2].body["content"]) == updated_card
    assert sim.stats.token_requests[APP_ID] == 1


async def test_uuid_makes_the_platform_drop_a_resend_after_a_lost_answer(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    app = backend(transport, settings(sim.base_url))
    key = "k" * 80  # longer than the platform's 50: sent as a stable digest
    request = send("r1", idempotency_key=key)
    sim.faults.ack_loss_ratio = 1.0  # delivered, then HTTP 500
    with pytest.raises(Unavailable):
        await app.send(request)
    sim.faults.ack_loss_ratio = 0.0
    delivery = await app.send(request)
    (accepted,) = sim.accepted
    assert delivery.message_id == accepted.message_id
    assert accepted.body["uuid"] == platform_uuid(key) and len(platform_uuid(key)) <= 50
    assert sim.stats.duplicates["feishu_message"] == 1


# --------------------------------------------------------------------------- Rejected


async def test_refused_card_is_rejected(sim: Simulator, transport: AiohttpTransport) -> None:
    app = backend(transport, settings(sim.base_url))
    valid = send(msg_type="interactive", content=SHARED_CARD)
    with pytest.raises(Rejected) as caught:  # a 1.0 card with no elements, past validation
        await app.send(dataclasses.replace(valid, content={"header": SHARED_CARD["header"]}))
    error = caught.value
    assert (error.platform_code, error.http_status) == (230099, 400)
    assert not error.retryable and error.platform_msg


@pytest.mark.parametrize(
    ("card", "code"),
    [(None, 230110), ({"elements": []}, 230099)],
    ids=["unknown-message-230110", "not-shared-230099"],
)
async def test_update_refusals_are_rejected(
    sim: Simulator, transport: AiohttpTransport, card: Any, code: int
) -> None:
    app = backend(transport, settings(sim.base_url))
    message_id = "om_unknown"
    if card is not None:
        sent = await app.send(send("private", msg_type="interactive", content=card))
        assert sent.message_id is not None
        message_id = sent.message_id
    update = follow_up("u", "update", message_id, msg_type="interactive", content=SHARED_CARD)
    with pytest.raises(Rejected) as caught:
        await app.send(update)
    assert caught.value.platform_code == code


async def test_wrong_app_secret_is_refused_by_the_token_endpoint(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    app = backend(transport, settings(sim.base_url, secret_env="T_IM_WRONG_SECRET"))
    with pytest.raises(CredentialsRefused) as caught:
        await app.send(send())
    assert caught.value.code == "credentials_refused" and caught.value.platform_code == 10014
    assert not caught.value.retryable and caught.value.kind.value == "auth"
    assert APP_SECRET not in str(caught.value) and sim.accepted == []


# --------------------------------------------------------------------------- Throttled


async def test_chat_limit_is_throttled_for_the_destination(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    app = backend(transport, settings(sim.base_url))
    for i in range(5):  # 5 QPS per chat
        await app.send(send(f"r{i}"))
    with pytest.raises(Throttled) as caught:
        await app.send(send("r5"))
    error = caught.value
    assert (error.platform_code, error.http_status) == (230020, 400)
    assert error.scope == "destination" and error.retry_after is None
    await app.send(send("other", chat="oc_other"))  # another chat is not held back


async def test_app_limit_carries_the_reset_header_into_retry_after(
    sim: Simulator, transport: AiohttpTransport, clock: FakeClock
) -> None:
    sim.config.app_limits = ((2, 1.0),)
    app = backend(transport, settings(sim.base_url))
    await app.send(send("a", chat="oc_a"))
    clock.advance(0.4)
    await app.send(send("b", chat="oc_b"))
    with pytest.raises(Throttled) as caught:
        await app.send(send("c", chat="oc_c"))
    error = caught.value
    assert (error.platform_code, error.http_status) == (99991400, 429)
    assert error.scope == "app"
    assert error.retry_after == 1.0  # x-ogw-ratelimit-reset: whole seconds, rounded up


async def test_gateway_throttle_reset_seconds_are_read_exactly(
    sim: Simulator, transport: AiohttpTransport, clock: FakeClock
) -> None:
    app = backend(transport, settings(sim.base_url))
    sim.faults.throttle_for(2.5)  # the gateway's answer with x-ogw-ratelimit-reset: 3
    with pytest.raises(Throttled) as caught:
        await app.send(send())
    assert caught.value.retry_after == 3.0 and caught.value.scope == "app"
    sim.config.time_scale = 0.01  # scaled windows: the header carries fractional seconds
    sim.faults.throttle_for(0.25)
    with pytest.raises(Throttled) as caught:
        await app.send(send())
    assert caught.value.retry_after == 0.25


# --------------------------------------------------------------------------- Unavailable


async def test_server_error_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    app = backend(transport, settings(sim.base_url))
    sim.faults.error_ratio = 1.0
    with pytest.raises(Unavailable) as caught:
        await app.send(send())
    assert (caught.value.platform_code, caught.value.http_status) == (5000, 500)
    assert sim.accepted == []


async def test_timeout_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    app = backend(transport, settings(sim.base_url), timeout_s=0.2)
    sim.faults.timeout_ratio = 1.0
    sim.faults.hang_s = 5.0
    with pytest.raises(Unavailable) as caught:
        await app.send(send())
    assert caught.value.code == "timeout"


# --------------------------------------------------------------------------- AuthExpired


async def test_revoked_token_is_auth_expired_and_dropped(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    app = backend(transport, settings(sim.base_url))
    await app.send(send("r1"))
    sim.faults.revoke_tokens()
    with pytest.raises(AuthExpired) as caught:
        await app.send(send("r2", chat="oc_2"))
    assert (caught.value.platform_code, caught.value.http_status) == (99991663, 400)
    await app.send(send("r2", chat="oc_2"))  # the refused token was dropped: a new one
    assert sim.stats.token_requests[APP_ID] == 2
    assert [a.idempotency for a in sim.accepted] == ["r1", "r2"]


async def test_token_expiry_mid_run_refreshes_once_and_loses_nothing(
    sim: Simulator, transport: AiohttpTransport, clock: FakeClock
) -> None:
    """The platform expires the token while the worker still trusts it: every send of a
    burst is refused, one new token is fetched, each message is delivered exactly once."""
    pipeline = build_pipeline({"app": backend(transport, settings(sim.base_url))})
    first = await pipeline.run(job(send("before")))
    assert first is not None and first.status is Status.DELIVERED and first.attempts == 1
    clock.advance(7201)  # past the 2 h lifetime on the platform's clock only
    ids = [f"after-{i}" for i in range(20)]
    results = await asyncio.gather(
        *(pipeline.run(job(send(rid, chat=f"oc_{i}"), i + 1)) for i, rid in enumerate(ids))
    )
    assert all(r is not None and r.status is Status.DELIVERED for r in results)
    assert all(r is not None and r.attempts == 2 for r in results)  # refused once, then sent
    assert sim.stats.token_requests[APP_ID] == 2  # exactly one refresh for the whole burst
    assert sim.stats.rejected[99991663] == 20
    assert sim.accepted_by_idempotency() == {rid: 1 for rid in ["before", *ids]}
    by_key = {a.idempotency: a.message_id for a in sim.accepted}
    assert all(r is not None and r.message_id == by_key[r.request_id] for r in results)


async def test_revoked_token_through_the_pipeline_one_refresh(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    pipeline = build_pipeline({"app": backend(transport, settings(sim.base_url))})
    await pipeline.run(job(send("r1")))
    sim.faults.revoke_tokens()
    result = await pipeline.run(job(send("r2", chat="oc_2"), 1))
    assert result is not None and result.status is Status.DELIVERED and result.attempts == 2
    assert sim.stats.token_requests[APP_ID] == 2
    assert sim.accepted_by_idempotency() == {"r1": 1, "r2": 1}


# --------------------------------------------------------------------------- one token


async def test_burst_of_500_sends_makes_exactly_one_token_request(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    sim.config.enforce_limits = False
    # 500 answers at once take more than the usual 2 s on a loaded machine; the timeout is
    # not what this test is about (it failed one run in three at a load of 10 on 2 cores)
    app = backend(transport, settings(sim.base_url), timeout_s=15.0)
    deliveries = await asyncio.gather(
        *(app.send(send(f"b{i}", chat=f"oc_{i % 50}")) for i in range(500))
    )
    assert sim.stats.token_requests[APP_ID] == 1
    ids = {d.message_id for d in deliveries}
    assert len(ids) == 500 and None not in ids
    assert sim.stats.accepted["feishu_message"] == 500


async def test_bots_of_one_app_share_its_token_and_budget(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    pool = TokenPool(transport)
    im = backend(transport, settings(sim.base_url), tokens=pool)
    eph_settings = dataclasses.replace(
        settings(sim.base_url), name="eph", backend="feishu_ephemeral"
    )
    eph = backend(transport, eph_settings, tokens=pool)
    await im.send(send())
    ephemeral = from_dict(
        {
            "version": 1,
            "request_id": "e1",
            "backend": "feishu_ephemeral",
            "bot": "eph",
            "target": {"chat_id": CHAT, "open_id": "ou_1"},
            "msg_type": "interactive",
            "content": SHARED_CARD,
        }
    )
    await eph.send(ephemeral)
    assert sim.stats.token_requests[APP_ID] == 1
    app_scope_im = im.rate_scopes(send())[-1]
    app_scope_eph = eph.rate_scopes(ephemeral)[-1]
    assert app_scope_im == app_scope_eph and app_scope_im.kind == "app"
    assert [(w.limit, w.seconds) for w in app_scope_im.windows] == [(50, 1.0), (1000, 60.0)]


async def test_limits_are_configurable(sim: Simulator, transport: AiohttpTransport) -> None:
    from cardq.config import WindowSetting

    limits = LimitOverrides(destination=(WindowSetting(2, 1.0),), app=(WindowSetting(10, 1.0),))
    app = backend(transport, settings(sim.base_url, limits=limits))
    chat, whole_app = app.rate_scopes(send())
    assert chat.kind == "destination" and [(w.limit, w.seconds) for w in chat.windows] == [(2, 1.0)]
    assert [(w.limit, w.seconds) for w in whole_app.windows] == [(10, 1.0)]
    # the chat budget is shared by every bot in the chat, whichever app it belongs to
    other = dataclasses.replace(settings(sim.base_url), name="other", app_id="cli_other")
    assert backend(transport, other).rate_scopes(send())[0].key == chat.key


def table_card(tables: int) -> dict[str, Any]:
    table = {
        "tag": "table",
        "columns": [{"name": "host", "display_name": "Host", "data_type": "text"}],
        "rows": [{"host": "api-7"}],
    }
    return {"schema": "2.0", "body": {"elements": [dict(table) for _ in range(tables)]}}


async def test_at_most_five_tables_per_card(sim: Simulator, transport: AiohttpTransport) -> None:
    """backend-facts §5: a card holds at most 5 tables. Validation says so before a send;
    the platform refuses the sixth table with 230099 if such a card gets through."""
    app = backend(transport, settings(sim.base_url))
    await app.send(send("five", msg_type="interactive", content=table_card(5)))
    with pytest.raises(ValidationError) as invalid:
        send("six", msg_type="interactive", content=table_card(6))
    assert (invalid.value.field, invalid.value.code) == ("content", "card_too_many_tables")
    valid = send("six", msg_type="interactive", content=table_card(1))
    with pytest.raises(Rejected) as caught:
        await app.send(dataclasses.replace(valid, content=table_card(6)))
    assert caught.value.platform_code == 230099
    assert [a.idempotency for a in sim.accepted] == ["five"]
