"""Priorities: urgent requests take an app budget first, without starving the rest.

Lanes of one app wait for the same app budget (50 sends/s for a Feishu app, shared by
every chat the app writes to). Without an order, whichever lane wakes first wins, and an
urgent alert waits behind a storm's worth of routine ones. :class:`PriorityLimiter` wraps
the limiter (either of them: it only uses the ``Limiter`` protocol) and orders the
waiters of each app budget in two classes: urgent, and the rest (normal and low wait as
equals here; low is what ``digest.py`` merges first).

* While an urgent request is ready for the app budget, the others step back: those
  already waiting inside the limiter are cancelled there (a wait takes nothing) and wait
  for their turn. "Ready" means its own destination has room: an urgent request held by
  its chat's limit holds nobody else back (it waits for that room first, taking nothing).
* The others keep a share of the budget: each send of an urgent request while they
  wait earns them ``(1 - urgent_share) / urgent_share`` of a send, so with the default
  0.8 one routine send goes for every four urgent ones. And if the urgent waiters get
  nothing for a second (their chat cooled down meanwhile), the others go.
* While urgent requests come (one joined within the app's longest window), the others
  are paced evenly, at most the app's sustained rate (1,000/min: one every 60 ms), instead
  of taking the 50/s burst. Why: a window is a log of the last N sends, so a backlog that
  fills 1,000/min in its first 20 s leaves the app no slot for the next 40, whatever the
  order of the waiters; an urgent request arriving then waited out the minute (the storm
  bench measured 102 s at p99). Paced, sends leave the window as evenly as they entered
  it, and a slot frees every 60 ms for the urgent ones to take first.

Why the request's priority travels in a context variable and not as an argument: the
limiter protocol is implemented by the process's limiter and the pool's (Redis), and the
pipeline calls it in one place; the scheduler starts each request's task in a context
that names its priority (:func:`context_for`), and only this wrapper reads it.

What holds in a pool: the budget is the pool's (Redis), the order is each pod's. An
urgent request goes before the normal ones of its own pod; pods do not order each
other's waiters, so with the app budget saturated by several pods an urgent request
gets its pod's share of the budget first, not the whole pool's. The pacing is per pod
as well: each pod paces at the app's rate, so several busy pods can still fill the
window between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from .ratelimit import Limiter, RateScope, Window

#: The priority of the request whose task is running (set by :func:`context_for`).
CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("cardq_priority", default="normal")
#: With urgent requests ready, the others still go after this long without an urgent send.
STALL_S = 1.0
#: While urgent requests come, every send of the app is paced at this share of its
#: sustained rate: below 1 so that the limiter's margin and the time a send spends on the
#: wire never fill a window (a full one frees nothing until its oldest send ages out).
PACE = 0.95
#: 1, less the rounding of adding (1 - share) / share up (0.25 four times is 0.99…98).
_ONE = 1.0 - 1e-9


def context_for(priority: str) -> contextvars.Context:
    """A context for a request's task: the limiter reads its priority from it."""
    context = contextvars.copy_context()
    context.run(CURRENT.set, priority)
    return context


