"""The Feishu/Lark ephemeral card adapter (send, delete) against the simulator, over real HTTP.

Called directly for the answers and their classification; the token-expiry case runs
through :class:`Pipeline`, which owns the one immediate retry after a refused token.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cardq.backends import BackendContext, build
from cardq.backends.base import Backend
from cardq.backends.feishu_ephemeral import FeishuEphemeral
from cardq.backends.tokens import TokenPool
from cardq.backends.transport import AiohttpTransport
from cardq.config import BotSettings
from cardq.errors import AuthExpired, Rejected, Throttled, Unavailable
from cardq.models import SendRequest, Status
from cardq.simulator import Simulator, SimulatorConfig
from cardq.testing import build_pipeline, job
from cardq.validation import from_dict
from tests import helpers

APP_ID = "cli_eph_test"
APP_SECRET = "eph-app-secret-9d41aa"
CHAT = "oc_20aa1ed9b18ba49f73f5773453aabcef"
USER = "ou_b9600a00cda86b8fad2378eafe3abcef"
CARD_V2 = {
    "schema": "2.0",
    "config": {"update_multi": True},
    "body": {"elements": [{"tag": "markdown", "content": "only **you** can see this"}]},
}
TEMPLATE = {"type": "template", "data": {"template_id": "AAqigYkzabcef"}}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig()) as simulator:
        simulator.add_app(APP_ID, APP_SECRET)
        yield simulator


def backend(transport: AiohttpTransport, base_url: str, timeout_s: float = 2.0) -> Backend:
    bot = BotSettings(
        name="eph",
        backend="feishu_ephemeral",
        base_url=base_url,
        app_id=APP_ID,
        credentials={"app_secret": helpers.credential("T", {"T": APP_SECRET})},
    )
    ctx = BackendContext(transport=transport, timeout_s=timeout_s, tokens=TokenPool(transport))
    return build(bot, ctx)


def send(rid: str = "r1", chat: str = CHAT, card: Any = None, **user: str) -> SendRequest:
    return from_dict(
        {
            "version": 1,
            "request_id": rid,
            "backend": "feishu_ephemeral",
            "bot": "eph",
            "target": {"chat_id": chat, **(user or {"open_id": USER})},
            "msg_type": "interactive",
            "content": CARD_V2 if card is None else card,
        }
    )


def delete(message_id: str, rid: str = "d1") -> SendRequest:
    return from_dict(
        {
            "version": 1,
            "request_id": rid,
            "backend": "feishu_ephemeral",
            "bot": "eph",
            "operation": "delete",
            "target": {"message_id": message_id},
        }
    )


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("card", [CARD_V2, TEMPLATE], ids=["card-v2", "template"])
async def test_send_returns_the_message_id_and_sends_the_card_as_an_object(
    sim: Simulator, transport: AiohttpTransport, card: dict[str, Any]
) -> None:
    eph = backend(transport, sim.base_url)
    delivery = await eph.send(send(card=card))
    (accepted,) = sim.accepted
    assert delivery.message_id is not None and delivery.message_id.startswith("om_")
    assert delivery.message_id == accepted.message_id
    assert accepted.destination == f"chat:{CHAT}"
    assert accepted.body == {
        "chat_id": CHAT,
        "open_id": USER,
        "msg_type": "interactive",
        "card": card,  # an object, not a string
    }


async def test_every_user_field_given_is_passed_for_the_platform_to_choose(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    eph = backend(transport, sim.base_url)
    request = send(open_id=USER, user_id="u_1", email="a@example.com")
    assert FeishuEphemeral.destination_target(request) == f"chat:{CHAT}/open_id:{USER}"
    await eph.send(request)
    body = sim.accepted[0].body
    assert (body["open_id"], body["user_id"], body["email"]) == (USER, "u_1", "a@example.com")


async def test_delete_then_delete_again_counts_as_success(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    eph = backend(transport, sim.base_url)
    sent = await eph.send(send())
    assert sent.message_id is not None
    deleted = await eph.send(delete(sent.message_id))
    assert deleted.message_id == sent.message_id and deleted.platform_code == 0
    assert sim.ephemeral == {}
    again = await eph.send(delete(sent.message_id, "d2"))  # 18051: already deleted
    assert again.message_id == sent.message_id and again.platform_code == 18051
    assert [a.operation for a in sim.accepted] == ["send", "delete"]


# --------------------------------------------------------------------------- Rejected


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"content": {"header": {"template": "blue"}}}, 230099),  # a 1.0 card with no elements
        ({"content": {"type": "template", "data": {}}}, 230099),  # template without an id
        ({"target": {"chat_id": CHAT}}, 230001),  # no user to show it to
    ],
    ids=["card-230099", "template-230099", "no-user-230001"],
)
async def test_platform_refusals_are_rejected(
    sim: Simulator, transport: AiohttpTransport, change: dict[str, Any], code: int
) -> None:
    eph = backend(transport, sim.base_url)
    # Bypass our own validation: these are what the platform refuses if they get through.
    bad = dataclasses.replace(send(), **change)
    with pytest.raises(Rejected) as caught:
        await eph.send(bad)
    assert (caught.value.platform_code, caught.value.http_status) == (code, 400)
    assert not caught.value.retryable and sim.accepted == []


# --------------------------------------------------------------------------- Throttled


async def test_group_limit_is_throttled_for_the_destination(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    sim.config.ephemeral_group_limits = ((3, 1.0),)
    eph = backend(transport, sim.base_url)
    for i in range(3):
        await eph.send(send(f"r{i}"))
    with pytest.raises(Throttled) as caught:
        await eph.send(send("r3"))
    error = caught.value
    assert (error.platform_code, error.http_status) == (230020, 400)
    assert error.scope == "destination" and error.retry_after is None
    await eph.send(send("other", chat="oc_other"))  # another group is not held back


async def test_app_throttle_carries_the_reset_header_into_retry_after(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    eph = backend(transport, sim.base_url)
    sim.faults.throttle_for(1.5)  # the gateway's answer: x-ogw-ratelimit-reset: 2
    with pytest.raises(Throttled) as caught:
        await eph.send(send())
    error = caught.value
    assert (error.platform_code, error.http_status) == (99991400, 429)
    assert error.scope == "app" and error.retry_after == 2.0


async def test_default_limits_are_the_documented_ones(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    eph = backend(transport, sim.base_url)
    group, app = eph.rate_scopes(send())
    assert [(w.limit, w.seconds) for w in group.windows] == [(40, 1.0)]
    assert [(w.limit, w.seconds) for w in app.windows] == [(50, 1.0), (1000, 60.0)]


# --------------------------------------------------------------------------- Unavailable


async def test_server_error_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    eph = backend(transport, sim.base_url)
    sim.faults.error_ratio = 1.0
    with pytest.raises(Unavailable) as caught:
        await eph.send(send())
    assert (caught.value.platform_code, caught.value.http_status) == (5000, 500)


async def test_timeout_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    eph = backend(transport, sim.base_url, timeout_s=0.2)
    sim.faults.timeout_ratio = 1.0
    sim.faults.hang_s = 5.0
    with pytest.raises(Unavailable) as caught:
        await eph.send(delete("om_1"))
    assert caught.value.code == "timeout"


# --------------------------------------------------------------------------- AuthExpired


async def test_revoked_token_is_auth_expired(sim: Simulator, transport: AiohttpTransport) -> None:
    eph = backend(transport, sim.base_url)
    await eph.send(send("r1"))
    sim.faults.revoke_tokens()
    with pytest.raises(AuthExpired) as caught:
        await eph.send(send("r2"))
    assert caught.value.platform_code == 99991663
    await eph.send(send("r2"))
    assert sim.stats.token_requests[APP_ID] == 2


async def test_token_revoked_mid_run_refreshes_once_and_loses_nothing(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    pipeline = build_pipeline({"eph": backend(transport, sim.base_url)})
    first = await pipeline.run(job(send("before"), 0))
    assert first is not None and first.status is Status.DELIVERED
    sim.faults.revoke_tokens()
    results = await asyncio.gather(
        *(pipeline.run(job(send(f"after-{i}", chat=f"oc_{i}"), i + 1)) for i in range(10))
    )
    assert all(r is not None and r.status is Status.DELIVERED and r.attempts == 2 for r in results)
    assert sim.stats.token_requests[APP_ID] == 2  # one refresh for all ten
    assert len(sim.accepted) == 11  # every card shown once
    assert {r.message_id for r in results if r is not None} == {
        a.message_id for a in sim.accepted[1:]
    }
