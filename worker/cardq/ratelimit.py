"""Per-destination and per-app pacing: *delay*, never drop.

Why a sliding-window log and not aiolimiter's leaky bucket: the platforms count requests
per window ("5 per second and 100 per minute per bot"). A leaky bucket of capacity N that
drains at N/T admits N at once and then N more during the same window, twice the limit,
and the platform answers the excess with a throttle error. A log of the last N grant
times admits a send exactly when the oldest of them leaves the window, so every window
the platform can count holds at most N, and a busy destination runs at 100% of its limit.

A send takes one slot from every scope it belongs to (the chat and the app) at the same
instant, or waits for the latest of their next free times. Waiting holds nothing: a lane
that sleeps here does not block any other lane. A throttle answer from the platform cools
a scope down until the platform's reset time.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` sends in any ``seconds``-long interval."""

    limit: int
    seconds: float

    @classmethod
    def all(cls, windows: Iterable[Any]) -> tuple[Window, ...]:
        """Windows from anything with ``limit`` and ``seconds`` (the configuration's)."""
        return tuple(cls(w.limit, w.seconds) for w in windows)


@dataclass(frozen=True, slots=True)
class RateScope:
    """One budget a send must take from. ``kind`` is a bounded label for metrics.

    ``pooled``: the budget spans destinations, which may sit on other partitions and so in
    other pods (an app, or a chat that every bot in it shares). A pool counts it in Redis
    (``ratelimit_redis.py``). A budget of one destination lives on one partition: the pod
    that owns it counts it alone, exactly, with no round trip (a pool hands its recent
    sends on to the next owner: ``ratelimit_carry.py``).
    """

    key: str
    kind: Literal["destination", "app", "bot"]
    windows: tuple[Window, ...]
    pooled: bool = False


class Limiter(Protocol):
    """What the pipeline needs of a limiter: this module's for one process,
    ``ratelimit_redis.PoolRateLimiter`` for a pool that shares its budgets in Redis."""

    async def acquire(self, scopes: tuple[RateScope, ...]) -> float:
        """Wait for a slot in every scope and take it; return the seconds waited."""
        ...

    def release(self, scopes: Iterable[RateScope]) -> None:
        """The send that :meth:`acquire` allowed has finished: it counts from now."""
        ...

    def abandon(self, scopes: Iterable[RateScope]) -> None:
        """The slot :meth:`acquire` gave was not used (nothing was sent): free it."""
        ...

    def cool_down(self, scopes: Iterable[RateScope], seconds: float) -> None: ...

    def set_share(self, owned: int, total: int) -> None:
        """This pod owns ``owned`` of the requests topic's ``total`` partitions."""
        ...

    async def aclose(self) -> None: ...


class _Log:
    """Completion times of finished sends (ascending) plus the sends still on the wire.

    A send is counted at the moment it *finished*, not when it was allowed to start: the
    platform saw it arrive somewhere in between, so "start of send k+N ≥ end of send k +
    window" guarantees the platform never counts N+1 in a window, however late an earlier
    send left this process (a token fetch, a busy event loop, a slow connect).
    """

    __slots__ = ("grants", "limit", "pending", "span")

    def __init__(self, window: Window, margin: float) -> None:
        self.limit = window.limit
        self.span = window.seconds * (1.0 + margin)
        self.grants: deque[float] = deque()
        self.pending = 0

    def next_free(self, now: float) -> float:
        grants = self.grants
        horizon = now - self.span
        while grants and grants[0] <= horizon:
            grants.popleft()
        excess = len(grants) + self.pending - self.limit
        if excess < 0:
            return now
        if excess < len(grants):
            return grants[excess] + self.span
        return math.inf  # every slot is held by a send still on the wire

    def add(self, at: float) -> None:
        """Count a send finished at ``at``. Finishes come in order, except after a seed
        (``RateLimiter.seed``) placed a previous owner's sends still on the wire at the
        end of their leases, which may lie ahead of a finish of this process."""
        grants = self.grants
        if not grants or at >= grants[-1]:
            grants.append(at)
        else:
            bisect.insort(grants, at)


class _Scope:
    __slots__ = ("changed", "cool_until", "last_used", "logs")

    def __init__(self, windows: Iterable[Window], margin: float) -> None:
        self.logs = tuple(_Log(w, margin) for w in windows if w.limit > 0)
        self.cool_until = 0.0
        self.last_used = 0.0
        self.changed: asyncio.Event | None = None  # set when a send of this scope finishes


