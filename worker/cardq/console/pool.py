"""Pauses shared by the pool, through the Redis the idempotency store already uses.

One hash holds every pool-wide pause (``<key_prefix>console:paused``: field
``destination:KEY`` or ``bot:NAME``, value a small JSON document). Each pod reads it every
``interval_s`` into its :class:`Pauses`; a pause made here takes effect here at once and
in the other pods within one interval. If Redis cannot be read, the pod keeps the pauses
it last saw (an operator's pause is not lifted by an outage) and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog

from .pauses import Kind, Pause, Pauses

log = structlog.get_logger("cardq.console")


class PoolPauses:
    def __init__(self, client: Any, key: str, pauses: Pauses, interval_s: float = 1.0) -> None:
        self._client = client
        self.key = key
        self._pauses = pauses
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def pause(self, kind: Kind, name: str, by: str = "") -> Pause:
        pause = Pause(kind, name, "pool", time.time(), by)
        value = orjson.dumps({"since": pause.since, "by": by})
        await self._client.hset(self.key, pause.key, value)
        await self.refresh()
        return pause

    async def resume(self, kind: Kind, name: str) -> bool:
        removed = int(await self._client.hdel(self.key, f"{kind}:{name}"))
        await self.refresh()
        return removed > 0

    async def refresh(self) -> None:
        raw: dict[bytes, bytes] = await self._client.hgetall(self.key)
        found: dict[str, Pause] = {}
        for field, value in raw.items():
            kind, _, name = field.decode().partition(":")
            if kind not in ("destination", "bot") or not name:
                continue
            try:
                doc = orjson.loads(value)
                since, by = float(doc.get("since", 0.0)), str(doc.get("by", ""))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                since, by = 0.0, ""
            pause = Pause(kind, name, "pool", since, by)  # type: ignore[arg-type]
            found[pause.key] = pause
        self._pauses.set_pool(found)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="console:pool-pauses")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def _follow(self) -> None:
        while True:
            try:
                await self.refresh()
                if self._failing:
                    log.info("pool_pauses_readable", key=self.key)
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("pool_pauses_unreadable", key=self.key, error=type(exc).__name__)
                self._failing = True
            await asyncio.sleep(self._interval_s)
