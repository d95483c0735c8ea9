"""Alert lifecycle by ``subject_key`` (unit tests: the platform is a mock transport).

The same flows over a real broker, the simulator over HTTP and a worker are in
``tests/test_lifecycle_e2e.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.errors import Rejected, Unavailable
from cardq.idempotency.memory import MemoryStore
from cardq.lifecycle import Lifecycle, subject_store_key
from cardq.models import Result, Status
from cardq.pipeline import Job, Pipeline
from cardq.scheduler import Scheduler
from cardq.supersede import Supersessions
from cardq.testing import FakeClock, job
from cardq.validation import ValidationError, from_dict
from tests import helpers
from tests.test_pipeline import make_pipeline

CHAT = {"receive_id_type": "chat_id", "receive_id": "oc_1"}


def card(state: str) -> dict[str, Any]:
    return {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": state}]}}


def alert(rid: str, subject: str | None, state: str = "FIRING", **extra: Any) -> dict[str, Any]:
    request = helpers.im(rid, "oc_1", msg_type="interactive", content=card(state), **extra)
    if subject is not None:
        request["subject_key"] = subject
    return request


def recall(rid: str, subject: str) -> dict[str, Any]:
    request = helpers.im(rid, "oc_1", operation="recall", subject_key=subject)
    del request["msg_type"], request["content"]
    return request


class Platform:
    """Feishu IM as a mock transport: numbered message ids, and answers chosen per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, body) without tokens
        self.refuse: dict[str, int] = {}  # method -> platform code to answer once
        self.gate: asyncio.Event | None = None  # while set to an unset event, sends wait
        self._next = 0

    async def __call__(self, request: HttpRequest) -> Response:
        method, url, body = request.method, request.url, request.body
        if url.endswith("/tenant_access_token/internal"):
            return _answer(200, {"code": 0, "tenant_access_token": "t-1", "expire": 7200})
        if self.gate is not None:
            await self.gate.wait()
        path = url.split("http://sim", 1)[1]
        self.calls.append((method, path, orjson.loads(body) if body else None))
        code = self.refuse.pop(method, None)
        if code is not None:
            return _answer(400, {"code": code, "msg": "refused"})
        if method == "POST":
            self._next += 1
            return _answer(200, {"code": 0, "data": {"message_id": f"om_{self._next}"}})
        return _answer(200, {"code": 0, "msg": "success", "data": {}})

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.calls]


def _answer(status: int, data: Mapping[str, Any]) -> Response:
    return Response(status, {}, orjson.dumps(data))


@pytest.fixture
def platform() -> Platform:
    return Platform()


# --------------------------------------------------------------------------- validation


def test_subject_key_is_carried_and_recall_needs_it() -> None:
    request = from_dict(alert("r1", "fp-1"))
    assert request.subject_key == "fp-1"
    assert request.result_version == 2
    assert from_dict(alert("r2", None)).result_version == 1
    assert from_dict({**alert("r3", None), "subject_key": None}).subject_key is None
    with pytest.raises(ValidationError) as err:
        from_dict({**recall("r4", "fp-1"), "subject_key": None})
    assert (err.value.field, err.value.reason) == (
        "subject_key",
        "required for operation recall (it names the card to recall)",
    )


def test_a_backend_that_cannot_recall_says_why() -> None:
    request = {
        "version": 1,
        "request_id": "r1",
        "backend": "feishu_webhook",
        "bot": "hook",
        "operation": "recall",
        "subject_key": "fp-1",
    }
    with pytest.raises(ValidationError) as err:
        from_dict(request)
    assert err.value.field == "operation"
    assert "returns no message id and has no delete API" in err.value.reason


def test_store_key_is_per_destination() -> None:
    one = from_dict(alert("r1", "fp-1"))
    other = from_dict({**alert("r2", "fp-1"), "target": {**CHAT, "receive_id": "oc_2"}})
    assert subject_store_key(one) != subject_store_key(other)
    assert subject_store_key(one) == subject_store_key(from_dict(recall("r3", "fp-1")))
    # A separator inside a receiver id or a key never makes two subjects one.
    tricky = from_dict({**alert("r4", "b"), "target": {**CHAT, "receive_id": "oc_1|a"}})
    assert subject_store_key(tricky) != subject_store_key(from_dict(alert("r5", "a|b")))


