"""The Feishu/Lark custom bot webhook adapter against the simulator, over real HTTP.

The adapter is built as the worker builds it (``cardq.backends.build``) and called
directly; each test asserts the error class the pipeline will act on, the platform's code
and ``retry_after``. The webhook has no token (so no ``AuthExpired``), returns no message
id and has no idempotency key.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cardq.backends import BackendContext, build
from cardq.backends.base import Backend
from cardq.backends.feishu_webhook import FeishuWebhook, sign
from cardq.backends.tokens import TokenPool
from cardq.backends.transport import AiohttpTransport
from cardq.config import BotSettings
from cardq.errors import Rejected, Throttled, Unavailable
from cardq.models import SendRequest, Status
from cardq.simulator import Simulator, SimulatorConfig
from cardq.testing import FakeClock, build_pipeline, job
from cardq.validation import from_dict
from tests import helpers

TOKEN = "wh-token-4c1d9e"
SECRET = "wh-secret-a0b7f3"
PLAIN = "wh-plain-77e2c1"
KEYWORDED = "wh-keyword-3f9a05"
ENV = {
    "T_WH_TOKEN": TOKEN,
    "T_WH_SECRET": SECRET,
    "T_WH_PLAIN": PLAIN,
    "T_WH_KEYWORDED": KEYWORDED,
    "T_WH_UNKNOWN": "wh-unknown-000000",
    "T_WH_WRONG_SECRET": "wh-secret-wrong-1",
}
CARD = {
    "config": {"wide_screen_mode": True},
    "header": {"title": {"tag": "plain_text", "content": "Deploy"}, "template": "blue"},
    "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": "**done**"}}],
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig()) as simulator:
        simulator.add_webhook(TOKEN, SECRET)
        simulator.add_webhook(PLAIN)
        simulator.add_webhook(KEYWORDED, keywords=["deploy"])
        yield simulator


def settings(
    base_url: str, token: str = "T_WH_TOKEN", secret: str | None = "T_WH_SECRET", **kw: Any
) -> BotSettings:
    credentials = {"token": helpers.credential(token, ENV)}
    if secret is not None:
        credentials["secret"] = helpers.credential(secret, ENV)
    return BotSettings(
        name="hook",
        backend="feishu_webhook",
        base_url=base_url,
        credentials=credentials,
        **kw,
    )


def backend(transport: AiohttpTransport, bot: BotSettings, timeout_s: float = 2.0) -> Backend:
    ctx = BackendContext(transport=transport, timeout_s=timeout_s, tokens=TokenPool(transport))
    return build(bot, ctx)


def request(rid: str = "r1", msg_type: str = "text", content: Any = None) -> SendRequest:
    return from_dict(
        {
            "version": 1,
            "request_id": rid,
            "backend": "feishu_webhook",
            "bot": "hook",
            "msg_type": msg_type,
            "content": {"text": "deploy done"} if content is None else content,
        }
    )


# --------------------------------------------------------------------------- success


async def test_signed_text_is_accepted_and_has_no_message_id(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    hook = backend(transport, settings(sim.base_url))
    delivery = await hook.send(request())
    assert delivery.message_id is None and delivery.platform_code == 0
    (accepted,) = sim.accepted
    assert accepted.destination == f"webhook:{TOKEN}"
    body = accepted.body
    assert body["msg_type"] == "text" and body["content"] == {"text": "deploy done"}
    # the documented signature: HMAC keyed by "{timestamp}\n{secret}" over an empty message
    assert isinstance(body["timestamp"], str) and abs(int(body["timestamp"]) - time.time()) < 60
    assert body["sign"] == sign(SECRET, int(body["timestamp"]))


async def test_card_goes_in_top_level_card_object(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    hook = backend(transport, settings(sim.base_url, token="T_WH_PLAIN", secret=None))
    delivery = await hook.send(request(msg_type="interactive", content=CARD))
    assert delivery.message_id is None
    (accepted,) = sim.accepted
    assert accepted.body == {"msg_type": "interactive", "card": CARD}  # unsigned: no extras
    assert accepted.content_decoded == CARD


# --------------------------------------------------------------------------- Rejected


async def test_signature_mismatch_is_rejected_with_19021(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    hook = backend(transport, settings(sim.base_url, secret="T_WH_WRONG_SECRET"))
    with pytest.raises(Rejected) as caught:
        await hook.send(request())
    error = caught.value
    assert error.platform_code == 19021 and error.http_status == 200
    assert not error.retryable and sim.accepted == []


async def test_timestamp_outside_the_hour_is_rejected_with_19021(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    ctx = BackendContext(transport=transport, timeout_s=2.0, tokens=TokenPool(transport))
    skewed = FeishuWebhook(settings(sim.base_url), ctx, clock=lambda: time.time() - 3700)
    with pytest.raises(Rejected) as caught:
        await skewed.send(request())
    assert caught.value.platform_code == 19021


async def test_unsigned_send_to_a_signed_bot_is_rejected(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    hook = backend(transport, settings(sim.base_url, secret=None))
    with pytest.raises(Rejected) as caught:
        await hook.send(request())
    assert caught.value.platform_code == 19021


@pytest.mark.parametrize(
    ("token", "msg_type", "content", "code", "status"),
    [
        ("T_WH_UNKNOWN", "text", None, 19001, 200),  # invalid webhook token
        ("T_WH_KEYWORDED", "text", {"text": "no key word here"}, 19024, 200),
        ("T_WH_PLAIN", "image", {"image_key": None}, 19002, 200),  # bad content
        ("T_WH_PLAIN", "text", {"text": "x" * 21_000}, 9499, 400),  # body over 20 KB
    ],
    ids=["19001-token", "19024-keyword", "19002-format", "9499-bad-request"],
)
async def test_platform_refusals_are_rejected(
    sim: Simulator,
    transport: AiohttpTransport,
    token: str,
    msg_type: str,
    content: Any,
    code: int,
    status: int,
) -> None:
    hook = backend(transport, settings(sim.base_url, token=token, secret=None))
    valid = request()
    # Bypass our own validation: these are what the platform refuses if they get through.
    bad = dataclasses.replace(valid, msg_type=msg_type, content=content or valid.content)
    with pytest.raises(Rejected) as caught:
        await hook.send(bad)
    error = caught.value
    assert (error.platform_code, error.http_status) == (code, status)
    assert not error.retryable
    assert ENV[token] not in str(error) and ENV[token] not in (error.platform_msg or "")
    assert sim.accepted == []


# --------------------------------------------------------------------------- Throttled


@pytest.mark.parametrize(("answer", "code", "status"), [("11232", 11232, 200), ("9499", 9499, 400)])
async def test_rate_limit_answer_is_throttled_whatever_the_http_status(
    sim: Simulator, transport: AiohttpTransport, answer: Any, code: int, status: int
) -> None:
    sim.config.webhook_throttle_answer = answer
    hook = backend(transport, settings(sim.base_url))
    for i in range(5):  # the documented 5 per second
        await hook.send(request(f"r{i}"))
    with pytest.raises(Throttled) as caught:
        await hook.send(request("r5"))
    error = caught.value
    assert (error.platform_code, error.http_status) == (code, status)
    assert error.retryable and error.scope == "destination"
    # The webhook sends no x-ogw-ratelimit-reset: the pipeline falls back to its backoff.
    assert error.retry_after is None
    assert len(sim.accepted) == 5


async def test_default_limits_are_the_documented_ones(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    hook = backend(transport, settings(sim.base_url))
    (scope,) = hook.rate_scopes(request())
    assert scope.kind == "bot" and [(w.limit, w.seconds) for w in scope.windows] == [
        (5, 1.0),
        (100, 60.0),
    ]


# --------------------------------------------------------------------------- Unavailable


async def test_server_error_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    sim.faults.error_ratio = 1.0
    hook = backend(transport, settings(sim.base_url))
    with pytest.raises(Unavailable) as caught:
        await hook.send(request())
    assert caught.value.http_status == 500 and caught.value.platform_code == 5000
    assert caught.value.retryable


async def test_timeout_is_unavailable(sim: Simulator, transport: AiohttpTransport) -> None:
    sim.faults.timeout_ratio = 1.0
    sim.faults.hang_s = 5.0
    hook = backend(transport, settings(sim.base_url), timeout_s=0.2)
    with pytest.raises(Unavailable) as caught:
        await hook.send(request())
    assert caught.value.code == "timeout"
    assert sim.accepted == []


async def test_connection_error_is_unavailable_and_hides_the_url(
    transport: AiohttpTransport,
) -> None:
    async with Simulator() as gone:
        url = gone.base_url
    hook = backend(transport, settings(url))
    with pytest.raises(Unavailable) as caught:
        await hook.send(request())
    assert caught.value.code == "connection_error"
    assert TOKEN not in caught.value.message and url not in caught.value.message


async def test_lost_answer_then_resend_delivers_twice_no_idempotency_key(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    """The webhook has no idempotency key: a resend after a lost answer is a second message.
    (The worker's own store prevents this for requests it recorded; see docs/backends.md.)"""
    hook = backend(transport, settings(sim.base_url))
    sim.faults.ack_loss_ratio = 1.0
    with pytest.raises(Unavailable):
        await hook.send(request())
    sim.faults.ack_loss_ratio = 0.0
    await hook.send(request())
    assert len(sim.accepted) == 2


# --------------------------------------------------------------------------- pipeline


async def test_pipeline_fails_a_signature_mismatch_at_once(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    hook = backend(transport, settings(sim.base_url, secret="T_WH_WRONG_SECRET"))
    pipeline = build_pipeline({"hook": hook})
    result = await pipeline.run(job(request()))
    assert result is not None and result.status is Status.FAILED
    assert result.attempts == 1  # a Rejected answer is never retried
    assert result.error is not None and result.error.platform_code == 19021
    assert SECRET not in result.encode().decode()
    assert sim.stats.rejected[19021] == 1


async def test_a_signature_is_reused_for_30_s_then_renewed(
    sim: Simulator, transport: AiohttpTransport
) -> None:
    """Each new signature is a value the log scrubber keeps for an hour: a busy bot signs
    once per 30 s, not once per second."""
    from cardq import secrets
    from cardq.backends.feishu_webhook import SIGNATURE_REUSE_S

    clock = FakeClock(float(int(time.time())))  # whole seconds: the timestamp is truncated
    ctx = BackendContext(transport=transport, timeout_s=2.0, tokens=TokenPool(transport))
    hook = FeishuWebhook(settings(sim.base_url), ctx, clock=clock)
    for step in (0.0, 10.0, SIGNATURE_REUSE_S - 10.5):
        clock.advance(step)
        await hook.send(request(f"r{step}"))
    clock.advance(1.0)  # 30.5 s after the first signature
    await hook.send(request("renewed"))
    bodies = [a.body for a in sim.accepted]
    assert len({b["sign"] for b in bodies[:3]}) == 1 and len({b["timestamp"] for b in bodies}) == 2
    assert bodies[3]["sign"] != bodies[0]["sign"]
    assert bodies[3]["sign"] == sign(SECRET, int(bodies[3]["timestamp"]))
    assert {b["sign"] for b in bodies} <= secrets.known_secrets()
