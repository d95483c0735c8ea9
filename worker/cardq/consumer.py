"""The worker loop.

Read it top to bottom: :meth:`Worker.run` builds its parts (``parts.py``), starts the
clients, then :class:`Member` loops fetch → intake → backpressure → commit until asked
to stop, then the worker shuts down::

    CREATED ─ start() ─▶ RUNNING ─ SIGTERM / stop() ─▶ DRAINING ─▶ STOPPED
                            ▲  │ partitions revoked: hold them (a shared store) or
                            └──┘ drain them, commit, give them up

Delivery guarantee: a record's offset is committed only after its result (and its dead
letter, if any) is acknowledged by the broker (``publisher.py``), and the committed offset
of a partition is the lowest one not yet finished (``offsets.py``). A worker that dies
loses nothing: the next owner re-reads from the commit point, and the idempotency store
keeps what was already delivered from being sent again; what already has a result is
learnt at each assignment (``takeover.py``, README, "Exactly one result per record").

The parts: ``intake.py`` turns a record into a request or a rejection, ``scheduler.py``
runs it in its destination's lane through ``pipeline.py``, ``publisher.py`` publishes the
result, ``flow.py`` decides which partitions to pause, ``rebalance.py`` handles what the
group assigns and revokes, ``kafka_clients.py`` makes the aiokafka clients
(``memory_kafka.py`` in-memory ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from . import flow
from .backends.transport import Transport
from .config import Settings
from .console.state import Console
from .console.web import application as console_app
from .health import HealthServer
from .idempotency import IdempotencyStore
from .job import WAIT_REASONS, Job
from .kafka_clients import AiokafkaClients, KafkaClients
from .metrics import Metrics
from .models import Result, Source, utcnow
from .offsets import OffsetTracker
from .parts import Parts, build_parts, watch_store
from .rebalance import Assignment, Rebalance
from .store_health import StoreHealth

log = structlog.get_logger("cardq.worker")

#: While the first join is pending, a ``still_joining_group`` line this often.
JOIN_NOTE_EVERY_S = 5.0


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Worker:
    """The process's worker: its state, health and lifecycle around one :class:`Member`."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        store: IdempotencyStore | None = None,
        transport: Transport | None = None,
        clients: KafkaClients | None = None,
        serve_health: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.state = State.CREATED
        self.joined = False
        self.became_ready = asyncio.Event()
        self._serve_health = serve_health and settings.observability.port is not None
        self.health: HealthServer | None = None
        self._store = store
        self._transport = transport
        self._clients = clients
        #: The loop's bookkeeping (records held, partitions paused), here from the start
        #: so that tests and tools can look at it; and the parts :meth:`run` built.
        self.tracker = OffsetTracker()
        self.assignment = Assignment()
        self.parts: Parts | None = None
        self._stop = self.assignment.stopping  # the rebalance callbacks watch it too
        #: The Redis store's reachability (``None`` with the memory store).
        self.store_health: StoreHealth | None = None
        self.counts = {"consumed": 0, "results": 0}
        self._result_hooks: list[Callable[[Result], None]] = []

    # ------------------------------------------------------------------ public surface

    @property
    def ready(self) -> bool:
        return self.state is State.RUNNING and self.joined and not self._store_gone()

    def _store_gone(self) -> bool:
        """Redis unreachable for longer than ``idempotency.unready_after_s``."""
        limit = self.settings.idempotency.unready_after_s
        health = self.store_health
        return health is not None and limit is not None and health.unreachable_for() >= limit

    def stop(self) -> None:
        """Ask the worker to drain and exit (SIGTERM does the same)."""
        self._stop.set()

    def on_result(self, hook: Callable[[Result], None]) -> None:
        """Call ``hook`` with every result once it is acknowledged (tests, ``cardq dev``)."""
        self._result_hooks.append(hook)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    def _joined(self) -> None:
        self.joined = True
        if self.state is State.RUNNING:
            self.metrics.ready.set(1)
            self.became_ready.set()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        s = self.settings
        k = s.kafka
        clients = self._clients or AiokafkaClients(s)
        await clients.check()  # a wrong address or password: one line, exit 2
        parts = build_parts(
            s, self.metrics, clients, self.tracker, store=self._store, transport=self._transport
        )
        self.parts, self.store_health = parts, parts.store_health
        self.counts = parts.publisher.counts
        parts.publisher.hooks = self._result_hooks
        member = Member(s, parts, self.metrics, self.assignment, on_joined=self._joined)
        if self._serve_health:
            console = None
            if s.observability.console.enabled:
                console = console_app(Console.attach(self, parts))
            self.health = HealthServer(self.metrics, lambda: self.ready, console)
            await self.health.start(s.observability.host, s.observability.port or 0)
        background = [asyncio.create_task(parts.publisher.mark_loop(), name="published-marks")]
        if parts.store_health is not None:
            probe = watch_store(s, parts.store_health)
            background.append(asyncio.create_task(probe, name="store-probe"))
        try:
            await parts.producer.start()
            await parts.consumer.start()
            parts.consumer.subscribe(
                [k.topics.requests], listener=clients.listener(member.rebalance)
            )
            self.state = State.RUNNING
            log.info(
                "worker_started",
                worker_id=s.worker_id,
                topic=k.topics.requests,
                group=k.group_id,
                bots=sorted(parts.backends),
            )
            # The join can take seconds (a broker may hold it until the group settles):
            # say what the worker is waiting for, so a quiet start is not mistaken for a hang.
            log.info("joining_group", group=k.group_id, bootstrap_servers=k.bootstrap_servers)
            watcher = asyncio.create_task(self._note_slow_join())
            try:
                await member.loop(self._stop)
            finally:
                watcher.cancel()
        finally:
            await self._shutdown(member, clients, background)

    async def _shutdown(
        self, member: Member, clients: KafkaClients, background: list[asyncio.Task[None]]
    ) -> None:
        """DRAINING: finish what may finish, publish and commit it; then STOPPED."""
        self.state = State.DRAINING
        self.metrics.ready.set(0)
        finished = left = 0
        try:
            finished, left = await member.drain_all()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await member.parts.aclose(clients)
            if self.health is not None:
                await self.health.stop()
            self.state = State.STOPPED
            member.parts.publisher.closed = True
            log.info(
                "worker_stopped",
                consumed=self.counts["consumed"],
                results=self.counts["results"],
                finished_while_draining=finished,
                left_to_next_owner=left,
            )

    async def _note_slow_join(self) -> None:
        """A line every few seconds until the first assignment: ``getmany`` waits for the
        join without returning, so the fetch loop cannot say it is still waiting."""
        k = self.settings.kafka
        started = time.monotonic()
        while not self.joined and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.became_ready.wait(), JOIN_NOTE_EVERY_S)
            if not self.joined and not self._stop.is_set():
                log.info(
                    "still_joining_group",
                    group=k.group_id,
                    bootstrap_servers=k.bootstrap_servers,
                    waited_s=round(time.monotonic() - started, 1),
                )


