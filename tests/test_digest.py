"""Digest under backlog: which requests merge, the cards they make, and a lane that is
behind (unit tests: the platform is a mock transport; the end-to-end test is in
``test_storm_e2e.py``)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from cardq.backends import REGISTRY
from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.digest import Digests, capacity, digest_key_for, eligible, mergeable, select
from cardq.digest_cards import CARD_BUDGET, build_cards, item_of
from cardq.idempotency import ClaimState
from cardq.idempotency.memory import MemoryStore
from cardq.job import Job
from cardq.models import Result, Source, Status, utcnow
from cardq.pipeline import Pipeline
from cardq.ratelimit import RateScope, Window
from cardq.scheduler import Scheduler
from cardq.settings import DigestSettings
from cardq.validation import from_dict
from tests.test_pipeline import HeldLimiter, make_pipeline

CHAT = {"receive_id_type": "chat_id", "receive_id": "oc_storm"}


def card_request(
    rid: str,
    *,
    digest_key: str | None = "grp-db",
    priority: str = "normal",
    v2: bool = True,
    title: str | None = None,
    link: str | None = None,
    backend: str = "feishu_message",
) -> dict[str, Any]:
    title = title or f"Alert {rid}"
    link = link or f"https://example.com/alerts/{rid}"
    if backend == "mindoffice_group":
        content: dict[str, Any] = {
            "header": {"title": {"content": title}, "template": "red"},
            "elements": [
                {"tag": "markdown", "content": "firing"},
                {
                    "tag": "action",
                    "action": [{"tag": "button", "type": "view", "url": link, "text": {}}],
                },
            ],
        }
    elif v2:
        content = {
            "schema": "2.0",
            "header": {"title": {"tag": "plain_text", "content": title}},
            "body": {"elements": [{"tag": "markdown", "content": f"[runbook]({link})"}]},
        }
    else:
        content = {
            "header": {"title": {"tag": "plain_text", "content": title}},
            "elements": [
                {"tag": "action", "actions": [{"tag": "button", "url": link, "text": {}}]}
            ],
        }
    req: dict[str, Any] = {
        "version": 1,
        "request_id": rid,
        "backend": backend,
        "bot": "app",
        "msg_type": "interactive",
        "content": content,
        "priority": priority,
    }
    if backend == "feishu_message":
        req["target"] = CHAT
    elif backend == "mindoffice_group":
        req["bot"] = "mind"
        req["target"] = {"group_id": "grp_1"}
    else:
        req["bot"] = "hook"
    if digest_key is not None:
        req["digest_key"] = digest_key
    return req


def job_of(req: dict[str, Any], offset: int = 0, age_s: float = 0.0, tp: object = "t0") -> Job:
    return Job(
        request=from_dict(req),
        source=Source("t", 0, offset),
        raw=orjson.dumps(req),
        received_at=utcnow() - timedelta(seconds=age_s),
        tp=tp,
    )


# --------------------------------------------------------------------------- which merge

SETTINGS = DigestSettings(after_s=10.0, low_after_s=2.0)
CHAT_SCOPES = (
    RateScope("chat", "destination", (Window(5, 1.0), Window(100, 60.0))),
    RateScope("app", "app", (Window(50, 1.0),)),
)


def test_capacity_counts_the_destinations_own_windows_not_the_apps() -> None:
    assert capacity(CHAT_SCOPES, 10.0) == 50  # 5/s for 10 s; 100/min allows more
    assert capacity(CHAT_SCOPES, 60.0) == 100  # the minute window binds
    assert capacity(CHAT_SCOPES[1:], 10.0) == float("inf")  # only an app budget: no count


def test_a_lane_within_its_budget_is_not_behind() -> None:
    assert eligible(3, 0.5, 50, 10, SETTINGS) == frozenset()


def test_low_priority_is_digested_first() -> None:
    # Waited 3 s: past low_after_s (2 s), not past after_s (10 s).
    assert eligible(3, 3.0, 50, 10, SETTINGS) == {"low"}
    assert eligible(3, 11.0, 50, 10, SETTINGS) == {"low", "normal"}
    # Or by count: more queued than the budget sends within each wait.
    assert eligible(11, 0.0, 50, 10, SETTINGS) == {"low"}
    assert eligible(51, 0.0, 50, 10, SETTINGS) == {"low", "normal"}


def test_select_merges_the_same_key_and_allowed_priorities_in_lane_order() -> None:
    head = job_of(card_request("h"))
    queued = [
        job_of(card_request("a"), 1),
        job_of(card_request("other-key", digest_key="grp-web"), 2),
        job_of(card_request("urgent", priority="urgent"), 3),
        job_of(card_request("low", priority="low"), 4),
        job_of(card_request("no-key", digest_key=None), 5),
        job_of(card_request("other-partition"), 6, tp="t1"),
        job_of(card_request("b"), 7),
    ]
    both = select(head, queued, frozenset({"low", "normal"}), 200)
    assert [j.request.request_id for j in both] == ["h", "a", "low", "b"]
    only_low = select(head, queued, frozenset({"low"}), 200)
    assert [j.request.request_id for j in only_low] == ["h"]  # the head itself is normal
    capped = select(head, queued, frozenset({"low", "normal"}), 2)
    assert [j.request.request_id for j in capped] == ["h", "a"]


def test_urgent_replies_and_updates_are_never_merged() -> None:
    assert not mergeable(from_dict(card_request("u", priority="urgent")))
    update = card_request("upd")
    update["operation"] = "update"
    update["target"] = {"message_id": "om_1"}
    update["content"]["config"] = {"update_multi": True}
    assert not mergeable(from_dict(update))
    assert mergeable(from_dict(card_request("n")))


def test_the_digest_key_is_the_same_for_the_same_requests() -> None:
    a = [job_of(card_request("a"), 1), job_of(card_request("b"), 2)]
    assert digest_key_for(a) == digest_key_for(list(reversed(a)))
    assert digest_key_for(a) != digest_key_for(a[:1])
    assert len(digest_key_for(a)) <= 50  # fits Feishu's uuid as it is


# --------------------------------------------------------------------------- the cards


def test_items_take_the_title_and_first_link_of_each_form() -> None:
    v1 = item_of(from_dict(card_request("x", v2=False, title="Disk 91%")))
    assert (v1.title, v1.link) == ("Disk 91%", "https://example.com/alerts/x")
    v2 = item_of(from_dict(card_request("y", title="CPU [high]")))
    assert (v2.title, v2.link) == ("CPU high", "https://example.com/alerts/y")  # no markup
    mind = item_of(from_dict(card_request("z", backend="mindoffice_group", title="支付")))
    assert (mind.title, mind.link) == ("支付", "https://example.com/alerts/z")
    text = {
        "version": 1,
        "request_id": "t",
        "backend": "feishu_webhook",
        "bot": "hook",
        "msg_type": "text",
        "content": {"text": 'db down <at user_id="all">all</at>\nsee http://x.test/a b'},
    }
    plain = item_of(from_dict(text))
    assert (plain.title, plain.link) == ("db down @all", "http://x.test/a")


@pytest.mark.parametrize(
    ("backend", "v2", "form"),
    [
        ("feishu_message", True, "2.0"),
        ("feishu_message", False, "1.0"),
        ("feishu_webhook", True, "2.0"),
        ("mindoffice_group", False, "mindoffice"),
    ],
)
def test_one_card_lists_every_item_in_the_platforms_form(backend: str, v2: bool, form: str) -> None:
    reqs = [from_dict(card_request(f"r{i}", v2=v2, backend=backend)) for i in range(5)]
    [card] = build_cards(backend, "grp-db", reqs)
    assert card.size == 5 and card.msg_type == "interactive"
    content = card.content
    text = orjson.dumps(content).decode()
    for i in range(5):
        assert f"[Alert r{i}](https://example.com/alerts/r{i})" in text
    assert content["header"]["title"]["content"] == "5 alerts: grp-db"
    if form == "2.0":
        assert content["schema"] == "2.0" and "elements" in content["body"]
    elif form == "1.0":
        assert "schema" not in content and isinstance(content["elements"], list)
    else:
        assert content["header"]["template"] == "orange" and "elements" in content
    digest = from_dict(card_request("d", backend=backend, v2=v2) | {"content": content})
    REGISTRY[backend].check(digest)  # the platform's own rules, as validation holds them


@pytest.mark.parametrize("backend", ["feishu_webhook", "feishu_message", "mindoffice_group"])
def test_a_digest_over_the_size_limit_is_split_not_cut(backend: str) -> None:
    long = "x" * 110
    reqs = [
        from_dict(card_request(f"r{i}", backend=backend, title=f"{i} {long}")) for i in range(400)
    ]
    cards = build_cards(backend, "grp-db", reqs)
    assert len(cards) > 1
    assert sum(card.size for card in cards) == 400
    seen = []
    for n, card in enumerate(cards, 1):
        assert len(orjson.dumps(card.content)) <= CARD_BUDGET[backend]
        heading = card.content["header"]["title"]["content"]
        count = f"{card.size} alert" + ("s" if card.size > 1 else "")
        assert heading == f"{count}: grp-db (part {n}/{len(cards)})"
        text = orjson.dumps(card.content).decode()
        seen += [i for i in range(400) if f"/alerts/r{i})" in text]
        probe = card_request("d", backend=backend) | {"content": card.content}
        REGISTRY[backend].check(from_dict(probe))
    assert seen == list(range(400))  # each once, in order


# --------------------------------------------------------------------------- a lane


def message_transport() -> MockTransport:
    """The IM API: a token, then ``om_<n>`` for each send (``n`` counts sends)."""
    sent: list[bytes] = []

    def handler(request: HttpRequest) -> Response:
        if request.url.endswith("/tenant_access_token/internal"):
            data: dict[str, Any] = {"code": 0, "tenant_access_token": "t-1", "expire": 7200}
        else:
            sent.append(request.body)
            data = {"code": 0, "msg": "success", "data": {"message_id": f"om_{len(sent)}"}}
        return Response(200, {}, orjson.dumps(data))

    return MockTransport(handler)


def sends(transport: MockTransport) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in transport.requests if "/im/v1/messages" in r.url]


async def run_lane(
    jobs: list[Job],
    settings: DigestSettings,
    hold_first: bool,
    before: Callable[[Pipeline], Awaitable[None]] | None = None,
) -> tuple[list[tuple[Job, Result]], MockTransport]:
    """``jobs`` through one lane with digests on; ``before`` prepares the pipeline (its
    store) first."""
    transport = message_transport()
    held = HeldLimiter()
    if not hold_first:
        held.open.set()
    pipeline, _ = make_pipeline(transport, limiter=held)
    if before is not None:
        await before(pipeline)
    published: list[tuple[Job, Result]] = []
    done = asyncio.Event()

    async def publish(job: Job, result: Result | None) -> None:
        assert result is not None
        published.append((job, result))
        if len(published) == len(jobs):
            done.set()

    scheduler = Scheduler(pipeline, publish)
    scheduler.digests = Digests(pipeline, settings)
    scheduler.submit(jobs[0])
    await asyncio.wait_for(held.asked.wait(), 2)  # the first waits for budget: a backlog
    for job in jobs[1:]:
        scheduler.submit(job)
    held.open.set()
    await asyncio.wait_for(done.wait(), 5)
    await scheduler.close()
    await pipeline.aclose()
    return published, transport


async def test_a_lane_behind_its_budget_sends_one_digest_and_a_result_for_each() -> None:
    jobs = [job_of(card_request(f"r{i}"), i, age_s=30) for i in range(6)]
    jobs.append(job_of(card_request("other", digest_key="grp-web"), 6, age_s=30))
    published, transport = await run_lane(jobs, SETTINGS, hold_first=True)
    by_id = {job.request.request_id: result for job, result in published}
    assert sorted(by_id) == sorted(j.request.request_id for j in jobs)  # each exactly once
    cards = sends(transport)
    # r0 was on its way before the backlog built; r1-r5 are one digest; "other" alone.
    assert len(cards) == 3
    digest_content = orjson.loads(cards[1]["content"])
    assert digest_content["header"]["title"]["content"] == "5 alerts: grp-db"
    assert by_id["r0"].digest is None and by_id["r0"].message_id == "om_1"
    for rid in ("r1", "r2", "r3", "r4", "r5"):
        result = by_id[rid]
        assert result.status is Status.DELIVERED and result.message_id == "om_2"
        assert result.digest == {"key": "grp-db", "message_id": "om_2", "size": 5}
        encoded = orjson.loads(result.encode())
        assert encoded["version"] == 2 and encoded["digest"]["size"] == 5
    assert by_id["other"].digest is None and by_id["other"].message_id == "om_3"


async def test_a_lane_that_is_not_behind_sends_each_request_at_once() -> None:
    jobs = [job_of(card_request(f"r{i}"), i) for i in range(6)]
    published, transport = await run_lane(jobs, SETTINGS, hold_first=False)
    assert len(sends(transport)) == 6
    for _, result in published:
        assert result.digest is None and result.status is Status.DELIVERED
        assert orjson.loads(result.encode())["digest"] is None  # v2, but no digest


async def test_a_request_already_delivered_is_answered_not_merged() -> None:
    jobs = [job_of(card_request(f"r{i}"), i, age_s=30) for i in range(4)]
    transport = message_transport()
    pipeline, _ = make_pipeline(transport)
    digests = Digests(pipeline, SETTINGS)
    first = await pipeline.run(jobs[1])  # r1 delivered by an earlier read
    assert first is not None
    queued = deque(jobs[1:])
    group = digests.take(jobs[0], queued)
    assert len(group) == 4 and not queued
    alone, merged = await digests.plan(group)
    assert [j.request.request_id for j in alone] == ["r1"]
    [send] = merged
    assert [j.request.request_id for j in send.members] == ["r0", "r2", "r3"]
    assert send.job.request.idempotency_key == digest_key_for(send.members)
    await pipeline.aclose()


async def test_results_v1_stay_v1() -> None:
    jobs = [job_of(card_request(f"r{i}", digest_key=None), i) for i in range(2)]
    published, _ = await run_lane(jobs, SETTINGS, hold_first=False)
    for _, result in published:
        encoded = orjson.loads(result.encode())
        assert encoded["version"] == 1 and "digest" not in encoded


async def test_a_split_digest_gives_each_request_the_card_that_carried_it() -> None:
    long = "x" * 110
    jobs = [job_of(card_request(f"r{i}", title=f"{i} {long}"), i, age_s=30) for i in range(201)]
    published, transport = await run_lane(jobs, SETTINGS, hold_first=True)
    cards = sends(transport)
    assert len(cards) == 3  # r0 alone, then r1-r200 in two parts
    carried: dict[str, list[int]] = {}
    for _, result in published[1:]:
        assert result.digest is not None and result.message_id == result.digest["message_id"]
        carried.setdefault(str(result.message_id), []).append(result.digest["size"])
    assert len(carried) == 2
    for sizes in carried.values():  # each card's "size" is how many results name it
        assert set(sizes) == {len(sizes)}
    assert sum(len(sizes) for sizes in carried.values()) == 200


async def test_a_stop_between_a_digest_and_its_records_shows_each_request_at_most_once_more() -> (
    None
):
    """The card is delivered, the worker stops before its requests' keys are recorded, and
    the records are read again (README, "Idempotency" under digests): the same backlog is
    answered from the store, no second card; a backlog that regrouped (a new request
    joined it) is one new card, each earlier request on it once more."""
    store = MemoryStore()
    transport = message_transport()

    def card_key(rid: str) -> str:
        return job_of(card_request(rid)).request.idempotency_key

    async def one_round(rids: list[str], record: bool) -> Result:
        pipeline, _ = make_pipeline(transport, store=store)  # a worker (re)started
        jobs = [job_of(card_request(rid), i, age_s=30) for i, rid in enumerate(rids)]
        digests = Digests(pipeline, SETTINGS)
        alone, [send] = await digests.plan(digests.take(jobs[0], deque(jobs[1:])))
        assert not alone
        card = await pipeline.run(send.job)
        assert card is not None
        if record:
            await digests.results(send, card)
        await pipeline.aclose()
        return card

    first = await one_round(["r0", "r1", "r2", "r3"], record=False)  # stops before recording
    assert first.status is Status.DELIVERED and len(sends(transport)) == 1
    again = await one_round(["r0", "r1", "r2", "r3"], record=False)  # the same backlog
    # answered from the store: the first card, not a second one
    assert again.message_id == first.message_id and len(sends(transport)) == 1
    regrouped = await one_round(["r0", "r1", "r2", "r3", "r4"], record=True)  # one more card
    cards = sends(transport)
    assert regrouped.status is Status.DELIVERED and len(cards) == 2
    assert orjson.dumps(cards[1]).count(b"Alert r0") == 1
    assert (await store.lookup(card_key("r0"))).state is ClaimState.DONE  # recorded now
