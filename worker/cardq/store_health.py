"""Is the pool's Redis there? One answer for readiness, metrics, logs and the budgets.

Why a probe of its own: the pipeline only calls Redis when it has work, so an idle pod
would never notice an outage, and a busy one would see it once per waiting request. A
``PING`` a second gives one clock for "unreachable since", which ``/readyz`` compares with
``idempotency.unready_after_s``; every failed call (a claim, a budget) also counts, so the
outage starts at the first failure, not at the next probe.

The address in logs is ``host:port/db``: a URL may carry a password, a log line never.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

import structlog

from .idempotency import (
    Claim,
    DoneRecord,
    IdempotencyStore,
    Marks,
    Partition,
    Published,
    ResultPositions,
)
from .metrics import Metrics

log = structlog.get_logger("cardq.store")

T = TypeVar("T")


def redis_address(url: str) -> str:
    """``redis://:secret@host:6379/0`` → ``host:6379/0``: where, never who."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    db = parts.path.lstrip("/") or "0"
    return f"{host}:{port}/{db}"


class StoreHealth:
    """Reachability of one Redis, with the time it has been gone."""

    def __init__(
        self, address: str, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.address = address
        self._metrics = metrics
        self._clock = clock
        self._down_since: float | None = None
        self._listeners: list[Callable[[bool], None]] = []
        metrics.store_reachable.set(1)

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def unreachable_for(self) -> float:
        """Seconds since the first failure of the current outage; 0 while reachable."""
        if self._down_since is None:
            return 0.0
        return self._clock() - self._down_since

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(reachable)`` at every change (the budgets switch modes)."""
        self._listeners.append(listener)

    def ok(self) -> None:
        if self._down_since is None:
            return
        down = self._clock() - self._down_since
        self._down_since = None
        self._metrics.store_reachable.set(1)
        self._metrics.store_unreachable_seconds.set(0)
        log.warning("store_reachable_again", redis=self.address, unreachable_s=round(down, 3))
        self._notify(True)

    def failed(
        self,
        error: BaseException,
        *,
        op: str,
        request_id: str | None = None,
        key: str | None = None,
    ) -> None:
        self._metrics.store_errors.labels(op).inc()
        where = {"redis": self.address, "op": op, "error": _describe(error)}
        if request_id is not None:
            where["request_id"] = request_id
        if key is not None:
            where["idempotency_key"] = key
        if self._down_since is not None:
            log.warning("store_call_failed", **where)
            return
        self._down_since = self._clock()
        self._metrics.store_reachable.set(0)
        log.error("store_unreachable", **where)
        self._notify(False)

    def _notify(self, reachable: bool) -> None:
        for listener in self._listeners:
            try:
                listener(reachable)
            except Exception:
                log.exception("store_listener_failed")

    async def watch(self, ping: Callable[[], Awaitable[object]], interval_s: float) -> None:
        """Probe until cancelled: the outage clock runs (and ends) even with no traffic."""
        while True:
            try:
                await asyncio.wait_for(ping(), timeout=max(interval_s, 0.5))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc, op="ping")
            else:
                self.ok()
            self._metrics.store_unreachable_seconds.set(self.unreachable_for())
            await asyncio.sleep(interval_s)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class WatchedStore:
    """The idempotency store, reporting every call's outcome to :class:`StoreHealth`.

    The request a failed call was for goes into the log line: the pipeline names its
    claims ``{worker_id}/{request_id}``.
    """

    def __init__(self, store: IdempotencyStore, health: StoreHealth, worker_id: str) -> None:
        self._store = store
        self._health = health
        self._owner_prefix = f"{worker_id}/"

    def _request(self, owner: str) -> str:
        return owner.removeprefix(self._owner_prefix)

    async def _watch(
        self, call: Awaitable[T], op: str, key: str | None, request_id: str | None
    ) -> T:
        try:
            result = await call
        except Exception as exc:
            self._health.failed(exc, op=op, request_id=request_id, key=key)
            raise
        self._health.ok()
        return result

    async def lookup(self, key: str) -> Claim:
        return await self._watch(self._store.lookup(key), "lookup", key, None)

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        call = self._store.claim(key, owner, claim_ttl_s)
        return await self._watch(call, "claim", key, self._request(owner))

    async def extend(self, claims: Mapping[str, str], claim_ttl_s: float) -> None:
        await self._watch(self._store.extend(claims, claim_ttl_s), "extend", None, None)

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None:
        await self._watch(self._store.finish(key, record, ttl_s), "finish", key, record.request_id)

    async def mark_published(
        self, offsets: Marks, ttl_s: float, positions: ResultPositions | None = None
    ) -> None:
        call = self._store.mark_published(offsets, ttl_s, positions)
        await self._watch(call, "mark_published", None, None)

    async def published(self, partition: Partition) -> Published:
        return await self._watch(self._store.published(partition), "published", None, None)

    async def forget_published(self, below: Mapping[Partition, int]) -> None:
        await self._watch(self._store.forget_published(below), "forget_published", None, None)

    async def release(self, key: str, owner: str) -> None:
        call = self._store.release(key, owner)
        await self._watch(call, "release", key, self._request(owner))

    async def subject(self, key: str) -> str | None:
        return await self._watch(self._store.subject(key), "subject", key, None)

    async def remember_subject(self, key: str, message_id: str, ttl_s: float) -> None:
        call = self._store.remember_subject(key, message_id, ttl_s)
        await self._watch(call, "remember_subject", key, None)

    async def forget_subject(self, key: str) -> None:
        await self._watch(self._store.forget_subject(key), "forget_subject", key, None)

    async def aclose(self) -> None:
        await self._store.aclose()
