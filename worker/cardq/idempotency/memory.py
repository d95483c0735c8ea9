"""The default store: one process, bounded memory (the oldest keys are forgotten first)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from . import Claim, ClaimState, DoneRecord, Marks, Partition, Published, ResultPositions

_NEW = Claim(ClaimState.NEW)


class MemoryStore:
    def __init__(
        self, *, max_keys: int = 200_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_keys = max_keys
        self._clock = clock
        # key -> (deadline, owner or None, record or None)
        self._entries: OrderedDict[str, tuple[float, str | None, DoneRecord | None]] = OrderedDict()
        self._published: dict[Partition, set[int]] = {}
        self._positions: dict[Partition, dict[int, int]] = {}
        # subject key -> (deadline, message id); bounded like the keys
        self._subjects: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def lookup(self, key: str) -> Claim:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return _NEW
        _, holder, record = entry
        if record is not None:
            return Claim(ClaimState.DONE, record=record)
        return Claim(ClaimState.IN_FLIGHT, owner=holder)

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        found = await self.lookup(key)
        if found.state is ClaimState.NEW:
            self._put(key, (self._clock() + claim_ttl_s, owner, None))
        return found

    async def extend(self, claims: Mapping[str, str], claim_ttl_s: float) -> None:
        until = self._clock() + claim_ttl_s
        for key, owner in claims.items():
            entry = self._entries.get(key)
            if entry is not None and entry[1] == owner and entry[2] is None:
                self._entries[key] = (until, owner, None)

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None:
        self._put(key, (self._clock() + ttl_s, None, record))

    async def release(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] == owner and entry[2] is None:
            del self._entries[key]

    async def mark_published(
        self, offsets: Marks, ttl_s: float, positions: ResultPositions | None = None
    ) -> None:
        for partition, marks in offsets.items():
            self._published.setdefault(partition, set()).update(marks)
        for partition, where in (positions or {}).items():
            self._positions.setdefault(partition, {}).update(where)

    async def published(self, partition: Partition) -> Published:
        return Published(
            set(self._published.get(partition, ())), dict(self._positions.get(partition, {}))
        )

    async def forget_published(self, below: Mapping[Partition, int]) -> None:
        for partition, offset in below.items():
            marks = self._published.get(partition)
            if marks:
                marks.difference_update([m for m in marks if m < offset])

    async def subject(self, key: str) -> str | None:
        entry = self._subjects.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def remember_subject(self, key: str, message_id: str, ttl_s: float) -> None:
        subjects = self._subjects
        subjects[key] = (self._clock() + ttl_s, message_id)
        subjects.move_to_end(key)
        while len(subjects) > self._max_keys:
            subjects.popitem(last=False)

    async def forget_subject(self, key: str) -> None:
        self._subjects.pop(key, None)

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
