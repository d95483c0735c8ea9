"""The lanes of one pod that wait on a pool budget (``ratelimit_redis.py``), one queue per
app: the head of each queue has one acquire in flight, for every lane that may be due.

Why a queue per app and not a call per lane: 300 lanes of one app asking Redis on their
own would cost 300 round trips each time the app's window moves, and their answers would
race. The head asks once for the k lanes waiting (up to ``MAX_BATCH``) and sleeps until the
earliest time Redis answered: no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from .ratelimit import RateScope
from .ratelimit_redis_calls import MAX_BATCH, STORE_DOWN, BudgetCalls, Finish
from .ratelimit_redis_writes import Finisher
from .ratelimit_share import Seen

log = structlog.get_logger("cardq.ratelimit")


@dataclass(slots=True, eq=False)
class _Waiter:
    scopes: tuple[RateScope, ...]
    lease: str
    future: asyncio.Future[bool]  # True: granted in Redis; False: use the share limiter
    until: float = 0.0  # local time before which Redis said no


@dataclass(slots=True, eq=False)
class _Queue:
    """The lanes of one pod waiting on one anchor scope (an app)."""

    waiters: list[_Waiter] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    anchor_free_at: float = 0.0


class AppQueues:
    """Every queue of one pod, by anchor. What Redis answered about each anchor's windows
    is kept in ``seen`` and ``anchor_scopes`` (the share and the console read them)."""

    def __init__(
        self,
        calls: BudgetCalls,
        finisher: Finisher,
        clock: Callable[[], float],
        is_down: Callable[[], bool],
        on_down: Callable[[BaseException, str], None],
    ) -> None:
        self._calls = calls
        self._finisher = finisher
        self._clock = clock
        self._is_down = is_down
        self._on_down = on_down
        self._queues: dict[str, _Queue] = {}
        self.seen: dict[str, Seen] = {}  # anchor → the pool's sends at the last answer
        self.anchor_scopes: dict[str, RateScope] = {}

    async def wait(self, pooled: tuple[RateScope, ...], lease: str) -> bool:
        """True: Redis granted a lease; False: Redis is gone, take the share instead."""
        waiter = _Waiter(pooled, lease, asyncio.get_running_loop().create_future())
        queue = self._queue(anchor(pooled))
        queue.waiters.append(waiter)
        queue.wake.set()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.result():
                self._finisher.add(Finish(lease, None, pooled))
            with contextlib.suppress(ValueError):
                queue.waiters.remove(waiter)
            raise

    def all_to_share(self) -> None:
        """Redis is gone: every waiting lane goes on with the share."""
        for queue in self._queues.values():
            _to_share(queue)
            queue.wake.set()

    def snapshot(self, cool: dict[str, float], now: float) -> list[dict[str, Any]]:
        """Every app as the last answer described it, cooling down first, then fullest
        (``PoolRateLimiter.snapshot``)."""
        scopes: list[dict[str, Any]] = []
        ranks: list[tuple[bool, float]] = []
        for key, seen in self.seen.items():
            scope = self.anchor_scopes.get(key)
            if scope is None:
                continue
            windows = []
            fill = 0.0
            for window, count in zip(
                (w for w in scope.windows if w.limit > 0), seen.counts, strict=False
            ):
                used = count if now - seen.at < window.seconds else 0
                fill = max(fill, used / window.limit)
                windows.append({"limit": window.limit, "seconds": window.seconds, "used": used})
            left = max(0.0, cool.get(key, 0.0) - now)
            ranks.append((left > 0, fill))
            scopes.append(
                {"key": key, "windows": windows, "cooling_s": round(left, 3), "fill": fill}
            )
        order = sorted(range(len(scopes)), key=ranks.__getitem__, reverse=True)
        return [scopes[i] for i in order]

    def tasks(self) -> list[asyncio.Task[None]]:
        return [q.task for q in self._queues.values() if q.task is not None]

    def _queue(self, key: str) -> _Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        if queue.task is None or queue.task.done():
            queue.task = asyncio.create_task(self._serve(key, queue), name=f"budget:{key}")
        return queue

    async def _serve(self, key: str, queue: _Queue) -> None:
        """The head of one queue: one acquire in flight, for every lane that may be due."""
        try:
            while queue.waiters:
                if self._is_down():
                    _to_share(queue)
                    return
                now = self._clock()
                due = min(max(w.until, queue.anchor_free_at) for w in queue.waiters)
                if due > now:
                    queue.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.wake.wait(), due - now)
                    continue
                batch = [w for w in queue.waiters if max(w.until, queue.anchor_free_at) <= now][
                    :MAX_BATCH
                ]
                try:
                    waits = await self._calls.ask(key, ((w.lease, w.scopes) for w in batch))
                except STORE_DOWN as exc:
                    self._on_down(exc, "budget_acquire")
                    continue
                received = self._clock()
                queue.anchor_free_at = received + waits[0] / 1e6
                self.seen[key] = Seen(received, tuple(waits[1 + len(batch) :]))
                self.anchor_scopes[key] = next(s for s in batch[0].scopes if s.key == key)
                granted = set()
                for waiter, wait in zip(batch, waits[1 : 1 + len(batch)], strict=True):
                    if wait == 0:
                        granted.add(waiter)
                        if not waiter.future.done():
                            waiter.future.set_result(True)
                        else:  # cancelled while asking: give the lease back
                            self._finisher.add(Finish(waiter.lease, None, waiter.scopes))
                    else:
                        waiter.until = received + wait / 1e6
                if granted:
                    queue.waiters = [w for w in queue.waiters if w not in granted]
        except Exception:
            # A bug here must not leave lanes waiting for ever: they go on with the share.
            log.exception("budget_queue_failed", anchor=key)
            _to_share(queue)
        finally:
            if self._queues.get(key) is queue and not queue.waiters:
                del self._queues[key]


def _to_share(queue: _Queue) -> None:
    for waiter in queue.waiters:
        if not waiter.future.done():
            waiter.future.set_result(False)
    queue.waiters.clear()


def anchor(pooled: tuple[RateScope, ...]) -> str:
    """The app if the send has one (the budget every lane of the app waits on)."""
    for scope in pooled:
        if scope.kind == "app":
            return scope.key
    return pooled[-1].key
