"""Which partitions to pause and resume: the buffer shared fairly between partitions.

Why a share per partition: aiokafka hands out a partition's fetched records before the
next one's, so a deep backlog used to fill the whole buffer (20,000 records) from the
first one or two partitions. Lanes exist only for the destinations in the buffer, so
~170 destinations capped how many sends could be in flight against a slow platform
(``bench/README.md``, slow platform). Each partition that still has records to read gets
an equal share of the bound instead, and the buffer holds the destinations of all of them.

The share is divided among the partitions that want more (records waiting on the broker,
or not known yet), not among all assigned ones: a single busy partition in an otherwise
idle topic still gets the whole buffer, so a flooded chat there does not stall the quiet
ones behind it any sooner than before.

Pure and synchronous, so every rule is unit-tested (``tests/test_flow.py``);
``consumer.Worker`` applies the plan.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Held:
    """One assigned partition, as the worker sees it."""

    records: int
    bytes: int
    #: records on the broker past the last one read; None while unknown (nothing read yet)
    backlog: int | None


@dataclass(frozen=True, slots=True)
class Bound:
    max_records: int
    max_bytes: int
    #: a paused partition resumes below this fraction of its share
    resume_ratio: float


@dataclass(frozen=True, slots=True)
class Plan(Generic[K]):
    pause: frozenset[K]
    resume: frozenset[K]
    #: how many partitions share the buffer
    sharing: int


def plan(held: Mapping[K, Held], paused: Set[K], bound: Bound) -> Plan[K]:
    """Pause a partition at its share and resume it below ``resume_ratio`` of it; at the
    bound (records or bytes: a fetch can overshoot a share) pause everything. The shares
    add up to the bound, so no other global rule is needed, and one partition's resuming
    never waits for the others to drain."""
    total_records = sum(h.records for h in held.values())
    total_bytes = sum(h.bytes for h in held.values())
    fill = max(total_records / bound.max_records, total_bytes / bound.max_bytes)
    wanting = [k for k, h in held.items() if h.backlog is None or h.backlog > 0]
    sharing = max(1, len(wanting))
    if fill >= 1.0:
        return Plan(frozenset(k for k in held if k not in paused), frozenset(), sharing)
    share_records = bound.max_records / sharing
    share_bytes = bound.max_bytes / sharing
    pause: set[K] = set()
    resume: set[K] = set()
    for key, h in held.items():
        own = max(h.records / share_records, h.bytes / share_bytes)
        if key in paused:
            if own < bound.resume_ratio:
                resume.add(key)
        elif own >= 1.0:
            pause.add(key)
    return Plan(frozenset(pause), frozenset(resume), sharing)


def backlog(read: int | None, high: int | None) -> int | None:
    """Records on the broker past the last one read (None until both are known)."""
    if read is None or not isinstance(high, int):
        return None
    return max(0, high - read)


def decide(
    assigned: Iterable[K],
    buffered: Mapping[K, tuple[int, int]],
    read: Mapping[K, int],
    highwater: Mapping[K, int | None],
    paused: Set[K],
    bound: Bound,
) -> Plan[K]:
    """The plan for the assigned partitions, from what each holds (records, bytes in
    ``buffered``), the offset after its last record read and the broker's high watermark."""
    held = {
        k: Held(*buffered.get(k, (0, 0)), backlog(read.get(k), highwater.get(k))) for k in assigned
    }
    return plan(held, paused, bound)
