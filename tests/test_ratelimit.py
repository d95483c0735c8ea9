"""The limiter against the platform's own counting rule: at most N in ANY window."""

from __future__ import annotations

import asyncio
import bisect

from cardq.ratelimit import RateLimiter, RateScope, Window
from cardq.testing import FakeClock


def drive(
    limiter: RateLimiter, clock: FakeClock, scopes: tuple[RateScope, ...], n: int
) -> list[float]:
    """Acquire ``n`` times as fast as allowed; return the grant times."""
    times = []
    for _ in range(n):
        wait = limiter.try_acquire(scopes)
        while wait > 0:
            clock.advance(wait)
            wait = limiter.try_acquire(scopes)
        times.append(clock.now)
        limiter.release(scopes)  # an instant send
    return times


def max_in_any_window(times: list[float], span: float) -> int:
    return max(bisect.bisect_left(times, t + span) - i for i, t in enumerate(times))


def test_webhook_windows_never_exceeded_and_rate_is_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(margin=0.0, clock=clock)
    scope = RateScope("bot", "bot", (Window(5, 1.0), Window(100, 60.0)))
    times = drive(limiter, clock, (scope,), 400)
    assert max_in_any_window(times, 1.0) == 5
    assert max_in_any_window(times, 60.0) == 100
    # Each minute: 100 sends paced at 5/s (19.8 s), then wait for the minute to roll over;
    # the 400th send goes out 3 min + 19 s after the first: 100% of both limits.
    assert times[-1] - times[0] == 199.0


def test_steady_arrivals_after_a_burst_never_overfill_a_window() -> None:
    """Why a sliding log and not a leaky bucket (aiolimiter's): a bucket of capacity N
    draining N/T lets a full burst through and then keeps admitting as it drains, 2N-1 in
    the first T, over the platform's N. Asked every 10 ms for two seconds, the limiter
    grants the burst, then nothing until the window slides: N per window, at full rate."""
    clock = FakeClock()
    limiter = RateLimiter(margin=0.0, clock=clock)
    scope = (RateScope("bot", "bot", (Window(5, 1.0),)),)
    granted = []
    for _ in range(200):
        if limiter.try_acquire(scope) == 0:
            granted.append(clock.now)
            limiter.release(scope)
        clock.advance(0.01)
    assert max_in_any_window(granted, 1.0) == 5
    assert len(granted) == 10  # and the full rate: 5 in each of the two seconds
    assert granted[4] - granted[0] < 0.05  # the first five at once (one per ask),
    assert granted[5] - granted[0] >= 1.0  # then none until the first left the window


def test_shared_app_scope_limits_all_destinations() -> None:
    clock = FakeClock()
    limiter = RateLimiter(margin=0.0, clock=clock)
    app = RateScope("app", "app", (Window(10, 1.0),))
    a = (RateScope("chat-a", "destination", (Window(5, 1.0),)), app)
    b = (RateScope("chat-b", "destination", (Window(5, 1.0),)), app)
    granted = [limiter.try_acquire(a) == 0 for _ in range(5)] + [
        limiter.try_acquire(b) == 0 for _ in range(5)
    ]
    limiter.release([*a, *b])
    assert all(granted)
    assert limiter.try_acquire(a) > 0  # chat-a is full
    assert limiter.try_acquire(b) > 0  # chat-b is full
    c = (RateScope("chat-c", "destination", (Window(5, 1.0),)), app)
    assert limiter.try_acquire(c) > 0  # the app is full even for a fresh chat


def test_cool_down_delays_until_reset() -> None:
    clock = FakeClock()
    limiter = RateLimiter(margin=0.0, clock=clock)
    scope = RateScope("chat", "destination", (Window(5, 1.0),))
    limiter.cool_down([scope], 7.5)
    assert limiter.try_acquire((scope,)) == 7.5
    clock.advance(7.5)
    assert limiter.try_acquire((scope,)) == 0


def test_margin_stretches_each_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(margin=0.1, clock=clock)
    scope = RateScope("chat", "destination", (Window(2, 1.0),))
    times = drive(limiter, clock, (scope,), 6)
    assert max_in_any_window(times, 1.1) == 2


async def test_acquire_waits_without_blocking_other_scopes() -> None:
    limiter = RateLimiter(margin=0.0)
    busy = (RateScope("busy", "destination", (Window(1, 60.0),)),)
    quiet = (RateScope("quiet", "destination", (Window(1, 60.0),)),)
    assert await limiter.acquire(busy) < 0.01
    assert limiter.try_acquire(busy) == float("inf")  # held by a send on the wire
    limiter.release(busy)
    assert limiter.try_acquire(busy) > 59  # the busy scope must now wait a minute
    assert await limiter.acquire(quiet) < 0.01  # and the quiet one does not care


def test_a_late_send_is_counted_when_it_finished() -> None:
    """The platform sees a send arrive between its start and its end: count the end."""
    clock = FakeClock()
    limiter = RateLimiter(margin=0.0, clock=clock)
    scope = (RateScope("chat", "destination", (Window(2, 1.0),)),)
    assert limiter.try_acquire(scope) == 0
    assert limiter.try_acquire(scope) == 0
    clock.advance(0.3)  # both sends were slow to leave (a token fetch, say)
    limiter.release(scope)
    limiter.release(scope)
    assert limiter.try_acquire(scope) == 1.0  # one full window after they finished


async def test_waiter_wakes_when_a_send_finishes() -> None:
    limiter = RateLimiter(margin=0.0)
    scope = (RateScope("chat", "destination", (Window(1, 0.01),)),)
    await limiter.acquire(scope)
    waiter = asyncio.ensure_future(limiter.acquire(scope))
    await asyncio.sleep(0.05)  # a long time for a 10 ms window: only the release can wake it
    assert not waiter.done()
    limiter.release(scope)
    assert await asyncio.wait_for(waiter, 1.0) >= 0.0