# --------------------------------------------------------------------------- Supersessions


def test_a_newer_queued_send_replaces_the_older_one() -> None:
    subjects = Supersessions()
    fire, ack, resolve, other = (
        job(alert("fire", "fp-1"), 0),
        job(alert("ack", "fp-1"), 1),
        job(alert("resolve", "fp-1"), 2),
        job(alert("other", "fp-2"), 3),
    )
    for queued in (fire, ack, resolve, other):
        subjects.submitted(queued)
    assert subjects.take(fire) == "ack"
    assert subjects.take(ack) == "resolve"
    assert subjects.take(resolve) is None  # the latest runs
    assert subjects.take(other) is None


def test_a_started_send_is_never_replaced_and_a_recall_ends_the_chain() -> None:
    subjects = Supersessions()
    fire = job(alert("fire", "fp-1"), 0)
    subjects.submitted(fire)
    assert subjects.take(fire) is None  # it left the queue: on its way to the platform
    update = job(alert("update", "fp-1"), 1)
    subjects.submitted(update)
    gone = job(recall("recall", "fp-1"), 2)
    subjects.submitted(gone)
    refire = job(alert("refire", "fp-1"), 3)
    subjects.submitted(refire)
    # The update must still reach the card the recall deletes.
    assert [subjects.take(j) for j in (update, gone, refire)] == [None, None, None]
    plain = job(alert("plain", None), 4)
    subjects.submitted(plain)
    assert subjects.take(plain) is None


def test_the_head_is_replaced_only_while_it_waits_for_its_first_budget() -> None:
    subjects = Supersessions()
    head, newer = job(alert("fire", "fp-1"), 0), job(alert("resolve", "fp-1"), 1)
    head.waiting_for = "claim"
    assert not subjects.replaces_head(head, newer)  # about to be sent
    head.waiting_for = "rate_limit"
    head.attempts = 1  # a throttled attempt: the platform may yet have taken it
    assert not subjects.replaces_head(head, newer)
    head.attempts = 0
    assert not subjects.replaces_head(head, job(recall("recall", "fp-1"), 2))
    assert not subjects.replaces_head(head, job(alert("other", "fp-2"), 3))
    assert subjects.replaces_head(head, newer)
    assert subjects.take(head) == "resolve"


# --------------------------------------------------------------------------- Lifecycle


async def test_first_state_sends_later_ones_patch_the_same_card(platform: Platform) -> None:
    pipeline, store = make_pipeline(MockTransport(platform))
    first = await pipeline.run(job(alert("fire", "fp-1"), 0))
    second = await pipeline.run(job(alert("resolve", "fp-1", "RESOLVED"), 1))
    assert first is not None and second is not None
    assert (first.status, first.message_id) == (Status.DELIVERED, "om_1")
    assert (second.status, second.message_id) == (Status.DELIVERED, "om_1")
    assert platform.methods() == ["POST", "PATCH"]
    _, path, body = platform.calls[1]
    assert path == "/open-apis/im/v1/messages/om_1"
    assert orjson.loads(body["content"]) == card("RESOLVED")
    encoded = second.as_dict()
    assert (encoded["version"], encoded["subject_key"], encoded["superseded_by"]) == (
        2,
        "fp-1",
        None,
    )
    # Another chat with the same fingerprint gets its own card.
    elsewhere = alert("fire-2", "fp-1", target={**CHAT, "receive_id": "oc_2"})
    third = await pipeline.run(job(elsewhere, 2))
    assert third is not None and third.message_id == "om_2"
    assert await store.subject(subject_store_key(from_dict(elsewhere))) == "om_2"


async def test_updates_do_not_stretch_the_14_day_window(platform: Platform) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    pipeline, _ = make_pipeline(MockTransport(platform), store=store)
    await pipeline.run(job(alert("fire", "fp-1"), 0))
    clock.advance(10 * 86_400)
    await pipeline.run(job(alert("ack", "fp-1", "ACK"), 1))  # updates the card
    clock.advance(5 * 86_400)  # 15 days after the card was sent: past the platform's window
    late = await pipeline.run(job(alert("resolve", "fp-1", "RESOLVED"), 2))
    assert late is not None and late.message_id == "om_2"
    assert platform.methods() == ["POST", "PATCH", "POST"]


