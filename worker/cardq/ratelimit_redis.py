"""The pool's shared budgets in Redis: one app budget for every pod, not one per pod.

Why: a Feishu app allows 50 sends a second however many pods send for it. Pods that pace
the app each on their own send N times too much, and the platform answers the excess with
99991400. The rule stays the one of ``ratelimit.py`` (a send counts when it *finishes*; a
send on the wire holds a slot); only where it is counted changes, for the scopes marked
``pooled`` (an app, a chat every bot in it shares). A webhook bot's budget belongs to one
destination, so to one partition and one pod: it stays in the exact local limiter, and
its sends are written to Redis behind it so that a next owner starts from them
(``ratelimit_carry.py``).

How, per pooled scope, in Redis (its ``TIME`` is the only clock, so pods' clocks never
matter):

* ``…:done``, a sorted set of finish times; ``…:leases``, the sends on the wire, scored
  by when their lease runs out; ``…:cool``, the end of a cool-down after a throttle.
* One script per acquire checks every window of every scope of every waiting lane and
  either grants (adds a lease) or answers the lane's earliest free time. The pod sleeps
  until then: no polling, except while every slot is held by sends on the wire (their end
  is unknown until they finish; the script then says "ask again in ``recheck``").
* A pod has one queue per app (its *anchor* scope); the head of the queue asks once for
  the k lanes waiting on it, so at most one acquire per app is in flight per pod.
* Finishing turns the lease into a finish-time entry (batched, one script per batch); a
  live pod renews its leases, a dead pod's expire after ``budget_lease_s``.
* A throttle answer writes the cool-down key: every pod waits it out.

When Redis does not answer, each pod falls back to its *share* of every pooled budget
(the limit times the share of the requests topic's partitions it owns, at least one
send per window), never to the whole budget (``ratelimit_share.py``). The share starts
from what was sent before the outage, and the sends made on it are written to Redis when
it answers again; for one window after that a pod keeps within its share as well.

The scripts are in ``ratelimit_scripts.py``, the calls that spell them in
``ratelimit_redis_calls.py``, the background finishes and renewals in
``ratelimit_redis_writes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from .metrics import Metrics
from .ratelimit import RateLimiter, RateScope
from .ratelimit_carry import Carry
from .ratelimit_redis_calls import STORE_DOWN, BudgetCalls, Finish, budget_client
from .ratelimit_redis_queue import AppQueues
from .ratelimit_redis_writes import Finisher, Renewer
from .ratelimit_share import History, Share, longest
from .store_health import StoreHealth

__all__ = ["PoolRateLimiter", "budget_client"]

log = structlog.get_logger("cardq.ratelimit")

#: While every slot of a scope is held by sends on the wire, ask again after this long.
RECHECK_S = 0.02


@dataclass(slots=True, eq=False)
class _Ticket:
    local: tuple[RateScope, ...]
    pooled: tuple[RateScope, ...]
    lease: str
    in_redis: bool = False  # holds a lease in Redis
    carried: bool = False  # its local scopes' hold is queued (``ratelimit_carry.py``)
    share: RateLimiter | None = None  # the share limiter that granted it (an outage)
    shared_scopes: tuple[RateScope, ...] = ()


class PoolRateLimiter:
    """The :class:`~cardq.ratelimit.Limiter` of a pool whose store is Redis."""

    def __init__(
        self,
        client: Redis,
        health: StoreHealth,
        metrics: Metrics,
        *,
        prefix: str = "cardq:budget:",
        margin: float = 0.02,
        lease_s: float = 5.0,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._health = health
        self._metrics = metrics
        self._margin = margin
        self._clock = clock
        self._calls = BudgetCalls(
            client,
            health,
            metrics,
            prefix=prefix,
            margin=margin,
            lease_s=lease_s,
            recheck_s=recheck_s,
        )
        self._finisher = Finisher(self._calls, clock, self._store_down)
        self._renewer = Renewer(self._calls, lambda: self._outage, self._store_down)
        self._queues = AppQueues(
            self._calls, self._finisher, clock, lambda: self._outage, self._store_down
        )
        self._local = RateLimiter(margin=margin, clock=clock)
        self._ids = itertools.count()
        self._pod = uuid.uuid4().hex[:12]  # lease ids stay unique across restarts
        self._carry = Carry(
            self._calls, self._local, self._pod, clock, lambda: self._outage, self._store_down
        )
        self._tickets: dict[tuple[str, ...], deque[_Ticket]] = {}
        self._cool: dict[str, float] = {}  # pooled key → local end of its cool-down
        self._history = History(margin)
        self._owned = 0
        self._total = 0
        self._share: Share | None = None
        self._outage = False
        self._grace_until = 0.0  # until then a pod back from an outage keeps its share too
        self._max_span = 0.0  # the longest window of any pooled scope seen
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovering: asyncio.Task[None] | None = None
        self._closed = False
        health.on_change(self._on_health)

    # ------------------------------------------------------------------ the interface

    @property
    def in_fallback(self) -> bool:
        return self._outage

    @property
    def local(self) -> RateLimiter:
        """The budgets this pod keeps to itself (webhook bots), for the console."""
        return self._local

    def snapshot(self, top: int = 500) -> dict[str, Any]:
        """The pool's app budgets as this pod last heard of them from Redis (the console):
        the sends counted per window at the last answer, and the cool-downs this pod knows.
        A read of Redis per page view would cost a round trip for a picture that is old
        by the time it is drawn; the last answer is at most a few milliseconds old while
        lanes wait on the app, which is when the page matters."""
        scopes = self._queues.snapshot(self._cool, self._clock())
        return {
            "reach": "pool",
            "tracked": len(scopes),
            "scopes": scopes[:top],
            "fallback": self._outage,
        }

    def set_share(self, owned: int, total: int) -> None:
        self._carry.forget()  # called at every assignment: a bot may have moved meanwhile
        if (owned, total) == (self._owned, self._total):
            return
        self._owned, self._total = owned, total
        self._share = None  # the next outage send builds one with the new share
        log.info("budget_share", partitions_owned=owned, partitions_total=total)

    async def acquire(self, scopes: tuple[RateScope, ...]) -> float:
        if not scopes:
            return 0.0
        started = self._clock()
        local = tuple(s for s in scopes if not s.pooled)
        pooled = tuple(s for s in scopes if s.pooled)
        if local:
            await self._carry.seed(local)
            await self._local.acquire(local)
        lease = f"{self._pod}:{next(self._ids)}"
        try:
            ticket = await self._acquire_pooled(lease, local, pooled) if pooled else None
        except BaseException:
            if local:
                self._local.abandon(local)
            raise
        ticket = ticket or _Ticket(local, (), lease)
        if local and not self._outage:
            ticket.carried = True
            self._finisher.add(Finish(lease, self._clock(), local, hold=True))
            self._renewer.hold(lease, (*pooled, *local) if ticket.in_redis else local)
        self._tickets.setdefault(_keys(scopes), deque()).append(ticket)
        return self._clock() - started

    def release(self, scopes: Iterable[RateScope]) -> None:
        self._settle(tuple(scopes), used=True)

    def abandon(self, scopes: Iterable[RateScope]) -> None:
        self._settle(tuple(scopes), used=False)

    def cool_down(self, scopes: Iterable[RateScope], seconds: float) -> None:
        scopes = tuple(scopes)
        local = tuple(s for s in scopes if not s.pooled)
        pooled = tuple(s for s in scopes if s.pooled)
        if local:
            self._local.cool_down(local, seconds)
        if not pooled:
            return
        now = self._clock()
        if len(self._cool) > 1000:
            self._cool = {k: v for k, v in self._cool.items() if v > now}
        for scope in pooled:
            self._cool[scope.key] = max(self._cool.get(scope.key, 0.0), now + seconds)
        share = self._share
        if share is not None:
            share.limiter.cool_down(share.scaled(pooled), seconds)
        if not self._outage:
            self._spawn(self._cool_in_redis(pooled, seconds))

    async def settled(self) -> None:
        """Return once every finish queued so far and every cool-down started so far has
        reached Redis (or failed): what a caller, a test above all, waits for instead of
        guessing how long the background writes take."""
        if not self._outage:
            await self._finisher.flush()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish what can be finished in Redis (best effort: leases expire anyway)."""
        if self._closed:
            return
        self._closed = True
        if self._finisher and not self._outage:
            with contextlib.suppress(*STORE_DOWN):
                await asyncio.wait_for(self._finisher.flush(), timeout=2.0)
        tasks = [*self._tasks, *self._queues.tasks()]
        tasks += [
            t for t in (self._finisher.task, self._renewer.task, self._recovering) if t is not None
        ]
        # redis-py can swallow a cancellation that lands inside a command (the task then
        # goes on to its next wait, and a single cancel + gather hung for ever): cancel
        # again until every task has ended.
        while pending := [t for t in tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
        await asyncio.gather(*tasks, return_exceptions=True)  # all ended: collect errors
        await self._redis.aclose()

    # ------------------------------------------------------------------ acquiring

    async def _acquire_pooled(
        self, lease: str, local: tuple[RateScope, ...], pooled: tuple[RateScope, ...]
    ) -> _Ticket:
        ticket = _Ticket(local, pooled, lease)
        self._max_span = max(self._max_span, *map(longest, pooled))
        await self._wait_cool(pooled)
        if not self._outage and self._clock() < self._grace_until:
            # Just back from an outage: a pod still on its share does not write to Redis
            # yet, so for one window every pod keeps within its share as well.
            await self._take_share(ticket)
        try:
            while True:
                if not self._outage and await self._queues.wait(ticket.pooled, ticket.lease):
                    ticket.in_redis = True
                    self._renewer.hold(ticket.lease, pooled)
                    return ticket
                if ticket.share is not None:
                    return ticket  # the share holds it: Redis went away (or its queue broke)
                await self._take_share(ticket)
                if self._outage:
                    return ticket
                # Redis came back while this lane waited on the share: a send that Redis
                # does not know of would let the other pods overshoot. Take a lease too.
        except BaseException:
            if ticket.share is not None:
                ticket.share.abandon(ticket.shared_scopes)
            raise

    async def _take_share(self, ticket: _Ticket) -> None:
        share = self._current_share()
        scaled = share.scaled(ticket.pooled)
        await share.limiter.acquire(scaled)
        ticket.share, ticket.shared_scopes = share.limiter, scaled

    async def _wait_cool(self, pooled: tuple[RateScope, ...]) -> None:
        """A throttle answer seen by this pod holds its lanes at once, before Redis has
        the cool-down key (which holds every other pod)."""
        while True:
            left = max((self._cool.get(s.key, 0.0) for s in pooled), default=0.0) - self._clock()
            if left <= 0:
                return
            await asyncio.sleep(left)

    def _current_share(self) -> Share:
        share = self._share
        if share is None:
            share = self._share = Share(
                self._owned,
                self._total,
                self._margin,
                self._history,
                self._cool,
                self._queues.seen,
                self._clock,
            )
        return share

    # ------------------------------------------------------------------ finishing

    def _settle(self, scopes: tuple[RateScope, ...], *, used: bool) -> None:
        tickets = self._tickets.get(_keys(scopes))
        if not tickets:
            return
        ticket = tickets.popleft()
        if not tickets:
            del self._tickets[_keys(scopes)]
        now = self._clock()
        if ticket.local:
            if used:
                self._local.release(ticket.local)
            else:
                self._local.abandon(ticket.local)
        if used and ticket.pooled:
            self._history.add(ticket.pooled, now)
        if ticket.share is not None:
            if used:
                ticket.share.release(ticket.shared_scopes)
            else:
                ticket.share.abandon(ticket.shared_scopes)
        # A send made on the share (or a local one in an outage) is written to Redis when
        # it answers again; a lease taken there is finished, or dropped if unused.
        scopes = ticket.pooled if ticket.in_redis or used else ()
        scopes += ticket.local if ticket.carried or used else ()
        self._renewer.drop(ticket.lease)
        if scopes:
            self._finisher.add(Finish(ticket.lease, now if used else None, scopes))

    # ------------------------------------------------------------------ leases, cool-downs

    async def _cool_in_redis(self, pooled: tuple[RateScope, ...], seconds: float) -> None:
        try:
            await self._calls.cool(pooled, seconds)
        except STORE_DOWN as exc:
            self._store_down(exc, "budget_cool_down")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ outage

    def _store_down(self, exc: BaseException, op: str) -> None:
        self._health.failed(exc, op=op)
        self._enter_outage()

    def _enter_outage(self) -> None:
        if self._outage:
            return
        self._outage = True
        self._finisher.back.clear()
        self._share = None  # a fresh share limiter, seeded with this pod's recent sends
        self._metrics.budget_fallback.set(1)
        log.error(
            "budget_fallback_to_share",
            redis=self._health.address,
            partitions_owned=self._owned,
            partitions_total=self._total,
        )
        self._queues.all_to_share()

    def _on_health(self, reachable: bool) -> None:
        """Back when anything reaches Redis again (the probe, a claim). Gone only when a
        budget call fails: a claim's error on a stale connection is no reason to switch."""
        if reachable and self._outage and (self._recovering is None or self._recovering.done()):
            self._recovering = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        """Write the outage's sends to Redis first, then count there again."""
        try:
            await self._finisher.flush()
        except STORE_DOWN as exc:
            self._health.failed(exc, op="budget_finish")
            return
        self._outage = False
        self._grace_until = self._clock() + self._max_span * (1.0 + self._margin)
        self._finisher.back.set()
        self._metrics.budget_fallback.set(0)
        log.warning(
            "budget_shared_again",
            redis=self._health.address,
            share_kept_s=round(self._grace_until - self._clock(), 3),
        )


def _keys(scopes: Iterable[RateScope]) -> tuple[str, ...]:
    return tuple(s.key for s in scopes)
