"""The pool's budgets in the real Redis: several limiters ("pods") share one app budget
under the rule of ``ratelimit.py``, answer the earliest free time, share cool-downs, free
a dead pod's leases, and fall back to their share of the budget when Redis is gone."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from cardq.config import ConfigError, from_mapping
from cardq.devtools.redis_server import RedisServer
from cardq.metrics import Metrics
from cardq.ratelimit import RateScope, Window
from cardq.ratelimit_redis import PoolRateLimiter, budget_client
from cardq.ratelimit_share import share_of
from cardq.store_health import StoreHealth, redis_address
from tests import helpers


@dataclass
class Pod:
    limiter: PoolRateLimiter
    health: StoreHealth
    metrics: Metrics

    def calls(self, script: str) -> float:
        return float(self.metrics.budget_calls.labels(script)._value.get())


@pytest.fixture
async def pods(redis_url: str, redis_prefix: str) -> AsyncIterator[Callable[..., Pod]]:
    """Build limiters sharing the test's prefix in the session's Redis, closed afterwards."""
    made: list[Pod] = []

    def make(*, url: str = redis_url, lease_s: float = 5.0, margin: float = 0.0) -> Pod:
        metrics = Metrics()
        health = StoreHealth(redis_address(url), metrics)
        limiter = PoolRateLimiter(
            budget_client(url, None),
            health,
            metrics,
            prefix=redis_prefix,
            margin=margin,
            lease_s=lease_s,
        )
        pod = Pod(limiter, health, metrics)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        await pod.limiter.aclose()


def app(limit: int, seconds: float, name: str = "app") -> RateScope:
    return RateScope(name, "app", (Window(limit, seconds),), pooled=True)


def chat(name: str, limit: int = 1000, seconds: float = 1.0) -> RateScope:
    return RateScope(f"chat/{name}", "destination", (Window(limit, seconds),), pooled=True)


@dataclass
class Send:
    pod: str
    start: float
    finish: float


async def lane(
    name: str,
    limiter: PoolRateLimiter,
    scopes: tuple[RateScope, ...],
    sends: list[Send],
    until: float,
    duration: Callable[[], float],
) -> None:
    while time.monotonic() < until:
        await limiter.acquire(scopes)
        start = time.monotonic()
        await asyncio.sleep(duration())
        finish = time.monotonic()
        limiter.release(scopes)
        sends.append(Send(name, start, finish))


def most_in_a_window(sends: list[Send], span: float) -> int:
    """What the platform could count at worst: for each send, itself and every send that
    started no later and finished within ``span`` before it started (or was on the wire)."""
    return max(
        sum(1 for t in sends if t.start <= s.start and t.finish > s.start - span) for s in sends
    )


async def test_two_pods_never_exceed_the_shared_app_window(pods: Callable[..., Pod]) -> None:
    """Two pods, 20 lanes each (own chats), one app of 10 per 0.5 s; sends take 0-40 ms so
    leases matter: no window ever holds more than 10, and the app runs near its limit."""
    a, b = pods(), pods()
    budget = app(10, 0.5)
    sends: list[Send] = []
    began = time.monotonic()
    until = began + 2.5
    rng = random.Random(7)

    def jitter() -> float:
        return rng.uniform(0, 0.04)

    await asyncio.gather(
        *(
            lane(name, pod.limiter, (chat(f"{name}{i}"), budget), sends, until, jitter)
            for name, pod in (("a", a), ("b", b))
            for i in range(20)
        )
    )
    assert most_in_a_window(sends, 0.5) <= 10
    # The rule's own ceiling: a slot comes back one window after its send finished.
    ceiling = 10 * (until - began) / (0.5 + 0.02)
    assert len(sends) >= 0.75 * ceiling, (len(sends), ceiling)
    for name in ("a", "b"):  # each pod got a fair part of the budget
        assert sum(1 for s in sends if s.pod == name) >= 0.3 * len(sends)


async def test_long_sends_hold_their_leases(pods: Callable[..., Pod]) -> None:
    """Sends on the wire count: with 3 slots and sends of 0.3 s, never more than 3 at once
    across both pods, and no window of 0.2 s holds more than 3."""
    a, b = pods(), pods()
    budget = app(3, 0.2)
    sends: list[Send] = []
    until = time.monotonic() + 1.5
    await asyncio.gather(
        *(
            lane(name, pod.limiter, (chat(f"{name}{i}"), budget), sends, until, lambda: 0.3)
            for name, pod in (("a", a), ("b", b))
            for i in range(5)
        )
    )
    at_once = max(sum(1 for t in sends if t.start <= s.start < t.finish) for s in sends)
    assert at_once <= 3
    assert most_in_a_window(sends, 0.2) <= 3
    assert len(sends) >= 6


async def test_the_answer_is_the_earliest_free_time(pods: Callable[..., Pod]) -> None:
    """A full window is answered with the instant its oldest send leaves it: the waiting
    pod asks Redis twice (the answer, then the grant), it does not poll."""
    a, b = pods(), pods()
    budget = app(3, 1.0)
    for _ in range(3):
        await a.limiter.acquire((budget,))
        a.limiter.release((budget,))
    first_finish = time.monotonic()
    await a.limiter.settled()  # a's finishes are in Redis
    waited = await b.limiter.acquire((budget,))
    b.limiter.release((budget,))
    freed = time.monotonic() - first_finish
    assert 0.95 <= freed <= 1.3, freed
    assert waited >= 0.8
    assert b.calls("acquire") <= 3  # polling every 20 ms would be about 45


async def test_one_ask_covers_every_waiting_lane(pods: Callable[..., Pod]) -> None:
    """30 lanes of one pod waiting on one app: the pod asks for all of them at once."""
    pod = pods()
    budget = app(30, 1.0)
    await asyncio.gather(*(pod.limiter.acquire((chat(f"c{i}"), budget)) for i in range(30)))
    assert pod.calls("acquire") <= 2


async def test_a_throttle_cools_the_scope_down_for_every_pod(
    pods: Callable[..., Pod],
) -> None:
    a, b = pods(), pods()
    budget = app(100, 1.0)
    a.limiter.cool_down((budget,), 0.6)
    started = time.monotonic()
    local = asyncio.ensure_future(a.limiter.acquire((budget,)))
    await a.limiter.settled()  # the cool-down key is written in the background
    waited_b = await b.limiter.acquire((budget,))
    await local
    assert time.monotonic() - started >= 0.55
    assert waited_b >= 0.45


async def test_a_dead_pods_leases_lapse_into_sends_and_a_live_pods_are_renewed(
    pods: Callable[..., Pod],
) -> None:
    budget = app(2, 1.0)
    live, waiting = pods(lease_s=0.4), pods(lease_s=0.4)
    await live.limiter.acquire((budget,))
    await live.limiter.acquire((budget,))
    blocked = asyncio.ensure_future(waiting.limiter.acquire((budget,)))
    await asyncio.sleep(1.2)  # three lease periods: the live pod keeps renewing
    assert not blocked.done()
    assert live.calls("renew") >= 2
    # Now the pod dies with both sends on the wire: no finish, no more renewals.
    await live.limiter.aclose()
    died = time.monotonic()
    await asyncio.wait_for(blocked, timeout=4)
    # Renewed at most a third of a lease before, the leases lapse 0.27 to 0.4 s later and
    # then count as sends finished then (they may have reached the platform): the slot
    # is free one window (1 s) after the lapse, not at it.
    assert 0.2 + 1.0 <= time.monotonic() - died <= 0.4 + 1.0 + 0.3


def test_a_pods_share_is_rounded_down_and_at_least_one() -> None:
    assert share_of(Window(50, 1.0), 2, 6) == Window(16, 1.0)
    assert share_of(Window(50, 1.0), 6, 6) == Window(50, 1.0)
    assert share_of(Window(5, 1.0), 1, 6) == Window(1, 1.0)
    assert share_of(Window(1000, 60.0), 0, 0) == Window(1, 60.0)


async def test_outage_falls_back_to_the_share_then_writes_back(
    pods: Callable[..., Pod], own_redis: RedisServer, redis_prefix: str
) -> None:
    """Redis goes away: the pod (2 of 6 partitions) sends at most its share, 10 of 30 per
    second, counting its own sends from just before; when Redis answers again, the sends of
    the outage are written there, and the budget is shared again."""
    pod = pods(url=own_redis.url)
    pod.limiter.set_share(2, 6)
    budget = app(30, 1.0)
    for _ in range(4):  # shared mode: 4 sends of this pod in the current window
        await pod.limiter.acquire((budget,))
        pod.limiter.release((budget,))
    await asyncio.to_thread(own_redis.stop)
    pinger = budget_client(own_redis.url, None)
    probe = asyncio.ensure_future(pod.health.watch(pinger.ping, 0.1))
    try:
        sends: list[float] = []

        async def send() -> None:
            await pod.limiter.acquire((budget,))
            sends.append(time.monotonic())
            pod.limiter.release((budget,))

        started = time.monotonic()
        tasks = [asyncio.ensure_future(send()) for _ in range(20)]
        await asyncio.sleep(0.5)
        assert pod.limiter.in_fallback
        assert pod.metrics.budget_fallback._value.get() == 1
        assert not pod.health.reachable
        assert pod.metrics.store_reachable._value.get() == 0
        assert pod.metrics.store_unreachable_seconds._value.get() > 0
        assert len([t for t in sends if t - started < 0.5]) == 10 - 4  # the share, less the 4
        await asyncio.to_thread(own_redis.start)
        await helpers.until(lambda: not pod.limiter.in_fallback, "the pod left its fallback", 5)
        async with aioredis.Redis.from_url(own_redis.url) as client:
            # The fresh Redis knows the sends made while it was gone.
            held = await client.zcard(redis_prefix + "app:done")
        assert held >= 6
        assert pod.metrics.budget_fallback._value.get() == 0
        assert pod.health.unreachable_for() == 0
        assert pod.metrics.store_reachable._value.get() == 1
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        await pinger.aclose()


async def test_outage_counts_the_pools_sends_not_only_the_pods_own(
    pods: Callable[..., Pod], own_redis: RedisServer
) -> None:
    """Pod A sent 8 and pod B 2 of the window's 10; each owns half the partitions. When
    Redis goes, B must not add 3 sends (its share of 5 less its own 2) on top of a full
    window: it counts its share of the pool's 10, so it waits for the window to pass."""
    a, b = pods(url=own_redis.url), pods(url=own_redis.url)
    for pod in (a, b):
        pod.limiter.set_share(3, 6)
    budget = app(10, 1.0)
    for pod, sends in ((a, 8), (b, 2)):
        for _ in range(sends):
            await pod.limiter.acquire((budget,))
            pod.limiter.release((budget,))
    await asyncio.to_thread(own_redis.stop)
    started = time.monotonic()
    late = asyncio.ensure_future(b.limiter.acquire((budget,)))
    await asyncio.sleep(0.5)
    assert b.limiter.in_fallback
    assert not late.done()  # own sends alone would have let it through at once
    await asyncio.wait_for(late, timeout=3)
    assert time.monotonic() - started >= 0.8


