"""The pool's shared budgets in Redis: one app budget for every pod, not one per pod.

Why: a Feishu app allows 50 sends a second however many pods send for it. Pods that pace
the app each on their own send N times too much, and the platform answers the excess with
99991400. The rule stays the one of ``ratelimit.py`` (a send counts when it *finishes*; a
send on the wire holds a slot); only where it is counted changes, for the scopes marked
``pooled`` (an app, a chat every bot in it shares). A webhook bot's budget belongs to one
destination, so to one partition and one pod: it stays in the exact local limiter.

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

The scripts are in ``ratelimit_scripts.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import ratelimit_scripts as scripts
from .metrics import Metrics
from .ratelimit import RateLimiter, RateScope
from .ratelimit_share import History, Seen, Share, longest
from .store_health import StoreHealth

log = structlog.get_logger("cardq.ratelimit")

#: Lanes asked for in one acquire; more wait for the next round.
MAX_BATCH = 64
#: While every slot of a scope is held by sends on the wire, ask again after this long.
RECHECK_S = 0.02

_STORE_DOWN = (RedisError, OSError, asyncio.TimeoutError)


def _us(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


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


@dataclass(slots=True, eq=False)
class _Ticket:
    local: tuple[RateScope, ...]
    pooled: tuple[RateScope, ...]
    lease: str
    in_redis: bool = False  # holds a lease in Redis
    share: RateLimiter | None = None  # the share limiter that granted it (an outage)
    shared_scopes: tuple[RateScope, ...] = ()


@dataclass(slots=True)
class _Finish:
    lease: str
    at: float | None  # local finish time; None: never sent
    scopes: tuple[RateScope, ...]


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
        self._prefix = prefix
        self._margin = margin
        self._lease_s = lease_s
        self._recheck_s = recheck_s
        self._clock = clock
        self._acquire_script: Any = client.register_script(scripts.ACQUIRE)
        self._finish_script: Any = client.register_script(scripts.FINISH)
        self._renew_script: Any = client.register_script(scripts.RENEW)
        self._cool_script: Any = client.register_script(scripts.COOL)
        self._local = RateLimiter(margin=margin, clock=clock)
        self._ids = itertools.count()
        self._pod = uuid.uuid4().hex[:12]  # lease ids stay unique across restarts
        self._queues: dict[str, _Queue] = {}
        self._tickets: dict[tuple[str, ...], deque[_Ticket]] = {}
        self._live: dict[str, tuple[RateScope, ...]] = {}  # lease → scopes, to renew
        self._finishes: deque[_Finish] = deque()
        self._finish_kick = asyncio.Event()
        #: One writer of finishes at a time, so that :meth:`settled` can wait for a batch
        #: the finish loop has taken off the queue but not yet written.
        self._flushing = asyncio.Lock()
        self._cool: dict[str, float] = {}  # pooled key → local end of its cool-down
        self._history = History(margin)
        self._seen: dict[str, Seen] = {}  # anchor → the pool's sends at the last answer
        self._anchor_scopes: dict[str, RateScope] = {}
        self._owned = 0
        self._total = 0
        self._share: Share | None = None
        self._outage = False
        self._grace_until = 0.0  # until then a pod back from an outage keeps its share too
        self._max_span = 0.0  # the longest window of any pooled scope seen
        self._back = asyncio.Event()  # set while Redis is in use (not in an outage)
        self._back.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._finisher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
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
        now = self._clock()
        scopes: list[dict[str, Any]] = []
        ranks: list[tuple[bool, float]] = []
        for key, seen in self._seen.items():
            scope = self._anchor_scopes.get(key)
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
            cool = max(0.0, self._cool.get(key, 0.0) - now)
            ranks.append((cool > 0, fill))
            scopes.append(
                {"key": key, "windows": windows, "cooling_s": round(cool, 3), "fill": fill}
            )
        order = sorted(range(len(scopes)), key=ranks.__getitem__, reverse=True)
        return {
            "reach": "pool",
            "tracked": len(scopes),
            "scopes": [scopes[i] for i in order[:top]],
            "fallback": self._outage,
        }

    def set_share(self, owned: int, total: int) -> None:
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
            await self._local.acquire(local)
        try:
            ticket = await self._acquire_pooled(local, pooled) if pooled else _Ticket(local, (), "")
        except BaseException:
            if local:
                self._local.abandon(local)
            raise
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
            await self._flush_finishes()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish what can be finished in Redis (best effort: leases expire anyway)."""
        if self._closed:
            return
        self._closed = True
        if self._finishes and not self._outage:
            with contextlib.suppress(*_STORE_DOWN):
                await asyncio.wait_for(self._flush_finishes(), timeout=2.0)
        tasks = [*self._tasks, *(q.task for q in self._queues.values() if q.task is not None)]
        tasks += [t for t in (self._finisher, self._renewer, self._recovering) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._redis.aclose()

    # ------------------------------------------------------------------ acquiring

    async def _acquire_pooled(
        self, local: tuple[RateScope, ...], pooled: tuple[RateScope, ...]
    ) -> _Ticket:
        ticket = _Ticket(local, pooled, f"{self._pod}:{next(self._ids)}")
        self._max_span = max(self._max_span, *map(longest, pooled))
        await self._wait_cool(pooled)
        if not self._outage and self._clock() < self._grace_until:
            # Just back from an outage: a pod still on its share does not write to Redis
            # yet, so for one window every pod keeps within its share as well.
            await self._take_share(ticket)
        try:
            while True:
                if not self._outage and await self._wait_in_queue(ticket):
                    ticket.in_redis = True
                    self._live[ticket.lease] = pooled
                    self._ensure_renewer()
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

    async def _wait_in_queue(self, ticket: _Ticket) -> bool:
        """True: Redis granted a lease; False: Redis is gone, take the share instead."""
        waiter = _Waiter(ticket.pooled, ticket.lease, asyncio.get_running_loop().create_future())
        queue = self._queue(_anchor(ticket.pooled))
        queue.waiters.append(waiter)
        queue.wake.set()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.result():
                self._enqueue_finish(_Finish(ticket.lease, None, ticket.pooled))
            with contextlib.suppress(ValueError):
                queue.waiters.remove(waiter)
            raise

    async def _wait_cool(self, pooled: tuple[RateScope, ...]) -> None:
        """A throttle answer seen by this pod holds its lanes at once, before Redis has
        the cool-down key (which holds every other pod)."""
        while True:
            left = max((self._cool.get(s.key, 0.0) for s in pooled), default=0.0) - self._clock()
            if left <= 0:
                return
            await asyncio.sleep(left)

    def _queue(self, anchor: str) -> _Queue:
        queue = self._queues.get(anchor)
        if queue is None:
            queue = self._queues[anchor] = _Queue()
        if queue.task is None or queue.task.done():
            queue.task = asyncio.create_task(self._serve(anchor, queue), name=f"budget:{anchor}")
        return queue

    async def _serve(self, anchor: str, queue: _Queue) -> None:
        """The head of one queue: one acquire in flight, for every lane that may be due."""
        try:
            while queue.waiters:
                if self._outage:
                    self._to_share(queue)
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
                    waits = await self._ask(anchor, batch)
                except _STORE_DOWN as exc:
                    self._store_down(exc, "budget_acquire")
                    continue
                received = self._clock()
                queue.anchor_free_at = received + waits[0] / 1e6
                self._seen[anchor] = Seen(received, tuple(waits[1 + len(batch) :]))
                self._anchor_scopes[anchor] = next(s for s in batch[0].scopes if s.key == anchor)
                granted = set()
                for waiter, wait in zip(batch, waits[1 : 1 + len(batch)], strict=True):
                    if wait == 0:
                        granted.add(waiter)
                        if not waiter.future.done():
                            waiter.future.set_result(True)
                        else:  # cancelled while asking: give the lease back
                            self._enqueue_finish(_Finish(waiter.lease, None, waiter.scopes))
                    else:
                        waiter.until = received + wait / 1e6
                if granted:
                    queue.waiters = [w for w in queue.waiters if w not in granted]
        except Exception:
            # A bug here must not leave lanes waiting for ever: they go on with the share.
            log.exception("budget_queue_failed", anchor=anchor)
            self._to_share(queue)
        finally:
            if self._queues.get(anchor) is queue and not queue.waiters:
                del self._queues[anchor]

    async def _ask(self, anchor: str, batch: list[_Waiter]) -> list[int]:
        index: dict[str, int] = {}
        table: list[RateScope] = []
        # The anchor goes first: the script answers its own free time as well.
        for scope in sorted(
            {s.key: s for w in batch for s in w.scopes}.values(), key=lambda s: s.key != anchor
        ):
            index[scope.key] = len(table) + 1
            table.append(scope)
        keys: list[str] = []
        args: list[object] = [_us(self._lease_s), _us(self._recheck_s), len(table)]
        for scope in table:
            base = self._prefix + scope.key
            keys += [base + ":done", base + ":leases", base + ":cool"]
            windows = [w for w in scope.windows if w.limit > 0]
            args.append(len(windows))
            for w in windows:
                args += [w.limit, _us(w.seconds * (1.0 + self._margin))]
        args.append(len(batch))
        for waiter in batch:
            args += [waiter.lease, len(waiter.scopes), *sorted(index[s.key] for s in waiter.scopes)]
        self._metrics.budget_calls.labels("acquire").inc()
        answer = await self._acquire_script(keys=keys, args=args)
        self._health.ok()
        return [int(x) for x in answer]

    def _to_share(self, queue: _Queue) -> None:
        for waiter in queue.waiters:
            if not waiter.future.done():
                waiter.future.set_result(False)
        queue.waiters.clear()

    def _current_share(self) -> Share:
        share = self._share
        if share is None:
            share = self._share = Share(
                self._owned,
                self._total,
                self._margin,
                self._history,
                self._cool,
                self._seen,
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
        if not ticket.pooled:
            return
        if used:
            self._history.add(ticket.pooled, now)
        if ticket.share is not None:
            if used:
                ticket.share.release(ticket.shared_scopes)
            else:
                ticket.share.abandon(ticket.shared_scopes)
        if ticket.in_redis:
            self._live.pop(ticket.lease, None)
            self._enqueue_finish(_Finish(ticket.lease, now if used else None, ticket.pooled))
        elif used:  # sent on the share: Redis learns of it when it answers again
            self._enqueue_finish(_Finish(ticket.lease, now, ticket.pooled))

    def _enqueue_finish(self, finish: _Finish) -> None:
        self._finishes.append(finish)
        self._finish_kick.set()
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(self._finish_loop(), name="budget:finish")

    async def _finish_loop(self) -> None:
        """One finish script in flight at a time, for every send finished meanwhile. In an
        outage the finishes wait (with their local finish times) and are written when
        Redis answers: the pool then knows what was sent while it could not count."""
        while True:
            await self._back.wait()
            if not self._finishes:
                self._finish_kick.clear()
                await self._finish_kick.wait()
                continue
            try:
                await self._flush_finishes()
            except _STORE_DOWN as exc:
                self._store_down(exc, "budget_finish")

    async def _flush_finishes(self) -> None:
        async with self._flushing:
            await self._flush_finishes_locked()

    async def _flush_finishes_locked(self) -> None:
        while self._finishes:
            now = self._clock()
            batch: list[_Finish] = []
            while self._finishes and len(batch) < MAX_BATCH:
                finish = self._finishes.popleft()
                # A finish older than every window of its scopes counts for nothing; an
                # unused lease of an outage has long expired.
                if finish.at is None or now - finish.at < max(map(longest, finish.scopes)):
                    batch.append(finish)
            if not batch:
                continue
            try:
                await self._write_finishes(batch, now)
            except BaseException:
                self._finishes.extendleft(reversed(batch))
                raise

    async def _write_finishes(self, batch: list[_Finish], now: float) -> None:
        index: dict[str, int] = {}
        table: list[RateScope] = []
        for finish in batch:
            for scope in finish.scopes:
                if scope.key not in index:
                    index[scope.key] = len(table) + 1
                    table.append(scope)
        keys: list[str] = []
        args: list[object] = [len(table)]
        for scope in table:
            base = self._prefix + scope.key
            keys += [base + ":done", base + ":leases"]
            args.append(_us(longest(scope) * (1.0 + self._margin)))
        args.append(len(batch))
        for finish in batch:
            age = -1 if finish.at is None else _us(max(0.0, now - finish.at))
            args += [finish.lease, age, len(finish.scopes), *(index[s.key] for s in finish.scopes)]
        self._metrics.budget_calls.labels("finish").inc()
        await self._finish_script(keys=keys, args=args)
        self._health.ok()

    # ------------------------------------------------------------------ leases, cool-downs

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name="budget:renew")

    async def _renew_loop(self) -> None:
        """Sends on the wire keep their leases: a lease lapses only when its pod is gone."""
        while self._live:
            await asyncio.sleep(self._lease_s / 3)
            if self._outage or not self._live:
                continue
            by_key: dict[str, list[str]] = {}
            for lease, scopes in list(self._live.items()):
                for scope in scopes:
                    by_key.setdefault(self._prefix + scope.key + ":leases", []).append(lease)
            args: list[object] = [_us(self._lease_s)]
            for ids in by_key.values():
                args += [len(ids), *ids]
            try:
                self._metrics.budget_calls.labels("renew").inc()
                await self._renew_script(keys=list(by_key), args=args)
                self._health.ok()
            except _STORE_DOWN as exc:
                self._store_down(exc, "budget_renew")

    async def _cool_in_redis(self, pooled: tuple[RateScope, ...], seconds: float) -> None:
        keys = [self._prefix + s.key + ":cool" for s in pooled]
        try:
            self._metrics.budget_calls.labels("cool").inc()
            await self._cool_script(keys=keys, args=[_us(seconds)])
            self._health.ok()
        except _STORE_DOWN as exc:
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
        self._back.clear()
        self._share = None  # a fresh share limiter, seeded with this pod's recent sends
        self._metrics.budget_fallback.set(1)
        log.error(
            "budget_fallback_to_share",
            redis=self._health.address,
            partitions_owned=self._owned,
            partitions_total=self._total,
        )
        for queue in self._queues.values():
            self._to_share(queue)
            queue.wake.set()

    def _on_health(self, reachable: bool) -> None:
        """Back when anything reaches Redis again (the probe, a claim). Gone only when a
        budget call fails: a claim's error on a stale connection is no reason to switch."""
        if reachable and self._outage and (self._recovering is None or self._recovering.done()):
            self._recovering = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        """Write the outage's sends to Redis first, then count there again."""
        try:
            await self._flush_finishes()
        except _STORE_DOWN as exc:
            self._health.failed(exc, op="budget_finish")
            return
        self._outage = False
        self._grace_until = self._clock() + self._max_span * (1.0 + self._margin)
        self._back.set()
        self._metrics.budget_fallback.set(0)
        log.warning(
            "budget_shared_again",
            redis=self._health.address,
            share_kept_s=round(self._grace_until - self._clock(), 3),
        )


def budget_client(url: str, password: str | None) -> Redis:
    """A small client of its own: the budgets need one connection per app queue plus the
    finisher's, and must not wait behind the idempotency store's claims. Short timeouts:
    a Redis that does not answer within a second is treated as gone (the share takes over)."""
    pool = BlockingConnectionPool.from_url(
        url,
        password=password,
        max_connections=16,
        timeout=2.0,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        # A connection from before a Redis restart fails once: reconnect at once rather
        # than call that an outage.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)


def _keys(scopes: Iterable[RateScope]) -> tuple[str, ...]:
    return tuple(s.key for s in scopes)


def _anchor(pooled: tuple[RateScope, ...]) -> str:
    """The app if the send has one (the budget every lane of the app waits on)."""
    for scope in pooled:
        if scope.kind == "app":
            return scope.key
    return pooled[-1].key
