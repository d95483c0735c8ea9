"""The pool budgets' writes that nothing waits for (``ratelimit_redis.py``): finishes and
lease renewals, each batched, each in a background task of its own.

Why in the background: a send's lane must not wait a round trip to Redis after the send
(the next send of the lane is what matters), and a pod with hundreds of sends finishing a
second would spend a call on each. One finish script is in flight at a time, for every
send finished meanwhile; one renewal runs per third of a lease, for every send on the wire.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .ratelimit import RateScope
from .ratelimit_redis_calls import MAX_BATCH, STORE_DOWN, BudgetCalls, Finish
from .ratelimit_share import longest


class Finisher:
    """Queued finishes, written in batches while Redis is in use (``back`` is set)."""

    def __init__(
        self,
        calls: BudgetCalls,
        clock: Callable[[], float],
        on_down: Callable[[BaseException, str], None],
    ) -> None:
        self._calls = calls
        self._clock = clock
        self._on_down = on_down
        self._queue: deque[Finish] = deque()
        self._kick = asyncio.Event()
        #: One writer of finishes at a time, so that :meth:`flush` can wait for a batch
        #: the loop has taken off the queue but not yet written.
        self._flushing = asyncio.Lock()
        self.back = asyncio.Event()  # set while Redis is in use (not in an outage)
        self.back.set()
        self.task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, finish: Finish) -> None:
        self._queue.append(finish)
        self._kick.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._loop(), name="budget:finish")

    async def _loop(self) -> None:
        """In an outage the finishes wait (with their local finish times) and are written
        when Redis answers: the pool then knows what was sent while it could not count."""
        while True:
            await self.back.wait()
            if not self._queue:
                self._kick.clear()
                await self._kick.wait()
                continue
            try:
                await self.flush()
            except STORE_DOWN as exc:
                self._on_down(exc, "budget_finish")

    async def flush(self) -> None:
        async with self._flushing:
            while self._queue:
                now = self._clock()
                batch: list[Finish] = []
                while self._queue and len(batch) < MAX_BATCH:
                    finish = self._queue.popleft()
                    # A finish older than every window of its scopes counts for nothing; an
                    # unused lease of an outage has long expired.
                    if finish.at is None or now - finish.at < max(map(longest, finish.scopes)):
                        batch.append(finish)
                if not batch:
                    continue
                try:
                    await self._calls.finish(batch, now)
                except BaseException:
                    self._queue.extendleft(reversed(batch))
                    raise


class Renewer:
    """Sends on the wire keep their leases: a lease lapses only when its pod is gone."""

    def __init__(
        self,
        calls: BudgetCalls,
        is_down: Callable[[], bool],
        on_down: Callable[[BaseException, str], None],
    ) -> None:
        self._calls = calls
        self._is_down = is_down
        self._on_down = on_down
        self.live: dict[str, tuple[RateScope, ...]] = {}  # lease → scopes
        self.task: asyncio.Task[None] | None = None

    def hold(self, lease: str, scopes: tuple[RateScope, ...]) -> None:
        self.live[lease] = scopes
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._loop(), name="budget:renew")

    def drop(self, lease: str) -> None:
        self.live.pop(lease, None)

    async def _loop(self) -> None:
        while self.live:
            await asyncio.sleep(self._calls.lease_s / 3)
            if self._is_down() or not self.live:
                continue
            try:
                await self._calls.renew(dict(self.live))
            except STORE_DOWN as exc:
                self._on_down(exc, "budget_renew")
