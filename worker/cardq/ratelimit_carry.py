"""A local budget that survives a takeover: a webhook bot's window moves with its partition.

Why: a webhook bot's budget (5/s and 100/min per bot) belongs to one destination, so to
one partition and one pod, which paces it alone, exactly and with no round trip
(``ratelimit.py``). When that pod dies or its partitions move in a rebalance, the next
owner starts with an empty window, knows nothing of the minute its predecessor already
spent, and the platform throttles the difference.

How, in a pool whose store is Redis (``ratelimit_redis.py``), with the same keys and the
same rule as the pooled budgets (``…:done`` finish times, ``…:leases`` sends on the wire,
Redis ``TIME`` as the clock):

* **Write-behind.** A local grant queues a *hold* (a lease, renewed while the send is on
  the wire) and its finish queues the finish time, both on the pool's one background
  writer, in order, batched: never on a send's critical path. A write that fails is the
  pool's usual "Redis is gone" (the pooled budgets fall back to their share); the local
  pacing does not change.
* **Seed on first use.** The first acquire of a local scope by this process, and the first
  after each partition assignment (``forget``, called from ``set_share``), reads the
  scope's history in one script and adds every send of *another* pod to the local window
  before it paces: a finish at its finish time, a lease at the time it lapses (a dead
  pod's send counts as finished then, as in the pooled script; a live pod's at the end of
  its current lease, later than the send's end unless the send outlasts it). A pod's own
  sends are in its window already; an entry seeded once is not added twice by a later
  seed. One round trip per scope and assignment, not per send.

Why this and not the alternatives: counting the bot in Redis like an app would cost a
round trip before every send of a destination that only one pod ever sends to, for the
rare moment it changes hands. Writing only finishes would lose a SIGKILLed pod's sends on
the wire, which the platform counts (the pooled script keeps lapsed leases for the same
reason). And the holds go through the pool's finish writer rather than a writer of their
own because one ordered queue is what keeps a send's lease from reaching Redis after its
finish (a lease written last would lapse into a second entry for the same send).

What remains uncounted: a send granted in the last instant before a SIGKILL whose hold had
not yet left the process (the writer's queue is written as soon as the event loop runs it,
a few milliseconds), and a previous owner's send still on the wire longer than a lease
after the seed (a rebalance's old owner that keeps sending past ``budget_lease_s``; a
drained revoke has none). Redis down: nothing is read and no lease is taken, each pod
paces its bots from its own sends, as without a pool; their finish times are written when
Redis answers again, with the pooled budgets' outage sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from .ratelimit import RateLimiter, RateScope
from .ratelimit_redis_calls import STORE_DOWN, BudgetCalls

log = structlog.get_logger("cardq.ratelimit")


class Carry:
    """Seeds this pod's local windows from what Redis knows of other pods' sends."""

    def __init__(
        self,
        calls: BudgetCalls,
        local: RateLimiter,
        pod: str,
        clock: Callable[[], float],
        is_down: Callable[[], bool],
        on_down: Callable[[BaseException, str], None],
    ) -> None:
        self._calls = calls
        self._local = local
        self._own = pod + ":"
        self._clock = clock
        self._is_down = is_down
        self._on_down = on_down
        #: Scopes seeded since the last assignment, each with the foreign sends it holds.
        self._seeded: dict[str, set[str]] = {}
        #: Every scope seeded before, with the foreign sends its last seed added.
        self._foreign: dict[str, set[str]] = {}
        self._reading: dict[str, asyncio.Future[None]] = {}

    def forget(self) -> None:
        """A partition assignment: any local scope may have had another owner meanwhile."""
        self._foreign.update(self._seeded)
        self._seeded.clear()

    async def seed(self, scopes: tuple[RateScope, ...]) -> None:
        """Return once every scope's window holds the other pods' recent sends (or Redis
        could not say)."""
        while True:
            if self._is_down():
                return
            missing = tuple(s for s in scopes if s.key not in self._seeded)
            if not missing:
                return
            waiting = [self._reading[s.key] for s in missing if s.key in self._reading]
            if waiting:  # another lane reads it: wait for that answer, then look again
                await asyncio.wait(waiting)
                continue
            await self._read(missing)
            return

    async def _read(self, scopes: tuple[RateScope, ...]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for scope in scopes:
            self._reading[scope.key] = done
        try:
            answer = await self._calls.history(scopes)
        except STORE_DOWN as exc:
            self._on_down(exc, "budget_history")
            return
        finally:
            for scope in scopes:
                del self._reading[scope.key]
            done.set_result(None)
        now = self._clock()
        for scope, entries in zip(scopes, answer, strict=True):
            before = self._foreign.pop(scope.key, set())
            foreign = {lease for lease, _ in entries if not lease.startswith(self._own)}
            times = sorted(now + at for lease, at in entries if lease in foreign - before)
            for at in times:
                self._local.record((scope,), at)
            self._seeded[scope.key] = foreign
            if times:
                log.info("budget_carried_over", scope=scope.key, sends=len(times))
