"""The default store: one process, bounded memory (the oldest keys are forgotten first)."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from . import Claim, ClaimState, DoneRecord

_NEW = Claim(ClaimState.NEW)


class MemoryStore:
    def __init__(
        self, *, max_keys: int = 200_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_keys = max_keys
        self._clock = clock
        # key -> (deadline, owner or None, record or None)
        self._entries: OrderedDict[str, tuple[float, str | None, DoneRecord | None]] = OrderedDict()

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            _, holder, record = entry
            if record is not None:
                return Claim(ClaimState.DONE, record=record)
            return Claim(ClaimState.IN_FLIGHT, owner=holder)
        self._put(key, (now + claim_ttl_s, owner, None))
        return _NEW

    async def extend(self, key: str, owner: str, claim_ttl_s: float) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] == owner and entry[2] is None:
            self._entries[key] = (self._clock() + claim_ttl_s, owner, None)

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None:
        self._put(key, (self._clock() + ttl_s, None, record))

    async def mark_published(self, keys: list[str]) -> None:
        entries = self._entries
        for key in keys:
            entry = entries.get(key)
            if entry is not None and entry[2] is not None and not entry[2].published:
                entries[key] = (entry[0], None, dataclasses.replace(entry[2], published=True))

    async def release(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] == owner and entry[2] is None:
            del self._entries[key]

    def _put(self, key: str, entry: tuple[float, str | None, DoneRecord | None]) -> None:
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self._max_keys:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        return None
