"""The per-request state machine with a mock transport (a unit test: the platform is faked)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta

import orjson
import pytest

from worker.backends import BackendContext, build
from worker.backends.tokens import TokenPool
from worker.backends.transport import MockTransport, Response
from worker.config import DeliverySettings, IdempotencySettings, from_mapping
from worker.idempotency import Claim
from worker.idempotency.memory import MemoryStore
from worker.metrics import Metrics
from worker.models import Result, Source, Status, utcnow
from worker.pipeline import Job, Pipeline
from worker.ratelimit import RateLimiter
from worker.scheduler import Scheduler
from worker.validation import from_dict

ENV = {"HOOK_TOKEN": "tok-abcdef", "HOOK_SECRET": "sec-abcdef", "APP_SECRET": "app-secret-1"}


def make_pipeline(handler: MockTransport, **delivery: float) -> tuple[Pipeline, MemoryStore]:
    settings = from_mapping(
        {
            "bots": {
                "hook": {
                    "backend": "feishu_webhook",
                    "base_url": "http://sim",
                    "credentials": {
                        "token": {"env": "HOOK_TOKEN"},
                        "secret": {"env": "HOOK_SECRET"},
                    },
                },
                "app": {
                    "backend": "feishu_message",
                    "base_url": "http://sim",
                    "app_id": "cli_1",
                    "credentials": {"app_secret": {"env": "APP_SECRET"}},
                },
            }
        },
        env=ENV,
    )
    import os

    os.environ.update(ENV)
    ctx = BackendContext(transport=handler, timeout_s=1.0, tokens=TokenPool(handler))
    store = MemoryStore()
    pipeline = Pipeline(
        backends={name: build(bot, ctx) for name, bot in settings.bots.items()},
        limiter=RateLimiter(margin=0.0),
        store=store,
        delivery=DeliverySettings(**{"backoff_base_s": 0.001, "backoff_cap_s": 0.01, **delivery}),  # type: ignore[arg-type]
        idempotency=IdempotencySettings(),
        metrics=Metrics(),
        worker_id="w1",
    )
    return pipeline, store


def job(request: dict[str, object], offset: int = 0) -> Job:
    return Job(
        request=from_dict(request),
        source=Source("t", 0, offset),
        raw=orjson.dumps(request),
        received_at=utcnow(),
    )


def hook_request(rid: str, key: str | None = None) -> dict[str, object]:
    req: dict[str, object] = {
        "version": 1,
        "request_id": rid,
        "backend": "feishu_webhook",
        "bot": "hook",
        "msg_type": "text",
        "content": {"text": "hi"},
    }
    if key:
        req["idempotency_key"] = key
    return req


def answers(*bodies: tuple[int, Mapping[str, object]]) -> MockTransport:
    queue = list(bodies)

    def handler(method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        status, data = queue.pop(0) if len(queue) > 1 else queue[0]
        return Response(status, {}, orjson.dumps(data))

    return MockTransport(handler)


async def test_delivered_then_duplicate_by_key() -> None:
    transport = answers((200, {"code": 0, "msg": "success", "data": {}}))
    pipeline, _ = make_pipeline(transport)
    first = await pipeline.run(job(hook_request("r1", key="k")))
    assert first.status is Status.DELIVERED and first.attempts == 1
    second = await pipeline.run(job(hook_request("r2", key="k")))
    assert second.status is Status.DUPLICATE
    assert second.original_request_id == "r1"
    assert len(transport.calls) == 1  # the duplicate was never sent


async def test_same_record_again_reports_delivered_not_duplicate() -> None:
    transport = answers((200, {"code": 0, "msg": "success", "data": {}}))
    pipeline, _ = make_pipeline(transport)
    await pipeline.run(job(hook_request("r1")))
    again = await pipeline.run(job(hook_request("r1")))
    assert again.status is Status.DELIVERED
    assert len(transport.calls) == 1


async def test_signed_body_and_token_not_in_errors() -> None:
    transport = answers(
        (
            200,
            {
                "code": 19021,
                "msg": "sign match fail or timestamp is not within one hour from current time",
            },
        )
    )
    pipeline, _ = make_pipeline(transport)
    result = await pipeline.run(job(hook_request("r1")))
    assert result.status is Status.FAILED
    assert result.error is not None and result.error.platform_code == 19021
    assert result.attempts == 1  # never retried
    sent = orjson.loads(transport.calls[0][2])
    assert set(sent) == {"msg_type", "content", "timestamp", "sign"}
    assert "tok-abcdef" not in result.encode().decode()


async def test_retry_on_5xx_then_success_counts_attempts() -> None:
    transport = answers(
        (500, {"code": 5000, "msg": "internal"}),
        (503, {"code": 5000, "msg": "internal"}),
        (200, {"code": 0, "msg": "success"}),
    )
    pipeline, _ = make_pipeline(transport)
    result = await pipeline.run(job(hook_request("r1")))
    assert result.status is Status.DELIVERED
    assert result.attempts == 3


async def test_gives_up_after_max_attempts_and_releases_key() -> None:
    transport = answers((500, {"code": 5000, "msg": "internal"}))
    pipeline, store = make_pipeline(transport, max_attempts=3)
    result = await pipeline.run(job(hook_request("r1")))
    assert result.status is Status.FAILED
    assert result.error is not None and result.error.code == "retries_exhausted"
    assert result.attempts == 3
    assert len(store) == 0  # released: a later resend may try again


async def test_throttle_is_retried_after_reset() -> None:
    transport = answers(
        (400, {"code": 9499, "msg": "too many request"}),
        (200, {"code": 11232, "msg": "frequency limited"}),
        (200, {"code": 0, "msg": "success"}),
    )
    pipeline, _ = make_pipeline(transport)
    result = await pipeline.run(job(hook_request("r1")))
    assert result.status is Status.DELIVERED and result.attempts == 3


async def test_expired_request_is_not_sent() -> None:
    transport = answers((200, {"code": 0}))
    pipeline, _ = make_pipeline(transport)
    req = hook_request("r1")
    req["expires_at"] = "2020-01-01T00:00:00Z"
    result = await pipeline.run(job(req))
    assert result.status is Status.EXPIRED
    assert transport.calls == []


@pytest.mark.parametrize("code", [99991663, 99991661])
async def test_refused_token_is_fetched_again_once(code: int) -> None:
    tokens = iter(["t-first-token", "t-second-token"])
    sends: list[str] = []

    def handler(method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        if url.endswith("/tenant_access_token/internal"):
            data = {"code": 0, "tenant_access_token": next(tokens), "expire": 7200}
            return Response(200, {}, orjson.dumps(data))
        sends.append(headers["Authorization"])
        if headers["Authorization"] == "Bearer t-first-token":
            return Response(400, {}, orjson.dumps({"code": code, "msg": "invalid token"}))
        return Response(200, {}, orjson.dumps({"code": 0, "data": {"message_id": "om_9"}}))

    pipeline, _ = make_pipeline(MockTransport(handler))
    req = {
        "version": 1,
        "request_id": "r1",
        "backend": "feishu_message",
        "bot": "app",
        "target": {"receive_id_type": "chat_id", "receive_id": "oc_1"},
        "msg_type": "text",
        "content": {"text": "hi"},
    }
    result = await pipeline.run(job(req))
    assert result.status is Status.DELIVERED and result.message_id == "om_9"
    assert sends == ["Bearer t-first-token", "Bearer t-second-token"]


async def test_expires_at_reached_during_retries_ends_as_expired() -> None:
    transport = answers((500, {"code": 5000, "msg": "internal"}))
    pipeline, _ = make_pipeline(transport, backoff_base_s=5.0, backoff_cap_s=5.0)
    req = hook_request("r1")
    req["expires_at"] = (utcnow() + timedelta(seconds=0.5)).isoformat()
    result = await pipeline.run(job(req))
    assert result is not None and result.status is Status.EXPIRED
    assert result.error is not None and result.error.code == "expired"


class FlakyStore(MemoryStore):
    """The memory store behind an outage of ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        return await super().claim(key, owner, claim_ttl_s)