def test_the_log_names_where_redis_is_never_the_password() -> None:
    assert redis_address("redis://:s3cret@redis-master:6380/2") == "redis-master:6380/2"
    assert redis_address("rediss://user:s3cret@10.0.0.5") == "10.0.0.5:6379/0"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("budget_lease_s", 0, "must be more than 0; got 0"),
        ("unready_after_s", -1, "must be more than 0; got -1"),
    ],
)
def test_bad_budget_settings_name_the_key(key: str, value: float, reason: str) -> None:
    with pytest.raises(ConfigError, match=rf"idempotency\.{key}: {reason}"):
        from_mapping({"idempotency": {key: value}}, env={})


async def test_the_console_sees_the_pools_budget_and_the_pods_own(
    pods: Callable[..., Pod],
) -> None:
    from cardq.console.state import budget_sources

    a, b = pods(), pods()
    budget = app(10, 1.0)
    for _ in range(3):
        await a.limiter.acquire((budget,))
        a.limiter.release((budget,))
    await a.limiter.settled()  # a's finishes are in Redis
    await b.limiter.acquire((budget,))  # b's answer counts a's three and its own lease
    pod_view, pool_view = budget_sources(b.limiter)
    assert pod_view is b.limiter.local and pool_view is b.limiter
    snap = b.limiter.snapshot()
    assert snap["reach"] == "pool" and snap["fallback"] is False
    (scope,) = snap["scopes"]
    assert scope["key"] == "app"
    assert scope["windows"] == [{"limit": 10, "seconds": 1.0, "used": 4}]