class Member:
    """The worker as a member of its consumer group: the loop over its assigned
    partitions (a rebalance changes them: ``rebalance.py``)."""

    def __init__(
        self,
        settings: Settings,
        parts: Parts,
        metrics: Metrics,
        state: Assignment,
        on_joined: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.metrics = metrics
        d = settings.delivery
        self._bound = flow.Bound(d.max_buffered_records, d.max_buffered_bytes, d.resume_ratio)
        self.state = state
        #: The group consumer's rebalance callbacks (``rebalance.py``).
        self.rebalance = Rebalance(settings, parts, metrics, self.state, self.commit, on_joined)

    # ------------------------------------------------------------------ the loop

    async def loop(self, stop: asyncio.Event) -> None:
        d = self.settings.delivery
        next_commit = time.monotonic() + d.commit_interval_s
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                room = d.max_buffered_records - self.parts.tracker.buffered
                fetch = asyncio.ensure_future(self._fetch(max(1, min(2000, room))))
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batch, epoch = fetch.result()
                if self.state.loading is not None and batch:
                    await asyncio.shield(self.state.loading)  # the marks of a new assignment
                    if stop.is_set():
                        break  # the assignment was abandoned without its marks
                if epoch != self.state.epoch or self.state.between:
                    # A rebalance ran between the fetch and now (aiokafka lets it start as
                    # soon as getmany returns), or is under way. Every partition was revoked
                    # (eager protocol) and is read again from its committed offset: these
                    # would be duplicates.
                    continue
                for tp, records in batch.items():
                    for record in records:
                        self._intake(tp, record)
                self._backpressure()
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + d.commit_interval_s
                    await self.commit()
                    await self._observe_lag()
        finally:
            stop_wait.cancel()

    async def _fetch(self, max_records: int) -> tuple[dict[TopicPartition, list[Any]], int]:
        """One getmany, and the rebalance epoch at the instant it returned (no await in
        between, so no rebalance callback can run before the epoch is read)."""
        batch = await self.parts.consumer.getmany(timeout_ms=200, max_records=max_records)
        return batch, self.state.epoch

    def _intake(self, tp: TopicPartition, record: Any) -> None:
        if record.offset < self.state.next_offset.get(tp, 0):
            return  # held through a rebalance: read already (a fetch from the commit point)
        p = self.parts
        raw = record.value or b""
        p.tracker.add(tp, record.offset, len(raw))
        self.state.next_offset[tp] = record.offset + 1
        p.publisher.counts["consumed"] += 1
        self.metrics.child(self.metrics.consumed, str(tp.partition)).inc()
        marks = self.state.already_published.get(tp)
        if marks and record.offset in marks:
            # Read again (above the commit point) after its result reached the broker.
            marks.discard(record.offset)
            p.tracker.finish(tp, record.offset, len(raw))
            self.metrics.already_published.inc()
            return
        source = Source(tp.topic, tp.partition, record.offset, record.timestamp, record.key)
        taken = p.intake.take(source, record.value)
        if isinstance(taken, Result):
            p.publisher.publish_soon(tp, record.offset, raw, taken)
            return
        job = Job(
            request=taken,
            source=source,
            raw=raw,
            received_at=utcnow(),
            tp=tp,
            assignment=p.publisher.generation(tp),
        )
        p.scheduler.submit(job)

    def _backpressure(self) -> None:
        """Bound what is held in memory and share it fairly: each partition that still has
        records to read may hold an equal share of the bound, is paused at it and resumed
        below ``resume_ratio`` of it; at the bound everything pauses (``flow.plan``). The
        loop keeps calling ``getmany`` while paused, so the group never sees a stalled
        member."""
        consumer, t = self.parts.consumer, self.parts.tracker
        assigned = consumer.assignment()
        buffered = {
            tp: (state.buffered, state.buffered_bytes)
            for tp in assigned
            if (state := t.partitions.get(tp)) is not None
        }
        highwater = {tp: consumer.highwater(tp) for tp in assigned}
        decided = flow.decide(
            assigned, buffered, self.state.next_offset, highwater, self.state.paused, self._bound
        )
        if decided.pause:
            consumer.pause(*decided.pause)
            self.state.paused.update(decided.pause)
        if decided.resume:
            consumer.resume(*decided.resume)
            self.state.paused.difference_update(decided.resume)
        self.metrics.paused.set(len(self.state.paused))
        self.metrics.buffered.set(t.buffered)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer, tracker = self.parts.consumer, self.parts.tracker
        assigned: set[object] = set(consumer.assignment())
        if only is not None:
            assigned &= set(only)
        offsets = tracker.to_commit(assigned)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit_failed", error=type(exc).__name__)
            return
        tracker.committed(offsets)
        await self.parts.publisher.committed(offsets)

    async def _observe_lag(self) -> None:
        """Lag = the partition's high watermark minus the commit point (or, where nothing
        is held, the fetch position): what a new owner would still have to process."""
        consumer, tracker = self.parts.consumer, self.parts.tracker
        m = self.metrics
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue  # nothing fetched yet: unknown, not zero
            state = tracker.partitions.get(tp)
            point = state.commit_point() if state is not None else None
            if point is None:
                try:
                    point = await consumer.position(tp)
                except KafkaError:
                    continue
            m.lag.labels(str(tp.partition)).set(max(0, high - point))
        m.buffered.set(tracker.buffered)
        m.buffered_bytes.set(tracker.buffered_bytes)
        waiting, behind_limits = self.parts.scheduler.waiting()
        for reason in WAIT_REASONS:
            m.jobs_waiting.labels(reason).set(waiting.get(reason, 0))
        m.rate_limited_backlog.set(behind_limits)

    # ------------------------------------------------------------------ shutdown

    async def drain_all(self) -> tuple[int, int]:
        """Finish what may finish within the grace, publish it, commit: (finished, left)."""
        p = self.parts
        left_held = await self.rebalance.stop_holding()  # stopped during a rebalance
        assigned = set(p.consumer.assignment())
        if not assigned:
            return 0, left_held
        p.consumer.pause(*assigned)
        finished, _ = await p.scheduler.drain(assigned, self.settings.delivery.drain_grace_s)
        await p.publisher.flush()
        await p.publisher.write_marks()
        await self.commit()
        return finished, p.tracker.buffered + left_held