@pytest.mark.parametrize("code", [230011, 230031, 230110])
async def test_a_card_that_cannot_be_updated_is_replaced_by_a_new_one(
    platform: Platform, code: int
) -> None:
    pipeline, store = make_pipeline(MockTransport(platform))
    await pipeline.run(job(alert("fire", "fp-1"), 0))
    platform.refuse["PATCH"] = code
    result = await pipeline.run(job(alert("resolve", "fp-1", "RESOLVED"), 1))
    assert result is not None and (result.status, result.message_id) == (Status.DELIVERED, "om_2")
    assert platform.methods() == ["POST", "PATCH", "POST"]
    assert await store.subject(subject_store_key(from_dict(alert("x", "fp-1")))) == "om_2"


async def test_other_update_refusals_fail_the_request(platform: Platform) -> None:
    pipeline, _ = make_pipeline(MockTransport(platform))
    await pipeline.run(job(alert("fire", "fp-1"), 0))
    platform.refuse["PATCH"] = 230027  # no permission: a new card would not help
    result = await pipeline.run(job(alert("resolve", "fp-1"), 1))
    assert result is not None and result.status is Status.FAILED
    assert result.error is not None and result.error.platform_code == 230027
    assert result.as_dict()["version"] == 2


async def test_recall_deletes_the_card_and_forgets_it(platform: Platform) -> None:
    pipeline, store = make_pipeline(MockTransport(platform))
    await pipeline.run(job(alert("fire", "fp-1"), 0))
    gone = await pipeline.run(job(recall("recall", "fp-1"), 1))
    assert gone is not None and (gone.status, gone.message_id) == (Status.DELIVERED, "om_1")
    assert platform.calls[-1][:2] == ("DELETE", "/open-apis/im/v1/messages/om_1")
    assert await store.subject(subject_store_key(from_dict(recall("x", "fp-1")))) is None
    again = await pipeline.run(job(recall("recall-2", "fp-1"), 2))
    assert again is not None and again.status is Status.FAILED
    assert again.error is not None
    assert (again.error.kind.value, again.error.code) == ("rejected", "subject_unknown")
    assert again.error.message.startswith("subject_key: no card is remembered")
    assert not again.error.retryable
    assert platform.methods() == ["POST", "DELETE"]  # the second recall sent nothing


async def test_a_recall_of_a_message_already_gone_is_done(platform: Platform) -> None:
    pipeline, _ = make_pipeline(MockTransport(platform))
    await pipeline.run(job(alert("fire", "fp-1"), 0))
    platform.refuse["DELETE"] = 230011
    gone = await pipeline.run(job(recall("recall", "fp-1"), 1))
    assert gone is not None and gone.status is Status.DELIVERED


async def test_without_update_a_backend_sends_each_state() -> None:
    sent: list[bytes] = []

    def webhook(request: HttpRequest) -> Response:
        sent.append(request.body)
        return _answer(200, {"code": 0, "msg": "success", "data": {}})

    pipeline, store = make_pipeline(MockTransport(webhook))
    for offset, state in enumerate(("FIRING", "RESOLVED")):
        request = {
            "version": 1,
            "request_id": f"r{offset}",
            "backend": "feishu_webhook",
            "bot": "hook",
            "subject_key": "fp-1",
            "msg_type": "text",
            "content": {"text": state},
        }
        result = await pipeline.run(job(request, offset))
        assert result is not None and result.status is Status.DELIVERED
        assert result.as_dict()["subject_key"] == "fp-1"
    assert len(sent) == 2  # no message id to update: a new message each time
    assert len(store) == 2  # the two idempotency keys; no subject is remembered


