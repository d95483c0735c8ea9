"""Business-level idempotency: one idempotency key → at most one delivery.

The store is claimed before a send and finished after it, so a request that is consumed
twice (a restart above the commit point, a rebalance, a producer's resend) is sent once.
``memory`` serves one process; ``redis`` serves a pool of workers. A claim whose owner
died expires after ``claim_timeout_s`` and the key can be claimed again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


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
    #: The result was acknowledged by the broker: a re-read of the same record (above
    #: the commit point after a rebalance) needs no second result.
    published: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    owner: str | None = None
    record: DoneRecord | None = None


class IdempotencyStore(Protocol):
    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        """Take the key for ``owner``, or say who holds it, or what it delivered."""
        ...

    async def extend(self, key: str, owner: str, claim_ttl_s: float) -> None:
        """Keep a claim alive across long waits (rate budget, retries)."""
        ...

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None: ...

    async def mark_published(self, keys: list[str]) -> None:
        """Note that these keys' results were acknowledged (called before each commit)."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Give the key up (the send failed for good, or the partition was revoked)."""
        ...

    async def aclose(self) -> None: ...


__all__ = ["Claim", "ClaimState", "DoneRecord", "IdempotencyStore"]
