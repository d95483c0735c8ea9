"""Business-level idempotency: one idempotency key → at most one delivery, and one result
per consumed record.

A key is claimed just before a send (after its rate budget was granted) and finished
after it, so a request that is consumed twice (a restart above the commit point, a
rebalance, a producer's resend) is sent once. A claim is a short *lease*
(``claim_timeout_s``), renewed while the send is on the wire: a dead worker blocks a key
for at most one lease, not for as long as its requests waited for budget.

The store also remembers, per partition, which offsets above the commit point already
have a result on the broker (:meth:`IdempotencyStore.mark_published`): the next owner of
the partition loads that set when it is assigned and skips those records instead of
publishing a second result. ``memory`` serves one process; ``redis`` serves a pool.

And it remembers, per subject (``lifecycle.py``: destination + the producer's
``subject_key``), the platform's message id of the card sent for it, so a later state
updates that card, from whichever worker of the pool reads it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: A partition, as the store names it: (topic, partition).
Partition = tuple[str, int]
#: Per requests partition, offsets whose results are on the broker.
Marks = Mapping[Partition, Collection[int]]
#: Per requests partition: results partition → offset from which results may be unmarked.
ResultPositions = Mapping[Partition, Mapping[int, int]]


class ClaimState(enum.Enum):
    NEW = "new"
    IN_FLIGHT = "in_flight"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class DoneRecord:
    """What is remembered of a delivered key: enough to answer a duplicate."""

    request_id: str
    message_id: str | None
    finished_at: str
    #: ``topic/partition/offset`` of the record that delivered it: the same record read
    #: again (above the commit point) is told apart from a new record with the same
    #: request id or key (a producer's resend), which gets a ``duplicate`` result.
    source: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DoneRecord:
        """Tolerant of fields written by other versions (e.g. the old ``published``)."""
        return cls(
            request_id=str(data.get("request_id", "")),
            message_id=data.get("message_id"),
            finished_at=str(data.get("finished_at", "")),
            source=data.get("source"),
        )


@dataclass(frozen=True, slots=True)
class Published:
    """What the store knows of a requests partition's results."""

    #: Offsets of the partition whose results are on the broker (not yet forgotten).
    offsets: set[int]
    #: Results partition → the offset from which results of this partition's records may
    #: be on the broker without a mark (written by an owner that died before marking).
    positions: dict[int, int]


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    owner: str | None = None
    record: DoneRecord | None = None


class IdempotencyStore(Protocol):
    async def lookup(self, key: str) -> Claim:
        """What the key holds now, without taking it (``NEW``: nothing)."""
        ...

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        """Take the key for ``owner``, or say who holds it, or what it delivered."""
        ...

    async def extend(self, claims: Mapping[str, str], claim_ttl_s: float) -> None:
        """Renew the leases of these claims (key → owner) held by sends on the wire."""
        ...

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None: ...

    async def release(self, key: str, owner: str) -> None:
        """Give the key up (the send failed, or the partition was revoked)."""
        ...

    async def mark_published(
        self, offsets: Marks, ttl_s: float, positions: ResultPositions | None = None
    ) -> None:
        """Note that these records' results were acknowledged by the broker, and, per
        requests partition, the results-topic offset (per results partition) from which
        its later results may still be unmarked: where a new owner scans."""
        ...

    async def published(self, partition: Partition) -> Published:
        """The marks of a partition and where its unmarked results may start."""
        ...

    async def forget_published(self, below: Mapping[Partition, int]) -> None:
        """Forget the marks below each partition's committed offset (never read again)."""
        ...

    async def subject(self, key: str) -> str | None:
        """The message id remembered for a subject key, or ``None``."""
        ...

    async def remember_subject(self, key: str, message_id: str, ttl_s: float) -> None: ...

    async def forget_subject(self, key: str) -> None: ...

    async def aclose(self) -> None: ...


__all__ = ["Claim", "ClaimState", "DoneRecord", "IdempotencyStore", "Partition", "Published"]
