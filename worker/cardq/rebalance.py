"""What a rebalance does to the worker's partitions.

An assignment first learns which of its records already have a result (``takeover.py``)
before the loop takes any of them in; a revocation drains the revoked partitions (sends on
the wire finish within ``delivery.drain_grace_s``, the rest is left to the next owner),
publishes and marks their results, commits, and gives them up. Both bump the epoch, so a
fetch that started before the rebalance is dropped (its records are read again).

**Holding through a rebalance.** aiokafka's protocol is eager: every rebalance revokes
every partition of every member, and the group waits for all of them to rejoin, up to the
rebalance timeout when a member died. Dropping the work at each revocation stopped the
whole pool for that long (45 s after a SIGKILL: the pool bench's app budget fell to 74%),
although most partitions come back to the member that had them. So with a shared store
(Redis, reachable) a revocation holds its partitions instead: their lanes go on sending
(the store's claims keep a request from being sent by two members; the budgets are the
pool's), their results wait (:attr:`ResultPublisher.held`), nothing more is read or
committed. The next assignment decides: a partition that stays publishes what waited and
reads on from where it was (no record read twice); one that moved drops what waited, lets
its sends on the wire finish and gives up the rest; its new owner answers every record
after the commit point, from the store where this member sent it. With the memory store a
member cannot tell another what it sent, so it drains as before.
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
    #: Partitions held through the rebalance under way (module docstring).
    held: set[TopicPartition] = field(default_factory=set)
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
        self.state.between = False  # a fetch from now on is of this assignment
        kept, lost = self.state.held & assigned, self.state.held - assigned
        self.state.held = set()
        fresh = assigned - kept
        p.publisher.renew(fresh)  # what ran of an earlier read of these publishes nothing
        self.state.paused &= assigned  # a fresh assignment starts unpaused (aiokafka resets it)
        p.scheduler.forget_revoked(assigned)
        total = p.consumer.partitions_for_topic(self.settings.kafka.topics.requests) or ()
        p.pipeline.limiter.set_share(len(assigned), len(total))
        for tp in kept:  # read on from where it was, not from the commit point
            if tp in self.state.next_offset:
                p.consumer.seek(tp, self.state.next_offset[tp])
        # aiokafka may fetch for the new assignment while this runs: the loop waits for
        # the marks before it takes any record in (no await before this line).
        loading = self.state.loading = asyncio.get_running_loop().create_future()
        try:
            if lost:
                await self._give_up_held(lost)
            released = await p.publisher.release(kept)
            marks = await self._unless_stopping(p.takeover.load(fresh))
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
            kept=sorted(tp.partition for tp in kept),
            released_results=released,
            already_published=sum(len(self.state.already_published.get(tp, ())) for tp in fresh),
        )

    async def _give_up_held(self, lost: set[TopicPartition]) -> int:
        """Held partitions the group gave to another member (or a stop gives up): nothing
        of theirs is published (their new owner answers them), sends on the wire finish
        (one cut off could reach the platform with the store never told). Returns the
        jobs left to the next owner."""
        p = self.parts
        dropped = p.publisher.give_up(lost)
        finished, left = await p.scheduler.drain(lost, self.settings.delivery.drain_grace_s)
        p.tracker.forget(set(lost))
        self._forget(lost)
        log.info(
            "held_partitions_moved",
            partitions=sorted(tp.partition for tp in lost),
            results_dropped=dropped,
            sends_finished=finished,
            left_to_next_owner=left,
        )
        return left + dropped + finished

    def may_hold(self) -> bool:
        """Holding needs a store every member shares and can reach (module docstring)."""
        health = self.parts.store_health
        return (
            self.settings.delivery.hold_through_rebalance
            and health is not None
            and health.reachable
            and not self.state.stopping.is_set()
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
        holding = self.may_hold()
        if holding:
            # From here their results wait; what was handed over before is published,
            # marked and committed now, as a drain would (the next owner may be another).
            p.publisher.hold(revoked)
            self.state.held |= revoked
            finished, left = 0, 0
        else:
            grace = self.settings.delivery.drain_grace_s
            finished, _ = await p.scheduler.drain(revoked, grace)
        await p.publisher.flush()
        await p.publisher.write_marks()  # before the next owner loads them
        await self._commit(revoked)
        if not holding:
            left = p.tracker.forget(set(revoked))  # unfinished: the next owner sends them
            p.publisher.renew(revoked)  # what is still running of them publishes nothing
            self._forget(revoked)
        self.state.paused -= revoked  # aiokafka forgets its pauses with the assignment
        took = time.monotonic() - began
        log.info(
            "partitions_revoked",
            partitions=sorted(tp.partition for tp in revoked),
            held=holding,
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

    def _forget(self, tps: set[TopicPartition]) -> None:
        """The loop's bookkeeping of partitions given up."""
        for tp in tps:
            self.state.next_offset.pop(tp, None)
            self.state.already_published.pop(tp, None)
            with contextlib.suppress(KeyError):  # no lag sample was taken yet
                self.metrics.lag.remove(str(tp.partition))

    async def stop_holding(self) -> int:
        """At shutdown during a rebalance: held partitions are given up as if they moved.
        Returns the jobs left to the next owner."""
        held, self.state.held = self.state.held, set()
        return await self._give_up_held(held) if held else 0
