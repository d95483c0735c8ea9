"""Paused destinations and bots: what a lane checks before it starts its next request.

A pause holds a lane *between* requests: its queued jobs stay in the lane, in order, and
show as waiting; the request already started (on the wire or in its retry backoff) ends
as it would have. Nothing is dropped or reordered, and a revoked partition's jobs still
leave a paused lane at once (``Scheduler.drain`` empties the queue, not the gate).

Two layers: pauses made in this pod, and pauses shared by the pool (read from Redis by
``pool.py``). A lane waits while either layer holds its destination or its bot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["destination", "bot"]
Reach = Literal["pod", "pool"]


@dataclass(frozen=True, slots=True)
class Pause:
    kind: Kind
    name: str
    reach: Reach
    since: float  # wall-clock seconds
    by: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "reach": self.reach,
            "since": self.since,
            "by": self.by,
        }


class Pauses:
    def __init__(self) -> None:
        self._pod: dict[str, Pause] = {}
        self._pool: dict[str, Pause] = {}
        self._changed = asyncio.Event()

    def holds(self, destination: str, bot: str) -> Pause | None:
        """The pause that keeps this lane waiting, if any (cheap: two dict lookups each)."""
        for layer in (self._pod, self._pool):
            if layer:
                found = layer.get(f"destination:{destination}") or layer.get(f"bot:{bot}")
                if found is not None:
                    return found
        return None

    async def changed(self) -> None:
        """Return at the next pause or resume anywhere (the caller checks again)."""
        await self._changed.wait()

    def pause(self, kind: Kind, name: str, by: str = "") -> Pause:
        pause = Pause(kind, name, "pod", time.time(), by)
        self._pod[pause.key] = pause
        self._signal()
        return pause

    def resume(self, kind: Kind, name: str) -> bool:
        found = self._pod.pop(f"{kind}:{name}", None)
        self._signal()
        return found is not None

    def set_pool(self, pauses: Mapping[str, Pause]) -> None:
        """Replace the pool layer with what the shared store holds now."""
        if dict(pauses) != self._pool:
            self._pool = dict(pauses)
            self._signal()

    def all(self) -> list[Pause]:
        return sorted([*self._pod.values(), *self._pool.values()], key=lambda p: p.since)

    def _signal(self) -> None:
        # Every waiter wakes and checks again; a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