async def test_only_cards_are_updated_other_messages_are_sent_anew(platform: Platform) -> None:
    pipeline, _ = make_pipeline(MockTransport(platform))
    for offset, text in enumerate(("FIRING", "RESOLVED")):
        request = {**alert(f"r{offset}", "fp-1"), "msg_type": "text", "content": {"text": text}}
        result = await pipeline.run(job(request, offset))
        assert result is not None and result.message_id == f"om_{offset + 1}"
    await pipeline.run(job(recall("recall", "fp-1"), 2))
    assert platform.methods() == ["POST", "POST", "DELETE"]
    assert platform.calls[-1][1].endswith("/om_2")  # the latest message of the subject


class BrokenStore(MemoryStore):
    async def subject(self, key: str) -> str | None:
        raise ConnectionError("down")


async def test_an_unreachable_store_is_a_retryable_error(platform: Platform) -> None:
    lifecycle = Lifecycle(BrokenStore(), 60.0)
    pipeline, _ = make_pipeline(MockTransport(platform))
    with pytest.raises(Unavailable):
        await lifecycle.send(pipeline.backends["app"], from_dict(alert("r1", "fp-1")))
    with pytest.raises(Unavailable):
        await lifecycle.send(pipeline.backends["app"], from_dict(recall("r2", "fp-1")))
    assert platform.calls == []  # never a second card for want of the mapping


async def test_subject_unknown_is_a_rejection_not_a_retry(platform: Platform) -> None:
    lifecycle = Lifecycle(MemoryStore(), 60.0)
    pipeline, _ = make_pipeline(MockTransport(platform))
    with pytest.raises(Rejected) as err:
        await lifecycle.send(pipeline.backends["app"], from_dict(recall("r1", "fp-1")))
    assert err.value.code == "subject_unknown"


# --------------------------------------------------------------------------- lanes


async def test_queued_states_are_superseded_with_one_result_each(platform: Platform) -> None:
    """The lane's head is on the wire while four states of two subjects queue behind it."""
    pipeline, _ = make_pipeline(MockTransport(platform))
    published: list[tuple[Job, Result | None]] = []

    async def publish(done: Job, result: Result | None) -> None:
        published.append((done, result))

    scheduler = Scheduler(pipeline, publish)
    platform.gate = asyncio.Event()
    head = job(alert("head", "fp-0"), 0)
    scheduler.submit(head)
    await helpers.until(lambda: head.attempts == 1, "the head on the wire", timeout=5)
    requests = [
        alert("a-fire", "fp-1"),
        alert("b-fire", "fp-2"),
        alert("a-ack", "fp-1", "ACK"),
        alert("a-resolve", "fp-1", "RESOLVED"),
        alert("plain", None),
    ]
    for offset, request in enumerate(requests, start=1):
        scheduler.submit(job(request, offset))
    platform.gate.set()
    await helpers.until(lambda: len(published) == 6, "six results", timeout=5)
    await scheduler.close()
    by_id = {done.request.request_id: result for done, result in published}
    assert all(result is not None for result in by_id.values())
    outcome = {rid: (r.status.value, r.superseded_by) for rid, r in by_id.items() if r}
    assert outcome == {
        "head": ("delivered", None),
        "a-fire": ("superseded", "a-ack"),
        "b-fire": ("delivered", None),
        "a-ack": ("superseded", "a-resolve"),
        "a-resolve": ("delivered", None),
        "plain": ("delivered", None),
    }
    superseded = by_id["a-fire"]
    assert superseded is not None and superseded.attempts == 0
    assert superseded.as_dict()["version"] == 2 and not superseded.needs_dead_letter
    # head, b-fire, a-resolve and plain were sent: a-resolve as the first card of fp-1.
    assert platform.methods() == ["POST", "POST", "POST", "POST"]


