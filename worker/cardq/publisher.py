"""Results on their way to the broker: publish, acknowledge, mark, publish again.

A record's offset finishes only when its result (and its dead letter, if any) is
acknowledged; a result that is not acknowledged is published again, so none is lost.

One result per record: each acknowledged result's offset is marked in the store as soon
as the ack arrives (a background task writes whatever has gathered, one call at a time),
together with where on the results topic this partition's later, still unmarked results
would be. A partition's new owner loads the marks when it is assigned (``takeover.py``)
and finishes the records that already have a result without a second one (README,
"Exactly one result per record").

Whose result it is to publish: each partition has a generation, bumped whenever this
worker gives the partition up or takes it anew; a job carries the generation it was read
under, and a result of an older one is dropped (the partition's owner answers the
record). Partitions held through a rebalance (``rebalance.py``) keep their generation
while their results wait in :attr:`ResultPublisher.held`: nobody owns them until the
group's next assignment says whether they stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from aiokafka import TopicPartition

from .config import Settings
from .idempotency import IdempotencyStore, Partition
from .job import Job
from .kafka_clients import ResultProducer
from .metrics import Metrics
from .models import Result, Status, encode_dead_letter
from .offsets import OffsetTracker

log = structlog.get_logger("cardq.worker")


class ResultPublisher:
    def __init__(
        self,
        settings: Settings,
        producer: ResultProducer,
        tracker: OffsetTracker,
        store: IdempotencyStore,
        metrics: Metrics,
        owned: Callable[[], Iterable[TopicPartition]],
    ) -> None:
        self._topics = settings.kafka.topics
        self._ttl_s = settings.idempotency.ttl_s
        self._producer = producer
        self._tracker = tracker
        self._store = store
        self._metrics = metrics
        self._owned = owned
        #: Per partition, bumped when this worker takes it anew or gives it up: a job
        #: read under an older generation publishes nothing (see ``publish_job``).
        self.generations: dict[Any, int] = {}
        #: Partitions held through a rebalance, with the results that wait there for the
        #: next assignment (published if the partition stays, dropped if it moves).
        self.held: dict[Any, list[tuple[Job, Result | None]]] = {}
        #: Once set, a result that failed to publish is not tried again (shutting down).
        self.closed = False
        self.counts = {"consumed": 0, "results": 0}
        #: Called with every result once it is acknowledged (``Worker.on_result``).
        self.hooks: list[Callable[[Result], None]] = []
        self._publishing: set[asyncio.Future[None]] = set()
        self._pending_acks: set[asyncio.Future[Any]] = set()
        #: Offsets whose results were acknowledged, not yet marked in the store; and per
        #: results partition, the offset just after the last such result. Acks of one
        #: partition come in offset order and marks are written in ack order, so every
        #: result of ours before that offset is marked: it is where a successor of any
        #: of our partitions must start reading for unmarked ones.
        self._to_mark: dict[Partition, list[int]] = {}
        self._positions: dict[int, int] = {}
        self._marks_waiting = asyncio.Event()
        self._marks_lock = asyncio.Lock()

    # ------------------------------------------------------------------ publishing

    def generation(self, tp: Any) -> int:
        return self.generations.get(tp, 0)

    def renew(self, tps: Iterable[Any]) -> None:
        """Taken anew or given up: what still runs of an earlier read publishes nothing."""
        for tp in tps:
            self.generations[tp] = self.generations.get(tp, 0) + 1

    def hold(self, tps: Iterable[Any]) -> None:
        """Results of these partitions wait until :meth:`release` or :meth:`give_up`."""
        for tp in tps:
            self.held.setdefault(tp, [])

    async def release(self, tps: Iterable[Any]) -> int:
        """The partitions stayed with this worker: publish what waited. Returns how many."""
        released = 0
        for tp in tps:
            for job, result in self.held.pop(tp, ()):
                released += 1
                await self.publish_job(job, result)
        return released

    def give_up(self, tps: Iterable[Any]) -> int:
        """The partitions moved: drop what waited, and what still runs publishes nothing
        (the new owner answers those records, from the store where they were sent)."""
        tps = list(tps)
        dropped = sum(len(self.held.pop(tp, ())) for tp in tps)
        self.renew(tps)
        return dropped

    async def publish_job(self, job: Job, result: Result | None) -> None:
        if job.assignment != self.generation(job.tp):
            # Read under an assignment given up since (its revocation's drain is over):
            # the offset was forgotten, and the partition's owner now, maybe this worker
            # again, reads the record anew and answers it (from the store if this job
            # delivered it). Publishing here would give the record a second result.
            log.info(
                "stale_result_dropped",
                partition=job.source.partition,
                offset=job.source.offset,
                status=result.status.value if result is not None else None,
            )
            return
        if self.held:  # only during a rebalance: one check per result otherwise
            waiting = self.held.get(job.tp)
            if waiting is not None:
                waiting.append((job, result))
                return
        if result is None:  # already reported by an earlier read of this record
            self._tracker.finish(job.tp, job.source.offset, job.size)
            return
        await self.publish(job.tp, job.source.offset, job.raw, result)

    def publish_soon(self, tp: Any, offset: int, raw: bytes, result: Result) -> None:
        """Publish from synchronous code (a rejected record); ``flush`` waits for it."""
        self._track(asyncio.ensure_future(self.publish(tp, offset, raw, result)))

    async def publish(self, tp: Any, offset: int, raw: bytes, result: Result) -> None:
        """Hand the result (and dead letter) to the producer; the offset finishes on ack."""
        producer = self._producer
        topics = self._topics
        key = (result.request_id or f"{tp.topic}/{tp.partition}/{offset}").encode()
        acked: asyncio.Future[Any] = await producer.send(topics.results, result.encode(), key=key)
        if result.needs_dead_letter:
            letter = encode_dead_letter(raw, result)
            letter_acked = await producer.send(topics.dead_letters, letter, key=key)
            acked = asyncio.gather(acked, letter_acked)
        # (a lone result's future is used as it is: gather() per result cost 3% of the CPU)
        self._pending_acks.add(acked)
        acked.add_done_callback(lambda fut: self._acked(fut, tp, offset, raw, result))

    def _track(self, task: asyncio.Future[None]) -> None:
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def _acked(
        self, fut: asyncio.Future[Any], tp: Any, offset: int, raw: bytes, result: Result
    ) -> None:
        self._pending_acks.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            # Not acknowledged: keep the offset open and publish again (never lose it).
            log.warning(
                "result_publish_failed",
                request_id=result.request_id,
                partition=tp.partition,
                offset=offset,
            )
            if not self.closed:
                self._track(asyncio.ensure_future(self._republish(tp, offset, raw, result)))
            return
        self._tracker.finish(tp, offset, len(raw))
        where = (tp.topic, tp.partition)
        self._to_mark.setdefault(where, []).append(offset)
        meta = fut.result()
        if isinstance(meta, list):  # the result and its dead letter: the result is first
            meta = meta[0]
        positions = self._positions
        positions[meta.partition] = max(positions.get(meta.partition, 0), meta.offset + 1)
        self._marks_waiting.set()
        self.counts["results"] += 1
        self._count(tp, offset, result)
        for hook in self.hooks:
            hook(result)

    def _count(self, tp: Any, offset: int, result: Result) -> None:
        m = self._metrics
        backend, bot = result.backend or "unknown", result.bot or "unknown"
        m.child(m.results, backend, bot, result.status.value).inc()
        if result.status is Status.SUPERSEDED:
            m.child(m.superseded, backend, bot).inc()
        if result.needs_dead_letter:
            reason = result.error.kind.value if result.error else "unknown"
            m.dead_letters.labels(backend, bot, reason).inc()
        if result.status in (Status.DELIVERED, Status.DUPLICATE):
            born = result.source.timestamp_ms
            if born:
                m.child(m.end_to_end, backend).observe(max(0.0, time.time() - born / 1000))
        if result.status is not Status.DELIVERED:
            log.info(
                "request_finished",
                status=result.status.value,
                request_id=result.request_id,
                destination=result.destination,
                partition=tp.partition,
                offset=offset,
                error=result.error.as_dict() if result.error else None,
            )

    async def _republish(self, tp: Any, offset: int, raw: bytes, result: Result) -> None:
        await asyncio.sleep(1.0)
        await self.publish(tp, offset, raw, result)

    async def flush(self) -> None:
        """Until every result handed over so far is acknowledged (or failed)."""
        if self._publishing:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)
        await self._producer.flush()
        if self._pending_acks:  # let every ack callback run (it finishes the offset)
            await asyncio.gather(*list(self._pending_acks), return_exceptions=True)

    # ------------------------------------------------------------------ published marks

    async def mark_loop(self) -> None:
        """Mark acknowledged results in the store as they come: the window in which a
        crash leaves a published result unmarked is one store round trip, not a commit
        interval. A failed write keeps its marks and is tried again after a pause that
        doubles up to 5 s (a store outage costs one warning per pause, not a flood)."""
        pause = 0.5
        while True:
            await self._marks_waiting.wait()
            self._marks_waiting.clear()
            if await self.write_marks():
                pause = 0.5
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                self._marks_waiting.set()

    async def write_marks(self) -> bool:
        async with self._marks_lock:
            if not self._to_mark and not self._positions:
                return True
            batch, self._to_mark = self._to_mark, {}
            positions, self._positions = self._positions, {}
            owned = self._owned()
            try:
                await self._store.mark_published(
                    batch, self._ttl_s, {(tp.topic, tp.partition): positions for tp in owned}
                )
            except Exception as exc:
                log.warning(
                    "published_marks_failed",
                    error=type(exc).__name__,
                    records=sum(map(len, batch.values())),
                )
                for partition, offsets in batch.items():
                    self._to_mark.setdefault(partition, []).extend(offsets)
                for results_partition, offset in positions.items():
                    merged = max(self._positions.get(results_partition, 0), offset)
                    self._positions[results_partition] = merged
                return False
            return True

    async def committed(self, offsets: Mapping[Any, int]) -> None:
        """Marks below a committed offset are never needed again (never re-read)."""
        below: dict[Partition, int] = {}
        for tp, offset in offsets.items():
            below[(tp.topic, tp.partition)] = offset
            pending = self._to_mark.get((tp.topic, tp.partition))
            if pending:
                pending[:] = [o for o in pending if o >= offset]
        try:
            await self._store.forget_published(below)
        except Exception as exc:  # never stops the worker: the next commit trims them
            log.warning("published_marks_trim_failed", error=type(exc).__name__)