async def test_store_outage_is_ridden_out() -> None:
    transport = answers((200, {"code": 0, "msg": "success"}))
    pipeline, _ = make_pipeline(transport)
    pipeline.store = FlakyStore(failures=2)
    result = await pipeline.run(job(hook_request("r1")))
    assert result is not None and result.status is Status.DELIVERED


async def test_store_down_past_the_deadline_still_ends_with_a_result() -> None:
    """The lane turns the error into a failed result and goes on: no stuck partition."""
    transport = answers((200, {"code": 0, "msg": "success"}))
    pipeline, _ = make_pipeline(transport)
    pipeline.store = FlakyStore(failures=10**6)
    published: list[Result | None] = []
    both = asyncio.Event()

    async def publish(_: Job, result: Result | None) -> None:
        published.append(result)
        store.failures = 0  # the outage ends once the first request has its result
        if len(published) == 2:
            both.set()

    store = pipeline.store
    assert isinstance(store, FlakyStore)
    scheduler = Scheduler(pipeline, publish)
    req = hook_request("r1")
    req["expires_at"] = (utcnow() + timedelta(seconds=0.3)).isoformat()
    scheduler.submit(job(req))
    scheduler.submit(job(hook_request("r2", key="other"), offset=1))  # same lane, behind r1
    await asyncio.wait_for(both.wait(), 5)
    assert published[0] is not None and published[0].status is Status.FAILED
    assert published[0].error is not None and published[0].error.code == "internal_error"
    assert published[1] is not None and published[1].status is Status.DELIVERED
