"""A pod's share of the pool's budgets, for while Redis is away (``ratelimit_redis.py``).

Why a share and not the whole budget: every pod of the pool falls back at once, and N pods
each pacing an app at its full limit send N times too much. The limit times the share of
the requests topic's partitions a pod owns, rounded down, sums to at most the limit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .ratelimit import RateLimiter, RateScope, Window


def share_of(window: Window, owned: int, total: int) -> Window:
    """This pod's part of one window while Redis is away: the limit times the share of
    partitions it owns, rounded down (the pool never goes over), at least 1 (a pod that
    owns partitions must be able to send)."""
    share = owned / total if total > 0 else 0.0
    return Window(max(1, math.floor(window.limit * share)), window.seconds)


class History:
    """This pod's own finish times per pooled scope, for that scope's longest window."""

    def __init__(self, margin: float) -> None:
        self._stretch = 1.0 + margin
        self._times: dict[str, deque[float]] = {}
        self._added = 0

    def add(self, scopes: Iterable[RateScope], at: float) -> None:
        for scope in scopes:
            times = self._times.get(scope.key)
            if times is None:
                times = self._times[scope.key] = deque()
            times.append(at)
            horizon = at - longest(scope) * self._stretch
            while times and times[0] <= horizon:
                times.popleft()
        self._added += 1
        if self._added % 10_000 == 0:
            self._sweep(at)

    def of(self, key: str) -> Sequence[float]:
        return self._times.get(key, ())

    def _sweep(self, now: float) -> None:
        # A scope idle for an hour has nothing left in any platform window.
        for key in [k for k, times in self._times.items() if not times or times[-1] < now - 3600]:
            del self._times[key]


def longest(scope: RateScope) -> float:
    return max((w.seconds for w in scope.windows), default=0.0)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the last acquire answer said of an app: its sends per window, and when."""

    at: float
    counts: tuple[int, ...]


class Share:
    """The budgets of one outage (or one share): a local limiter with scaled windows,
    seeded with the cool-downs still running and with what was sent before: the pod's own
    sends, and at least its share of what the whole pool had sent by the last answer.

    Why the pool's count: own sends alone would let a pod that sent less than its share
    before the outage add the difference on top of a window its peers had already filled.
    With every pod counting its share of the pool's sends, the pods together add at most
    ``limit - sent`` (the shares sum to at most one). The count is as old as the last
    answer; it is placed at that instant, which is later than the sends it stands for.
    """

    def __init__(
        self,
        owned: int,
        total: int,
        margin: float,
        history: History,
        cool: dict[str, float],
        seen: dict[str, Seen],
        clock: Callable[[], float],
    ) -> None:
        self.owned = owned
        self.total = total
        self.limiter = RateLimiter(margin=margin, clock=clock)
        self._stretch = 1.0 + margin
        self._history = history
        self._cool = cool
        self._seen = seen
        self._clock = clock
        self._known: dict[str, RateScope] = {}

    def _seed(self, scope: RateScope) -> list[float]:
        own = list(self._history.of(scope.key))
        seen = self._seen.get(scope.key)
        windows = [w for w in scope.windows if w.limit > 0]
        if seen is None or len(seen.counts) != len(windows):
            return own
        share = self.owned / self.total if self.total > 0 else 1.0
        missing = 0
        for window, count in zip(windows, seen.counts, strict=True):
            horizon = seen.at - window.seconds * self._stretch
            mine = sum(1 for t in own if t > horizon)
            missing = max(missing, math.ceil(share * count) - mine)
        return sorted(own + [seen.at] * missing)

    def scaled(self, scopes: tuple[RateScope, ...]) -> tuple[RateScope, ...]:
        out = []
        for scope in scopes:
            known = self._known.get(scope.key)
            if known is None:
                windows = tuple(
                    share_of(w, self.owned, self.total) for w in scope.windows if w.limit > 0
                )
                known = self._known[scope.key] = RateScope(
                    scope.key, scope.kind, windows, pooled=True
                )
                for at in self._seed(scope):
                    self.limiter.record((known,), at)
                left = self._cool.get(scope.key, 0.0) - self._clock()
                if left > 0:
                    self.limiter.cool_down((known,), left)
            out.append(known)
        return tuple(out)