async def test_the_head_waiting_for_its_budget_is_superseded(platform: Platform) -> None:
    """Five sends take the chat's budget (5 per second); the sixth waits for it at the
    head of the lane when a newer state of its subject arrives: the wait ends at once."""
    pipeline, _ = make_pipeline(MockTransport(platform))
    published: list[tuple[Job, Result | None]] = []

    async def publish(done: Job, result: Result | None) -> None:
        published.append((done, result))

    scheduler = Scheduler(pipeline, publish)
    for offset in range(5):
        scheduler.submit(job(alert(f"plain-{offset}", None), offset))
    head = job(alert("fire", "fp-1"), 5)
    scheduler.submit(head)
    await helpers.until(lambda: head.waiting_for == "rate_limit", "the head waits", timeout=5)
    scheduler.submit(job(alert("resolve", "fp-1", "RESOLVED"), 6))
    await helpers.until(lambda: len(published) == 7, "seven results", timeout=5)
    await scheduler.close()
    outcome = {d.request.request_id: r.status.value for d, r in published if r is not None}
    assert outcome["fire"] == "superseded" and outcome["resolve"] == "delivered"
    fire = next(r for d, r in published if d is head)
    assert fire is not None and (fire.superseded_by, fire.attempts) == ("resolve", 0)
    assert len(platform.calls) == 6  # five plain sends and the resolved card, never "fire"
    assert orjson.loads(platform.calls[-1][2]["content"]) == card("RESOLVED")


@pytest.mark.parametrize("fp_b_has_a_card", [False, True])
async def test_behind_its_budget_a_lane_replaces_states_then_digests_subjects_without_a_card(
    fp_b_has_a_card: bool,
) -> None:
    """Behind its budget a subject's older queued state is replaced (``superseded``); the
    states left may be merged into a digest while their subject has no card of its own,
    and a subject with a card is updated in place instead (``digest.py``)."""
    from tests.test_digest import SETTINGS, card_request, job_of, run_lane

    def state(rid: str, subject: str, offset: int) -> Job:
        return job_of({**card_request(rid), "subject_key": subject}, offset, age_s=30)

    jobs = [
        job_of(card_request("head"), 0, age_s=30),
        state("a-fire", "fp-a", 1),
        state("b-fire", "fp-b", 2),
        state("a-resolve", "fp-a", 3),
    ]

    async def fp_b_card(pipeline: Pipeline) -> None:
        if fp_b_has_a_card:
            key = subject_store_key(jobs[2].request)
            await pipeline.store.remember_subject(key, "om_fp_b", 600)

    published, _ = await run_lane(jobs, SETTINGS, hold_first=True, before=fp_b_card)
    by_id = {job.request.request_id: result for job, result in published}
    assert sorted(by_id) == sorted(j.request.request_id for j in jobs)  # each exactly once
    assert (by_id["a-fire"].status, by_id["a-fire"].superseded_by) == (
        Status.SUPERSEDED,
        "a-resolve",
    )
    assert {r.status for r in by_id.values()} == {Status.SUPERSEDED, Status.DELIVERED}
    assert by_id["head"].digest is None  # on the wire before the lane fell behind
    if fp_b_has_a_card:  # updated in place; a-resolve alone is no digest
        assert by_id["b-fire"].digest is None and by_id["b-fire"].message_id == "om_fp_b"
        assert by_id["a-resolve"].digest is None
    else:  # both states shown by one digest card
        b, a = by_id["b-fire"].digest, by_id["a-resolve"].digest
        assert b is not None and b == a and b["size"] == 2


async def test_a_replaced_state_queued_behind_the_head_is_no_line_of_a_digest() -> None:
    """The head of a lane behind its budget takes queued states into a digest; one of them
    was replaced by a newer state queued after it: it ends ``superseded``, never a line."""
    from tests.test_digest import SETTINGS, card_request, job_of, run_lane

    def state(rid: str, subject: str, offset: int) -> Job:
        return job_of({**card_request(rid), "subject_key": subject}, offset, age_s=30)

    jobs = [
        job_of(card_request("head"), 0, age_s=30),
        state("b-fire", "fp-b", 1),
        state("a-fire", "fp-a", 2),
        state("c-fire", "fp-c", 3),
        state("a-resolve", "fp-a", 4),
    ]
    published, _ = await run_lane(jobs, SETTINGS, hold_first=True)
    by_id = {job.request.request_id: result for job, result in published}
    assert sorted(by_id) == sorted(j.request.request_id for j in jobs)  # each exactly once
    assert (by_id["a-fire"].status, by_id["a-fire"].superseded_by, by_id["a-fire"].digest) == (
        Status.SUPERSEDED,
        "a-resolve",
        None,
    )
    digests = {rid: by_id[rid].digest for rid in ("b-fire", "c-fire", "a-resolve")}
    assert all(d is not None and d["size"] == 3 for d in digests.values()), digests
