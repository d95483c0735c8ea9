"""The pool budgets' calls to Redis (``ratelimit_redis.py``): each turns the limiter's
state into one script call of ``ratelimit_scripts.py`` and its answer back.

Why a module of its own: what the limiter decides (who waits, who takes the share, when
Redis counts as gone) reads apart from how a decision is spelled for Lua (flat ``KEYS`` and
``ARGV``, times in microseconds). Every call reports success to the store's health, so that
a reachable Redis is noticed by whichever call gets through first.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import ratelimit_scripts as scripts
from .metrics import Metrics
from .ratelimit import RateScope
from .ratelimit_share import longest
from .store_health import StoreHealth

#: What a budget call raises when Redis is gone (the share takes over).
STORE_DOWN = (RedisError, OSError, asyncio.TimeoutError)
#: Lanes asked for in one acquire, or finishes written in one call; more go in the next.
MAX_BATCH = 64


def us(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


@dataclass(slots=True)
class Finish:
    lease: str
    at: float | None  # local finish time (a hold's: its grant); None: never sent
    scopes: tuple[RateScope, ...]
    hold: bool = False  # a local scope's grant: take a lease (``ratelimit_carry.py``)


class BudgetCalls:
    """The four scripts (acquire, finish, renew, cool) of one pod's budgets."""

    def __init__(
        self,
        client: Redis,
        health: StoreHealth,
        metrics: Metrics,
        *,
        prefix: str,
        margin: float,
        lease_s: float,
        recheck_s: float,
    ) -> None:
        self.redis = client
        self._health = health
        self._metrics = metrics
        self._prefix = prefix
        self._margin = margin
        self.lease_s = lease_s
        self._recheck_s = recheck_s
        self._acquire: Any = client.register_script(scripts.ACQUIRE)
        self._finish: Any = client.register_script(scripts.FINISH)
        self._renew: Any = client.register_script(scripts.RENEW)
        self._cool: Any = client.register_script(scripts.COOL)
        self._history: Any = client.register_script(scripts.HISTORY)

    async def ask(
        self, anchor: str, batch: Iterable[tuple[str, tuple[RateScope, ...]]]
    ) -> list[int]:
        """One acquire for (lease, scopes) pairs: ``[anchor's wait, each one's wait, the
        anchor's sends per window]``, waits in µs (0 = granted)."""
        batch = list(batch)
        index: dict[str, int] = {}
        table: list[RateScope] = []
        # The anchor goes first: the script answers its own free time as well.
        for scope in sorted(
            {s.key: s for _, scopes in batch for s in scopes}.values(),
            key=lambda s: s.key != anchor,
        ):
            index[scope.key] = len(table) + 1
            table.append(scope)
        keys: list[str] = []
        args: list[object] = [us(self.lease_s), us(self._recheck_s), len(table)]
        for scope in table:
            base = self._prefix + scope.key
            keys += [base + ":done", base + ":leases", base + ":cool"]
            windows = [w for w in scope.windows if w.limit > 0]
            args.append(len(windows))
            for w in windows:
                args += [w.limit, us(w.seconds * (1.0 + self._margin))]
        args.append(len(batch))
        for lease, scopes in batch:
            args += [lease, len(scopes), *sorted(index[s.key] for s in scopes)]
        self._metrics.budget_calls.labels("acquire").inc()
        answer = await self._acquire(keys=keys, args=args)
        self._health.ok()
        return [int(x) for x in answer]

    async def finish(self, batch: list[Finish], now: float) -> None:
        """Turn leases into finish-time entries (or drop unused ones, or take the leases of
        local grants), in one call."""
        index: dict[str, int] = {}
        table: list[RateScope] = []
        for finish in batch:
            for scope in finish.scopes:
                if scope.key not in index:
                    index[scope.key] = len(table) + 1
                    table.append(scope)
        keys: list[str] = []
        args: list[object] = [us(self.lease_s), len(table)]
        for scope in table:
            base = self._prefix + scope.key
            keys += [base + ":done", base + ":leases"]
            args.append(us(longest(scope) * (1.0 + self._margin)))
        args.append(len(batch))
        for finish in batch:
            if finish.hold:
                age = -2
            elif finish.at is None:
                age = -1
            else:
                age = us(max(0.0, now - finish.at))
            args += [finish.lease, age, len(finish.scopes), *(index[s.key] for s in finish.scopes)]
        self._metrics.budget_calls.labels("finish").inc()
        await self._finish(keys=keys, args=args)
        self._health.ok()

    async def history(self, scopes: tuple[RateScope, ...]) -> list[list[tuple[str, float]]]:
        """Per scope, every send Redis knows of in its longest window, as ``(lease id,
        seconds from now)``: when it finished, or when its lease lapses (lapsed)."""
        keys: list[str] = []
        for scope in scopes:
            keys += [self._prefix + scope.key + ":done", self._prefix + scope.key + ":leases"]
        spans = [us(longest(s) * (1.0 + self._margin)) for s in scopes]
        self._metrics.budget_calls.labels("history").inc()
        answer = await self._history(keys=keys, args=spans)
        self._health.ok()
        out: list[list[tuple[str, float]]] = []
        pos = 0
        for _ in scopes:
            n = int(answer[pos])
            pairs = answer[pos + 1 : pos + 1 + 2 * n]
            out.append([(_text(pairs[i]), int(pairs[i + 1]) / 1e6) for i in range(0, 2 * n, 2)])
            pos += 1 + 2 * n
        return out

    async def renew(self, live: Mapping[str, tuple[RateScope, ...]]) -> None:
        """Push out the leases of every send still on the wire."""
        by_key: dict[str, list[str]] = {}
        for lease, scopes in live.items():
            for scope in scopes:
                by_key.setdefault(self._prefix + scope.key + ":leases", []).append(lease)
        args: list[object] = [us(self.lease_s)]
        for ids in by_key.values():
            args += [len(ids), *ids]
        self._metrics.budget_calls.labels("renew").inc()
        await self._renew(keys=list(by_key), args=args)
        self._health.ok()

    async def cool(self, pooled: tuple[RateScope, ...], seconds: float) -> None:
        keys = [self._prefix + s.key + ":cool" for s in pooled]
        self._metrics.budget_calls.labels("cool").inc()
        await self._cool(keys=keys, args=[us(seconds)])
        self._health.ok()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
