"""A request read from Kafka, on its way through the pipeline, and where it is in it.

The phases are visible on the :class:`Job` so a draining worker knows which jobs are on
the wire (let them finish) and which are only waiting (cancel them: the next owner of the
partition will send them).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from .models import Result, SendRequest, Source

#: Why a job is waiting (the ``reason`` label of ``cardq_jobs_waiting``).
WaitReason = Literal["rate_limit", "retry", "claim", "store"]
WAIT_REASONS: tuple[WaitReason, ...] = ("rate_limit", "retry", "claim", "store")


class StoreUnavailable(RuntimeError):
    """The idempotency store stayed unreachable until the request's deadline."""


class Phase(enum.Enum):
    QUEUED = "queued"
    WAITING = "waiting"  # for a claim, the rate budget or a retry delay: safe to cancel
    SENDING = "sending"  # on the wire: let it finish
    DONE = "done"  # has its result, about to be published
    PUBLISHED = "published"  # the result is handed to the producer


@dataclass(slots=True, eq=False)
class Job:
    request: SendRequest
    source: Source
    raw: bytes
    received_at: datetime
    tp: object = None
    #: The generation of its partition this record was read under (``publisher.py``): a
    #: result of an earlier one is not published (the partition was given up since; its
    #: owner answers the record).
    assignment: int = 0
    phase: Phase = Phase.QUEUED
    attempts: int = 0
    #: Of ``attempts``, how many the platform answered with a throttle (not counted
    #: against ``delivery.max_attempts``).
    throttles: int = 0
    waiting_for: WaitReason | None = None
    first_attempt_at: datetime | None = None
    task: asyncio.Task[Result | None] | None = field(default=None, repr=False)
    published: asyncio.Event | None = field(default=None, repr=False)
    #: Set by a drain that cancelled the job (its partition is given up). A cancellation
    #: can be swallowed on its way (redis-py does so mid-command), and the pipeline then
    #: checks this before it claims and before it sends: never a send for a record the
    #: next owner is answering.
    dropped: bool = False

    @property
    def size(self) -> int:
        return len(self.raw)

    @contextlib.contextmanager
    def waiting(self, reason: WaitReason) -> Iterator[None]:
        """Say what the job waits for while it waits: the console and the gauge of jobs
        waiting by reason read it, and a wait that ends by cancellation must clear it too."""
        self.waiting_for = reason
        try:
            yield
        finally:
            self.waiting_for = None


def source_id(source: Source) -> str:
    """The record's coordinates as the idempotency store keeps them."""
    return f"{source.topic}/{source.partition}/{source.offset}"
