"""What a rebalance does to the worker's partitions.

An assignment first learns which of its records already have a result (``takeover.py``)
before the loop takes any of them in; a revocation drains the revoked partitions (sends on
the wire finish within ``delivery.drain_grace_s``, the rest is left to the next owner),
publishes and marks their results, commits, and gives them up. Both bump the epoch, so a
fetch that started before the rebalance is dropped (its records are read again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import TopicPartition

from .config import Settings
from .kafka_clients import rebalance_timeout_ms
from .metrics import Metrics
from .parts import Parts

log = structlog.get_logger("cardq.worker")


@dataclass(slots=True)
class Assignment:
    """What the loop knows of its partitions; the rebalance callbacks change it."""

    #: Bumped by every rebalance: a fetch that started before it is stale (its records
    #: belong to an assignment already drained and committed; they are read again).
    epoch: int = 0
    #: True from a revocation until the next assignment: a fetch that returns meanwhile
    #: holds records of the partitions given up (aiokafka still hands them out). Taken
    #: in, they ran under no assignment of ours once the same partition came back, after
    #: its new assignment had read them again from the committed offset.
    between: bool = False
    paused: set[TopicPartition] = field(default_factory=set)
    #: per partition, the offset after the last record read (for its backlog)
    next_offset: dict[TopicPartition, int] = field(default_factory=dict)
    #: Per assigned partition: offsets whose result an earlier owner (or an earlier
    #: assignment) already published; a re-read of one is finished without a result.
    already_published: dict[TopicPartition, set[int]] = field(default_factory=dict)
    #: Set while an assignment loads those marks: intake waits for it.
    loading: asyncio.Future[None] | None = None
    #: Set by SIGTERM / ``Worker.stop``. aiokafka runs the rebalance callbacks in its
    #: coordinator task and its ``stop()`` waits for that task, so a callback that went on
    #: loading marks (a results scan may take up to 30 s) held the exit for as long.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class Rebalance:
    """The group consumer's rebalance callbacks (``kafka_clients.Rebalancing``)."""

    def __init__(
        self,
        settings: Settings,
        parts: Parts,
        metrics: Metrics,
        state: Assignment,
        commit: Callable[[set[TopicPartition]], Awaitable[None]],
        on_joined: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.metrics = metrics
        self.state = state
        self._commit = commit
        self._on_joined = on_joined
        self._rebalance_timeout_ms = rebalance_timeout_ms(settings)

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        p = self.parts
        self.state.epoch += 1
        p.publisher.assignment += 1
        self.state.between = False  # a fetch from now on is of this assignment
        self.state.paused &= assigned  # a fresh assignment starts unpaused (aiokafka resets it)
        p.scheduler.forget_revoked(assigned)
        total = p.consumer.partitions_for_topic(self.settings.kafka.topics.requests) or ()
        p.pipeline.limiter.set_share(len(assigned), len(total))
        # aiokafka may fetch for the new assignment while this runs: the loop waits for
        # the marks before it takes any record in (no await before this line).
        loading = self.state.loading = asyncio.get_running_loop().create_future()
        try:
            marks = await self._unless_stopping(p.takeover.load(assigned))
            if marks is None:
                # Stopping: the loop takes no record in any more, so the marks are not
                # needed; the partitions go to the next owner, which loads its own.
                log.info("assignment_abandoned", partitions=sorted(tp.partition for tp in assigned))
                return
            self.state.already_published.update(marks)
        finally:
            loading.set_result(None)
            if self.state.loading is loading:
                self.state.loading = None
        self._on_joined()
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            already_published=sum(len(self.state.already_published.get(tp, ())) for tp in assigned),
        )

    async def _unless_stopping(
        self, work: Coroutine[Any, Any, dict[TopicPartition, set[int]]]
    ) -> dict[TopicPartition, set[int]] | None:
        """``work``'s answer, or ``None`` (``work`` cancelled) once the worker is stopping."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self.state.stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.state.epoch += 1
        if not revoked:
            return
        p = self.parts
        began = time.monotonic()
        self.state.between = True  # until the next assignment
        grace = self.settings.delivery.drain_grace_s
        finished, _ = await p.scheduler.drain(revoked, grace)
        await p.publisher.flush()
        await p.publisher.write_marks()  # before the next owner loads them
        await self._commit(revoked)
        left = p.tracker.forget(set(revoked))  # unfinished: the next owner sends them
        p.publisher.assignment += 1  # what is still running of them publishes nothing
        self.state.paused -= revoked
        for tp in revoked:
            self.state.next_offset.pop(tp, None)
            self.state.already_published.pop(tp, None)
            with contextlib.suppress(KeyError):  # no lag sample was taken yet
                self.metrics.lag.remove(str(tp.partition))
        took = time.monotonic() - began
        log.info(
            "partitions_revoked",
            partitions=sorted(tp.partition for tp in revoked),
            finished=finished,
            left_to_next_owner=left,
            took_s=round(took, 3),
        )
        if took * 1000 > self._rebalance_timeout_ms:
            # The group may have handed these partitions on while they drained: a result
            # published after that can be a record's second one.
            log.warning(
                "revocation_overran",
                took_s=round(took, 3),
                rebalance_timeout_ms=self._rebalance_timeout_ms,
            )
