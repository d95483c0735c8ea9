"""A clock the test moves, so a lease, a window or a token expires without a sleep.

Every part of cardq that reads the time takes a ``clock: Callable[[], float]`` (the
limiter, the stores, the simulator, the key check, the scrubber, the webhook signer); pass
a :class:`FakeClock` instead of ``time.monotonic`` and call :meth:`FakeClock.advance`.
A test that sleeps waits on the machine (slow, and flaky under load); one that advances a
clock waits on nothing and states the time it means.
"""

from __future__ import annotations


class FakeClock:
    """``clock = FakeClock(); limiter = RateLimiter(clock=clock); clock.advance(1.5)``.

    Starts well above zero (1000 s): code that treats ``0`` as "never" (a deadline not
    set yet) must not see a real time that looks like it.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the time forward (never back: the clocks it stands for are monotonic)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock never goes back ({seconds:g} s)")
        self.now += seconds
        return self.now
