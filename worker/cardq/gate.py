"""The in-flight bound: at most ``delivery.max_in_flight`` sends on the wire at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Gate:
    """At most ``slots`` holders at once, the rest wait in FIFO order: ``async with gate``.

    What ``asyncio.Semaphore`` does, for less: on Python 3.11 every ``acquire`` builds a
    generator in ``locked()`` and every release walks the waiters, 4-5% of the worker's CPU
    when 1,000 lanes contend for 512 slots (bench/README.md, "Profiles"). A released slot is
    handed straight to the first waiter, so a newcomer can never overtake it.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
