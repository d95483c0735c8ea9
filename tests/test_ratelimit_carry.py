"""A webhook bot's local budget across a takeover, over the real limiter and the real
Redis: a new owner (a second limiter, a second "pod") starts from what its predecessor
sent, finished or still on the wire, instead of from an empty window; a rebalance does not
count a predecessor's sends twice; with Redis gone, pacing stays local as before."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from cardq.devtools.broker import free_port
from cardq.metrics import Metrics
from cardq.ratelimit import RateScope, Window
from cardq.ratelimit_redis import PoolRateLimiter, budget_client
from cardq.store_health import StoreHealth, redis_address

LIMIT, WINDOW = 5, 2.0
BOT = RateScope("feishu_webhook/hook", "bot", (Window(LIMIT, WINDOW),))
APP = RateScope("app", "app", (Window(1000, 1.0),), pooled=True)


@pytest.fixture
async def pods(redis_url: str, redis_prefix: str) -> AsyncIterator[Callable[..., PoolRateLimiter]]:
    made: list[PoolRateLimiter] = []

    def make(*, url: str = redis_url, lease_s: float = 5.0) -> PoolRateLimiter:
        metrics = Metrics()
        limiter = PoolRateLimiter(
            budget_client(url, None),
            StoreHealth(redis_address(url), metrics),
            metrics,
            prefix=redis_prefix,
            margin=0.0,
            lease_s=lease_s,
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def send(limiter: PoolRateLimiter, n: int, scopes: tuple[RateScope, ...] = (BOT,)) -> float:
    """``n`` sends, each finished at once; return when the first one finished."""
    first = 0.0
    for _ in range(n):
        await limiter.acquire(scopes)
        limiter.release(scopes)
        first = first or time.monotonic()
    await limiter.settled()
    return first


async def granted_at(limiter: PoolRateLimiter) -> float:
    """One send to the bot; return when it was granted."""
    await limiter.acquire((BOT,))
    at = time.monotonic()
    limiter.release((BOT,))
    return at


async def test_a_new_owner_waits_for_the_window_its_predecessor_filled(
    pods: Callable[..., PoolRateLimiter],
) -> None:
    """The old owner fills the bot's window; the new owner's first send waits for it to
    end, where an empty local window would have sent at once (6 in one window)."""
    old, new = pods(), pods()
    first = await send(old, LIMIT)
    started = await granted_at(new)
    assert started >= first + WINDOW, started - first


async def test_a_killed_owners_sends_on_the_wire_count_until_their_leases_lapse(
    pods: Callable[..., PoolRateLimiter],
) -> None:
    """Granted, never finished, the owner gone (its leases no longer renewed): each send
    counts as finished when its lease lapses, so the new owner waits a window past that.
    Sent with an app scope too: one lease carries both (the app's in the shared script)."""
    old, new = pods(lease_s=0.6), pods()
    for _ in range(LIMIT):
        await old.acquire((BOT, APP))
    granted = time.monotonic()
    await old.settled()  # the holds reached Redis: what the write-behind does within ms
    await old.aclose()  # a kill, for the leases: nothing finishes or renews them
    started = await granted_at(new)
    assert started >= granted + WINDOW, started - granted


async def test_a_rebalance_reads_again_without_counting_a_send_twice(
    pods: Callable[..., PoolRateLimiter],
) -> None:
    """The bot moves to the new owner, back to the old one for a send, and to the new one
    again (an assignment in between): the new owner adds the one send it had not seen,
    not the two it already counted, so its window holds exactly 5 and the 6th waits."""
    old, new = pods(), pods()
    first = await send(old, 2)
    assert await new.acquire((BOT,)) < 0.2  # 3 of 5
    new.release((BOT,))
    new.set_share(1, 1)  # an assignment: the bot may have moved meanwhile
    await send(old, 1)
    assert await new.acquire((BOT,)) < 0.2  # 5 of 5, seeded with the 3rd only
    new.release((BOT,))
    started = await granted_at(new)
    assert started >= first + WINDOW, started - first


async def test_with_redis_gone_a_bot_is_paced_from_what_this_pod_saw(
    pods: Callable[..., PoolRateLimiter],
) -> None:
    """Nothing to read or write: the bot's sends go out as without a pool (no error, no
    wait for Redis), and the local window still holds the bot to its limit."""
    gone = pods(url=f"redis://127.0.0.1:{free_port()}")
    began = time.monotonic()
    for _ in range(LIMIT):
        await gone.acquire((BOT,))
        gone.release((BOT,))
    assert time.monotonic() - began < 1.0
    assert gone.in_fallback
    await gone.acquire((BOT,))
    assert time.monotonic() - began >= WINDOW
