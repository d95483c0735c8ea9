"""Priorities: urgent requests first for an app budget, with a share kept for the rest,
and first within their own lane (unit tests over the real in-process limiter)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cardq import priority
from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.digest import Digests
from cardq.job import Job
from cardq.models import Result, Status
from cardq.priority import Contest, PriorityLimiter
from cardq.ratelimit import RateLimiter, RateScope, Window
from cardq.scheduler import Scheduler
from tests.test_digest import SETTINGS, card_request, job_of, message_transport
from tests.test_pipeline import HeldLimiter, make_pipeline
from tests.test_ratelimit_redis import Pod, pods  # noqa: F401 (the fixture)

APP = RateScope("app", "app", (Window(1, 0.02),))  # 50 sends/s for the whole app


def chat(name: str) -> RateScope:
    return RateScope(f"chat/{name}", "destination", (Window(100, 1.0),))


async def test_contest_reserves_the_others_a_share() -> None:
    contest = Contest(share=0.8)
    for urgent in (False, False, True):
        contest.join(urgent, now=0.0)
    assert contest.may_go(True, now=0.1) and not contest.may_go(False, now=0.1)
    for _ in range(3):
        contest.granted(urgent=True, now=0.1)
        assert not contest.may_go(False, now=0.1)
    changed = contest.changed
    contest.granted(urgent=True, now=0.1)  # the fourth urgent send: one for the others
    assert changed.is_set()  # the waiters are told
    assert contest.may_go(False, now=0.1) and not contest.may_go(True, now=0.1)
    contest.granted(urgent=False, now=0.1)
    assert not contest.may_go(False, now=0.1) and contest.may_go(True, now=0.1)
    assert contest.may_go(False, now=0.1 + priority.STALL_S + 0.01)  # urgent ones stalled
    contest.leave(True, now=0.1)
    assert contest.may_go(False, now=0.1)


async def acquire_as(limiter: PriorityLimiter, level: str, scopes: tuple[RateScope, ...]) -> None:
    priority.CURRENT.set(level)
    await limiter.acquire(scopes)
    limiter.release(scopes)


async def urgent_among_normals(limiter: PriorityLimiter, app: RateScope, normals: int) -> list[str]:
    """``normals`` normal requests contend for ``app``; once three are sent an urgent one
    joins. The order they were granted in."""
    order: list[str] = []
    contended = asyncio.Event()

    async def one(name: str, level: str) -> None:
        await acquire_as(limiter, level, (chat(name), app))
        order.append(name)
        if len(order) == 3:
            contended.set()

    tasks = [asyncio.create_task(one(f"n{i}", "normal")) for i in range(normals)]
    await asyncio.wait_for(contended.wait(), 10)  # the budget is contended now
    tasks.append(asyncio.create_task(one("u", "urgent")))
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert len(order) == normals + 1
    return order


async def test_an_urgent_request_overtakes_the_waiting_normal_ones() -> None:
    limiter = PriorityLimiter(RateLimiter(margin=0.0), urgent_share=0.8)
    order = await urgent_among_normals(limiter, APP, 40)
    assert order.index("u") <= 4, order  # the next send or so, not behind ~37 normal ones


@pytest.mark.parametrize("share", [0.5, 0.8])
async def test_neither_class_starves_under_a_saturated_budget(share: float) -> None:
    limiter = PriorityLimiter(RateLimiter(margin=0.0), urgent_share=share)
    counts = {"urgent": 0, "normal": 0}
    stop = asyncio.Event()

    async def lane(name: str, level: str) -> None:
        while not stop.is_set():
            await acquire_as(limiter, level, (chat(name), APP))
            counts[level] += 1
            if sum(counts.values()) >= 100:
                stop.set()

    lanes = [asyncio.create_task(lane(f"u{i}", "urgent")) for i in range(5)]
    lanes += [asyncio.create_task(lane(f"n{i}", "normal")) for i in range(5)]
    await asyncio.wait_for(stop.wait(), 15)
    for task in lanes:
        task.cancel()
    await asyncio.gather(*lanes, return_exceptions=True)
    normal_share = counts["normal"] / sum(counts.values())
    assert 1 - share - 0.1 <= normal_share <= 1 - share + 0.1, counts


async def test_an_urgent_request_held_by_its_own_chat_holds_nobody_back() -> None:
    inner = RateLimiter(margin=0.0)
    limiter = PriorityLimiter(inner, urgent_share=0.8)
    busy = chat("busy")
    inner.cool_down((busy,), 3.0)  # the urgent request's chat throttled us
    urgent = asyncio.create_task(acquire_as(limiter, "urgent", (busy, APP)))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(5):
        await acquire_as(limiter, "normal", (chat(f"n{i}"), APP))
    assert loop.time() - started < 1.0  # at the app's pace, not after the cool-down
    assert not urgent.done()
    urgent.cancel()
    await asyncio.gather(urgent, return_exceptions=True)


async def test_without_an_app_scope_the_wrapper_passes_straight_through() -> None:
    limiter = PriorityLimiter(RateLimiter(margin=0.0), urgent_share=0.8)
    await acquire_as(limiter, "normal", (chat("a"),))
    assert not hasattr(limiter, "snapshot")  # the inner limiter's extras: through .inner
    assert limiter.inner.snapshot()["tracked"] == 1  # the chat's scope, counted


async def lane_order(
    transport: MockTransport, limiter: RateLimiter, started: asyncio.Event, go: Callable[[], None]
) -> list[str]:
    """n1 starts alone in a lane; once ``started`` is set, n2 (normal), n3 (low) and u1
    (urgent) are queued behind it, then ``go()``. The order of their results."""
    pipeline, _ = make_pipeline(transport, limiter=limiter)
    order: list[str] = []
    done = asyncio.Event()

    async def publish(job: Job, result: Result | None) -> None:
        order.append(job.request.request_id)
        if len(order) == 4:
            done.set()

    scheduler = Scheduler(pipeline, publish)
    scheduler.submit(job_of(card_request("n1", digest_key=None), 0))
    await asyncio.wait_for(started.wait(), 2)
    for i, (rid, level) in enumerate([("n2", "normal"), ("n3", "low"), ("u1", "urgent")], 1):
        scheduler.submit(job_of(card_request(rid, digest_key=None, priority=level), i))
    go()
    await asyncio.wait_for(done.wait(), 5)
    await scheduler.close()
    await pipeline.aclose()
    return order


async def test_an_urgent_request_goes_first_within_its_lane() -> None:
    held = HeldLimiter()
    order = await lane_order(message_transport(), held, held.asked, held.open.set)
    # n1 was only waiting for its budget: it stepped back for u1 and went next.
    assert order == ["u1", "n1", "n2", "n3"]


async def test_a_request_on_the_wire_does_not_step_back() -> None:
    platform = message_transport()
    on_wire, release = asyncio.Event(), asyncio.Event()

    async def slow(request: HttpRequest) -> Response:
        if "/im/v1/messages" in request.url and not release.is_set():
            on_wire.set()
            await release.wait()
        answer = platform.handler(request)
        assert isinstance(answer, Response)
        return answer

    order = await lane_order(MockTransport(slow), RateLimiter(margin=0.0), on_wire, release.set)
    assert order == ["n1", "u1", "n2", "n3"]


async def test_a_preempted_waiter_still_obeys_a_drain() -> None:
    """A normal request stepped back for an urgent one and cancelled by a drain at the same
    time ends cancelled: the drain wins."""
    inner = RateLimiter(margin=0.0)
    limiter = PriorityLimiter(inner, urgent_share=0.8)
    inner.cool_down((APP,), 0.3)  # everybody waits inside the limiter for a while
    normal = asyncio.create_task(acquire_as(limiter, "normal", (chat("n"), APP)))
    await asyncio.sleep(0.02)
    urgent = asyncio.create_task(acquire_as(limiter, "urgent", (chat("u"), APP)))
    await asyncio.sleep(0)  # the urgent one joins and preempts the normal one
    await asyncio.sleep(0)
    normal.cancel()  # and a drain cancels it
    results = await asyncio.gather(normal, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    await asyncio.wait_for(urgent, 2)


async def test_priorities_over_the_pools_redis_budget(
    pods: Callable[..., Pod],  # noqa: F811 (the fixture imported above)
) -> None:
    """The same order with the pool's limiter (budget in the real Redis): preempted
    waiters leave its per-app queue and take nothing."""
    pod = pods()
    limiter = PriorityLimiter(pod.limiter, urgent_share=0.8)
    app = RateScope("app-pool", "app", (Window(1, 0.02),), pooled=True)
    order = await urgent_among_normals(limiter, app, 30)
    assert order.index("u") <= 5, order


class CardHeld(RateLimiter):
    """The first routine send waits for ``first``; the next one (the digest card) for
    ``rest``, saying so in ``card_waiting``; urgent sends are never held."""

    def __init__(self) -> None:
        super().__init__(margin=0.0)
        self.first, self.rest, self.card_waiting = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.first_waiting = asyncio.Event()
        self.routine = 0

    async def acquire(self, scopes: tuple[RateScope, ...]) -> float:
        if priority.CURRENT.get() != "urgent":
            self.routine += 1
            if self.routine == 1:
                self.first_waiting.set()
                await self.first.wait()
            else:
                self.card_waiting.set()
                await self.rest.wait()
        return await super().acquire(scopes)


async def test_a_digest_card_waiting_for_budget_steps_back_for_an_urgent_request() -> None:
    """A lane behind its budget merges r1-r3 into a digest card; while the card waits for
    the app budget an urgent alert arrives in the lane: it is sent first, the card after."""
    limiter = CardHeld()
    pipeline, _ = make_pipeline(message_transport(), limiter=limiter)
    order: list[str] = []
    urgent_done, all_done = asyncio.Event(), asyncio.Event()

    async def publish(job: Job, result: Result | None) -> None:
        assert result is not None and result.status is Status.DELIVERED, result
        order.append(job.request.request_id)
        if job.request.request_id == "u1":
            urgent_done.set()
        if len(order) == 5:
            all_done.set()

    scheduler = Scheduler(pipeline, publish)
    scheduler.digests = Digests(pipeline, SETTINGS)
    scheduler.submit(job_of(card_request("r0"), 0, age_s=30))
    await asyncio.wait_for(limiter.first_waiting.wait(), 2)  # a backlog builds behind r0
    for i in range(1, 4):
        scheduler.submit(job_of(card_request(f"r{i}"), i, age_s=30))
    limiter.first.set()
    await asyncio.wait_for(limiter.card_waiting.wait(), 2)  # the digest card waits
    scheduler.submit(job_of(card_request("u1", digest_key=None, priority="urgent"), 4))
    await asyncio.wait_for(urgent_done.wait(), 2)  # not behind the card
    limiter.rest.set()
    await asyncio.wait_for(all_done.wait(), 2)
    await scheduler.close()
    await pipeline.aclose()
    assert order == ["r0", "u1", "r1", "r2", "r3"], order
