"""The per-request state machine with a mock transport (a unit test: the platform is faked)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta

import orjson
import pytest

from cardq.backends import BackendContext, build
from cardq.backends.tokens import TokenPool
from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.config import IdempotencySettings, from_mapping
from cardq.idempotency import Claim, ClaimState, DoneRecord
from cardq.idempotency.memory import MemoryStore
from cardq.job import Job
from cardq.models import ErrorKind, Result, Status, utcnow
from cardq.pipeline import Pipeline
from cardq.ratelimit import RateLimiter, RateScope
from cardq.scheduler import Scheduler
from cardq.testing import build_pipeline, job

ENV = {"HOOK_TOKEN": "tok-abcdef", "HOOK_SECRET": "sec-abcdef", "APP_SECRET": "app-secret-1"}


def make_pipeline(
    handler: MockTransport,
    *,
    store: MemoryStore | None = None,
    limiter: RateLimiter | None = None,
    worker_id: str = "w1",
    claim_timeout_s: float = 10.0,
    **delivery: float,
) -> tuple[Pipeline, MemoryStore]:
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
    ctx = BackendContext(transport=handler, timeout_s=1.0, tokens=TokenPool(handler))
    store = store if store is not None else MemoryStore()
    pipeline = build_pipeline(
        {name: build(bot, ctx) for name, bot in settings.bots.items()},
        limiter=limiter,
        store=store,
        delivery=delivery,
        idempotency=IdempotencySettings(claim_timeout_s=claim_timeout_s),
        worker_id=worker_id,
    )
    return pipeline, store


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

    def handler(request: HttpRequest) -> Response:
        status, data = queue.pop(0) if len(queue) > 1 else queue[0]
        return Response(status, {}, orjson.dumps(data))

    return MockTransport(handler)


async def test_delivered_then_duplicate_by_key() -> None:
    transport = answers((200, {"code": 0, "msg": "success", "data": {}}))
    pipeline, _ = make_pipeline(transport)
    first = await pipeline.run(job(hook_request("r1", key="k")))
    assert first.status is Status.DELIVERED and first.attempts == 1
    second = await pipeline.run(job(hook_request("r2", key="k"), offset=1))
    assert second.status is Status.DUPLICATE
    assert second.original_request_id == "r1"
    assert len(transport.requests) == 1  # the duplicate was never sent


async def test_same_record_again_reports_delivered_not_duplicate() -> None:
    transport = answers((200, {"code": 0, "msg": "success", "data": {}}))
    pipeline, _ = make_pipeline(transport)
    await pipeline.run(job(hook_request("r1")))
    again = await pipeline.run(job(hook_request("r1")))
    assert again.status is Status.DELIVERED
    assert len(transport.requests) == 1


async def test_same_request_produced_again_gets_a_duplicate_result() -> None:
    """A new record (another offset) with a request id already delivered: one result,
    ``duplicate``, naming the first delivery; nothing sent again."""
    transport = answers((200, {"code": 0, "msg": "success", "data": {}}))
    pipeline, _ = make_pipeline(transport)
    first = await pipeline.run(job(hook_request("r1"), offset=3))
    again = await pipeline.run(job(hook_request("r1"), offset=8))
    assert first is not None and again is not None
    assert again.status is Status.DUPLICATE
    assert again.original_request_id == "r1" and again.request_id == "r1"
    assert again.message_id == first.message_id
    assert len(transport.requests) == 1


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
    sent = orjson.loads(transport.requests[0].body)
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
    assert transport.requests == []


@pytest.mark.parametrize("code", [99991663, 99991661])
async def test_refused_token_is_fetched_again_once(code: int) -> None:
    tokens = iter(["t-first-token", "t-second-token"])
    sends: list[str] = []

    def handler(request: HttpRequest) -> Response:
        if request.url.endswith("/tenant_access_token/internal"):
            data = {"code": 0, "tenant_access_token": next(tokens), "expire": 7200}
            return Response(200, {}, orjson.dumps(data))
        sends.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer t-first-token":
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
    assert published[0].error is not None and published[0].error.code == "store_unavailable"
    assert published[0].error.kind is ErrorKind.UNAVAILABLE
    assert published[1] is not None and published[1].status is Status.DELIVERED


THROTTLED = (400, {"code": 9499, "msg": "too many request"})
SUCCESS = (200, {"code": 0, "msg": "success"})


async def test_throttles_never_use_up_attempts() -> None:
    """Six throttle answers with max_attempts 2: still delivered, every answer counted."""
    transport = answers(*([THROTTLED] * 6), (500, {"code": 5000, "msg": "x"}), SUCCESS)
    pipeline, _ = make_pipeline(transport, max_attempts=2)
    result = await pipeline.run(job(hook_request("r1")))
    assert result is not None and result.status is Status.DELIVERED
    assert result.attempts == 8
    retries = pipeline.metrics.retries.labels("feishu_webhook", "hook", "throttled")
    assert retries._value.get() == 6


async def test_a_throttled_request_waits_until_its_max_age() -> None:
    transport = answers(THROTTLED)
    pipeline, _ = make_pipeline(transport, max_attempts=1, max_age_s=0.3)
    result = await pipeline.run(job(hook_request("r1")))
    assert result is not None and result.status is Status.FAILED
    assert result.error is not None and result.error.code == "max_age_exceeded"
    assert result.attempts > 1  # max_attempts did not stop it


class HeldLimiter(RateLimiter):
    """Grants nothing until ``open`` is set (a budget the lane must wait for)."""

    def __init__(self) -> None:
        super().__init__(margin=0.0)
        self.open = asyncio.Event()
        self.asked = asyncio.Event()

    async def acquire(self, scopes: tuple[RateScope, ...]) -> float:
        self.asked.set()
        await self.open.wait()
        return await super().acquire(scopes)


async def test_a_request_waiting_for_budget_holds_no_claim() -> None:
    """A worker whose request waits for budget blocks nobody: a second worker sharing the
    store sends the same key at once, and the first then answers ``duplicate``."""
    store = MemoryStore()
    held = HeldLimiter()
    waiting, _ = make_pipeline(answers(SUCCESS), store=store, limiter=held, worker_id="w1")
    other, _ = make_pipeline(answers(SUCCESS), store=store, worker_id="w2")
    first = asyncio.create_task(waiting.run(job(hook_request("r1", key="k"), offset=1)))
    await asyncio.wait_for(held.asked.wait(), 2)  # it waits for budget now
    assert (await store.lookup("k")).state is ClaimState.NEW
    second = await asyncio.wait_for(other.run(job(hook_request("r2", key="k"), offset=2)), 2)
    assert second is not None and second.status is Status.DELIVERED
    held.open.set()
    late = await asyncio.wait_for(first, 2)
    assert late is not None and late.status is Status.DUPLICATE
    assert late.original_request_id == "r2"


async def test_lease_is_renewed_on_the_wire_and_runs_out_when_its_worker_dies() -> None:
    store = MemoryStore()
    on_wire = asyncio.Event()
    hang = asyncio.Event()

    async def slow(request: HttpRequest) -> Response:
        on_wire.set()
        await hang.wait()
        return Response(200, {}, orjson.dumps({"code": 0, "msg": "success"}))

    dying, _ = make_pipeline(MockTransport(slow), store=store, claim_timeout_s=0.3)
    task = asyncio.create_task(dying.run(job(hook_request("r1", key="k"))))
    await asyncio.wait_for(on_wire.wait(), 2)
    await asyncio.sleep(0.6)  # two leases: only the renewals keep the key held
    assert (await store.lookup("k")).state is ClaimState.IN_FLIGHT
    # The worker dies: no more renewals, no release.
    assert dying._keeper is not None
    dying._keeper.cancel()
    died = asyncio.get_running_loop().time()
    heir, _ = make_pipeline(answers(SUCCESS), store=store, worker_id="w2", claim_timeout_s=0.3)
    result = await asyncio.wait_for(heir.run(job(hook_request("r1", key="k"), offset=1)), 3)
    assert result is not None and result.status is Status.DELIVERED
    assert asyncio.get_running_loop().time() - died <= 0.3 + 0.2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class RacedStore(MemoryStore):
    """The key is delivered by another worker between the lookup and the claim."""

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        await self.finish(key, DoneRecord("elsewhere", "om_x", "t", source="t/0/99"), 60)
        return await super().claim(key, owner, claim_ttl_s)


async def test_a_granted_slot_is_given_back_when_the_key_was_taken_meanwhile() -> None:
    limiter = RateLimiter(margin=0.0)
    transport = answers(SUCCESS)
    pipeline, _ = make_pipeline(transport, store=RacedStore(), limiter=limiter)
    request = job(hook_request("r1"))
    result = await pipeline.run(request)
    assert result is not None and result.status is Status.DUPLICATE
    assert result.original_request_id == "elsewhere" and transport.requests == []
    # The webhook scope allows 5 per second. A slot still held would leave 4 (the fifth
    # would wait, forever, for a send that never ends); one given back leaves all 5.
    scopes = pipeline.backends["hook"].rate_scopes(request.request)
    assert [limiter.try_acquire(scopes) for _ in range(5)] == [0.0] * 5


class HangingFinish(MemoryStore):
    """The store answers everything but the record of a delivery (an outage right then)."""

    def __init__(self) -> None:
        super().__init__()
        self.finishing = asyncio.Event()

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None:
        self.finishing.set()
        await asyncio.Event().wait()


async def test_a_delivered_key_is_never_released_when_cancelled_while_recording() -> None:
    """A drain that cancels a job after its send succeeded must not free the key: the
    claim runs out by itself (one lease) but is never handed to a resend at once."""
    store = HangingFinish()
    pipeline, _ = make_pipeline(answers(SUCCESS), store=store)
    task = asyncio.create_task(pipeline.run(job(hook_request("r1", key="k"))))
    await asyncio.wait_for(store.finishing.wait(), 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (await store.lookup("k")).state is ClaimState.IN_FLIGHT


async def test_waiting_jobs_by_reason_and_the_backlog_behind_rate_limits() -> None:
    """What ``cardq_jobs_waiting`` and ``cardq_rate_limited_backlog`` are sampled from."""
    held = HeldLimiter()
    pipeline, _ = make_pipeline(answers(SUCCESS), limiter=held)
    done: list[Result | None] = []
    all_done = asyncio.Event()

    async def publish(_: Job, result: Result | None) -> None:
        done.append(result)
        if len(done) == 3:
            all_done.set()

    scheduler = Scheduler(pipeline, publish)
    for i in range(3):  # one lane: the head waits for budget, two queue behind it
        scheduler.submit(job(hook_request(f"r{i}"), offset=i))
    await asyncio.wait_for(held.asked.wait(), 2)
    assert scheduler.waiting() == ({"rate_limit": 1}, 3)
    held.open.set()
    await asyncio.wait_for(all_done.wait(), 5)
    assert scheduler.waiting() == ({}, 0)
    await scheduler.close()