class RateLimiter:
    def __init__(self, *, margin: float = 0.02, clock: Callable[[], float] = time.monotonic):
        self._margin = margin
        self._clock = clock
        self._scopes: dict[str, _Scope] = {}
        self._since_sweep = 0

    def _scope(self, scope: RateScope) -> _Scope:
        found = self._scopes.get(scope.key)
        if found is None:
            found = self._scopes[scope.key] = _Scope(scope.windows, self._margin)
        return found

    def try_acquire(self, scopes: Iterable[RateScope]) -> float:
        """Take a slot in every scope and return 0, or return the seconds to wait
        (``inf``: until a send on the wire finishes)."""
        now = self._clock()
        at = now
        states = []
        for scope in scopes:
            state = self._scope(scope)
            states.append(state)
            at = max(at, state.cool_until)
            for log in state.logs:
                at = max(at, log.next_free(now))
        if at > now:
            return at - now
        for state in states:
            state.last_used = now
            for log in state.logs:
                log.pending += 1
        self._maybe_sweep(now)
        return 0.0

    def release(self, scopes: Iterable[RateScope]) -> None:
        """The send that :meth:`acquire` allowed has finished (whatever its outcome)."""
        self._settle(scopes, self._clock())

    def abandon(self, scopes: Iterable[RateScope]) -> None:
        """The slot was granted but nothing was sent (the waiter was cancelled)."""
        self._settle(scopes, None)

    def _settle(self, scopes: Iterable[RateScope], finished: float | None) -> None:
        for scope in scopes:
            state = self._scopes.get(scope.key)
            if state is None:
                continue
            for log in state.logs:
                log.pending -= 1
                if finished is not None:
                    log.add(finished)
            if state.changed is not None:
                state.changed.set()
                state.changed = None

    def record(self, scopes: Iterable[RateScope], at: float) -> None:
        """Count a send that finished at ``at`` (this limiter's clock) without having been
        granted here: a pool's share limiter learns the pod's own recent sends this way,
        so a Redis outage does not start with a window the pod already filled; a pod that
        takes a webhook bot over learns its previous owner's sends (``ratelimit_carry.py``).
        ``at`` may lie ahead of now (a send still on the wire, counted at the latest time
        it can finish)."""
        for scope in scopes:
            state = self._scope(scope)
            state.last_used = max(state.last_used, at)
            for log in state.logs:
                log.add(at)

    def set_share(self, owned: int, total: int) -> None:
        """One process owns its budgets whole: nothing to do."""

    async def aclose(self) -> None:
        return None

    async def acquire(self, scopes: tuple[RateScope, ...]) -> float:
        """Wait until every scope has a free slot and take them; return the seconds waited.
        Every successful acquire must be followed by :meth:`release`."""
        if not scopes:
            return 0.0
        started = self._clock()
        while (wait := self.try_acquire(scopes)) > 0:
            if math.isinf(wait):
                await self._next_release(scopes)
            else:
                await asyncio.sleep(wait)
        return self._clock() - started

    async def _next_release(self, scopes: tuple[RateScope, ...]) -> None:
        events = []
        for scope in scopes:
            state = self._scope(scope)
            if state.changed is None:
                state.changed = asyncio.Event()
            events.append(asyncio.ensure_future(state.changed.wait()))
        try:
            await asyncio.wait(events, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for event in events:
                event.cancel()

    def cool_down(self, scopes: Iterable[RateScope], seconds: float) -> None:
        until = self._clock() + seconds
        for scope in scopes:
            state = self._scope(scope)
            state.cool_until = max(state.cool_until, until)

    def _maybe_sweep(self, now: float) -> None:
        """Forget scopes idle for longer than their longest window (bounded memory)."""
        self._since_sweep += 1
        if self._since_sweep < 10_000:
            return
        self._since_sweep = 0
        idle = [
            key
            for key, state in self._scopes.items()
            if now - state.last_used > max((log.span for log in state.logs), default=0.0)
            and state.cool_until < now
            and not any(log.pending for log in state.logs)
        ]
        for key in idle:
            del self._scopes[key]

    def __len__(self) -> int:
        return len(self._scopes)

    def snapshot(self, top: int = 500) -> dict[str, Any]:
        """This pod's budgets, the ``top`` busiest first (cooling down, then fullest): per
        scope and window, the sends counted in the current window (finished or on the
        wire) against the limit, and how long a platform's throttle answer still cools
        the scope. Read-only (the console)."""
        now = self._clock()
        ranked: list[tuple[bool, float, str, _Scope]] = []
        for key, state in self._scopes.items():
            fill = 0.0
            for log in state.logs:
                fill = max(fill, _used(log, now) / log.limit)
            ranked.append((state.cool_until > now, fill, key, state))
        scopes = []
        for cooling, fill, key, state in heapq.nlargest(top, ranked, key=lambda r: r[:2]):
            windows = [
                {
                    "limit": log.limit,
                    "seconds": log.span / (1.0 + self._margin),
                    "used": _used(log, now),
                }
                for log in state.logs
            ]
            cool = round(state.cool_until - now, 3) if cooling else 0.0
            scopes.append({"key": key, "windows": windows, "cooling_s": cool, "fill": fill})
        return {"reach": "pod", "tracked": len(ranked), "scopes": scopes}


def _used(log: _Log, now: float) -> int:
    """Sends in the window ending now: finished inside it (grants ascend) or on the wire."""
    return len(log.grants) - bisect.bisect_right(log.grants, now - log.span) + log.pending