class Contest:
    """The waiters of one app budget: how many urgent ones are ready, how many others
    wait, and what the others are owed. Bookkeeping only (no I/O, no clock of its own):
    ``changed`` is set whenever who may go changes."""

    __slots__ = (
        "changed",
        "credit",
        "inside",
        "interval",
        "last_urgent",
        "others",
        "paced_until",
        "preempted",
        "share",
        "span",
        "urgent",
        "urgent_seen",
    )

    def __init__(self, share: float, windows: tuple[Window, ...] = ()) -> None:
        self.share = share
        #: The app's sustained interval between sends, paced (see :meth:`pace`), and its
        #: longest window: pacing lasts that long after the last urgent request.
        limited = [w for w in windows if w.limit > 0]
        self.interval = max((w.seconds / w.limit / PACE for w in limited), default=0.0)
        self.span = max((w.seconds for w in limited), default=0.0)
        self.urgent = 0  # urgent waiters ready for the app budget
        self.others = 0  # waiters of the other classes
        #: Sends owed to the others (at most one banked).
        self.credit = 0.0
        self.last_urgent = 0.0  # when an urgent waiter last got a send (or became ready)
        self.urgent_seen = -math.inf  # when an urgent request last asked for this budget
        #: When the next paced send of the others may go (see :meth:`pace`).
        self.paced_until = -math.inf
        self.changed = asyncio.Event()
        #: The tasks waiting inside the limiter, by class (urgent or not), and those of
        #: them asked to step back.
        self.inside: dict[bool, set[asyncio.Task[Any]]] = {True: set(), False: set()}
        self.preempted: set[asyncio.Task[Any]] = set()

    def may_go(self, urgent: bool, now: float) -> bool:
        """Whether a waiter of this class may wait in the limiter now. The others go
        when no urgent waiter is ready, when they are owed a send, or when the urgent
        ones got nothing for ``STALL_S``; urgent ones go unless the others are owed."""
        if urgent:
            return self.others == 0 or self.credit < _ONE
        return self.urgent == 0 or self.credit >= _ONE or now - self.last_urgent > STALL_S

    def pace(self, now: float) -> float | None:
        """How long one of the others waits for its paced turn, its turn taken (``None``
        with no urgent request within the longest window: no pacing). Every send of the
        app takes a turn (an urgent one without waiting for it: :meth:`granted`), so the
        turns add up to the paced rate and what urgent requests take comes out of the
        others' turns. A turn is a floor, not a slot: the waiter still takes from the
        limiter."""
        if now - self.urgent_seen > self.span:
            return None
        at = max(now, self.paced_until)
        self.paced_until = at + self.interval
        return at - now

    def unpace(self) -> None:
        """A turn taken by :meth:`pace` was not used: the turns after it move up one. Why:
        each urgent request that arrives makes its lane's routine waiter step back, and
        without this every such step back would cost the others a turn."""
        self.paced_until -= self.interval

    # Each change below says whether who may go changed (and tells the waiters if so).
    # With no urgent waiter there is nothing to decide: the others only count themselves.

    def join(self, urgent: bool, now: float) -> bool:
        if not urgent and not self.urgent:
            self.others += 1
            return False
        before = self._turns(now)
        if urgent:
            self.urgent += 1
            self.last_urgent = self.urgent_seen = now
        else:
            self.others += 1
        return self._changed(before, now)

    def leave(self, urgent: bool, now: float) -> bool:
        if not urgent and not self.urgent:
            self.others -= 1
            return False
        before = self._turns(now)
        if urgent:
            self.urgent -= 1
        else:
            self.others -= 1
        return self._changed(before, now)

    def granted(self, urgent: bool, now: float) -> bool:
        if not urgent and not self.urgent:
            return False
        before = self._turns(now)
        if urgent:
            self.last_urgent = now
            self.paced_until = max(now, self.paced_until) + self.interval
            if self.others:
                self.credit = min(1.0, self.credit + (1.0 - self.share) / self.share)
        elif self.credit >= _ONE:
            self.credit = max(0.0, self.credit - 1.0)
        return self._changed(before, now)

    def _turns(self, now: float) -> tuple[bool, bool]:
        return self.may_go(True, now), self.may_go(False, now)

    def _changed(self, before: tuple[bool, bool], now: float) -> bool:
        if before == self._turns(now):
            return False
        self.changed.set()
        self.changed = asyncio.Event()
        return True


class PriorityLimiter(Limiter):
    """A :class:`Limiter` that orders the waiters of each app budget (module docstring).

    It is that protocol and nothing more: what a particular limiter adds (the console's
    ``snapshot``, a pool's ``local`` budgets) is read from :attr:`inner`, by a caller that
    unwraps it on purpose, never forwarded implicitly."""

    def __init__(
        self, inner: Limiter, urgent_share: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.inner = inner
        self._share = urgent_share
        self._clock = clock
        self._contests: dict[str, Contest] = {}

    async def acquire(self, scopes: tuple[RateScope, ...]) -> float:
        app = next((scope for scope in scopes if scope.kind == "app"), None)
        if app is None:
            return await self.inner.acquire(scopes)
        started = self._clock()
        urgent = CURRENT.get() == "urgent"
        if urgent:
            await self._room_besides(app, scopes)
        contest = self._contests.get(app.key)
        if contest is None:  # kept: one per app the configured bots use
            contest = self._contests[app.key] = Contest(self._share, app.windows)
        turn = None if urgent else contest.pace(started)
        try:
            if turn:
                await asyncio.sleep(turn)
            return await self._contend(contest, urgent, scopes, started)
        except BaseException:
            if turn is not None:
                contest.unpace()  # the turn went unused (a step back, a drain): give it back
            raise

    async def _contend(
        self, contest: Contest, urgent: bool, scopes: tuple[RateScope, ...], started: float
    ) -> float:
        """Wait for this class's turn at the app budget, then for the slots themselves."""
        if contest.join(urgent, self._clock()):
            self._preempt(contest)
        try:
            while True:
                while not contest.may_go(urgent, self._clock()):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(contest.changed.wait(), STALL_S)
                if await self._acquire_unless_preempted(contest, urgent, scopes):
                    break
            if contest.granted(urgent, self._clock()):
                self._preempt(contest)
        finally:
            if contest.leave(urgent, self._clock()):
                self._preempt(contest)
        return self._clock() - started

    async def _room_besides(self, app: RateScope, scopes: tuple[RateScope, ...]) -> None:
        """Wait until the scopes other than the app have room, taking nothing."""
        others = tuple(scope for scope in scopes if scope is not app)
        if others:
            await self.inner.acquire(others)
            self.inner.abandon(others)

    def _preempt(self, contest: Contest) -> None:
        """Who may go changed: the waiters inside the limiter whose turn ended step back."""
        now = self._clock()
        for urgent in (True, False):
            if contest.inside[urgent] and not contest.may_go(urgent, now):
                for task in contest.inside[urgent] - contest.preempted:
                    contest.preempted.add(task)
                    task.cancel()

    async def _acquire_unless_preempted(
        self, contest: Contest, urgent: bool, scopes: tuple[RateScope, ...]
    ) -> bool:
        """``True`` with the slots taken; ``False`` when the other class's turn came
        first (nothing taken).

        Why a cancellation and not a second task to watch: this is every send's path, and
        awaiting the limiter directly costs nothing extra. A waiter whose turn ends is
        cancelled where it waits inside the limiter (which takes nothing on a
        cancellation, the same as when a drain cancels a waiting request), and the
        cancellation is taken back here; one that a drain asked for as well goes on up."""
        task = asyncio.current_task()
        assert task is not None
        inside = contest.inside[urgent]
        inside.add(task)
        try:
            await self.inner.acquire(scopes)
            return True
        except asyncio.CancelledError:
            if task not in contest.preempted or task.uncancel() > 0:
                raise
            return False
        finally:
            inside.discard(task)
            contest.preempted.discard(task)

    # ------------------------------------------------------------------ the rest, passed on

    def release(self, scopes: Iterable[RateScope]) -> None:
        self.inner.release(scopes)

    def abandon(self, scopes: Iterable[RateScope]) -> None:
        self.inner.abandon(scopes)

    def cool_down(self, scopes: Iterable[RateScope], seconds: float) -> None:
        self.inner.cool_down(scopes, seconds)

    def set_share(self, owned: int, total: int) -> None:
        self.inner.set_share(owned, total)

    async def aclose(self) -> None:
        await self.inner.aclose()
