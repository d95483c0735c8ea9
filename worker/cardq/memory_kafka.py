"""An in-memory Kafka for the worker loop: topics, one consumer group, a producer.

What FastStream's test broker is to its handlers, this is to :class:`consumer.Worker`:
pass ``MemoryBroker().clients()`` as the worker's ``clients`` and its intake, commits and
backpressure run in this process, with no broker, and every step can be looked at
(``records``, ``committed``, ``paused``). Acknowledgements can be held and given in any
order (``hold_acks``, ``ack``), which is how the commit rule (only contiguous acknowledged
offsets are committed) is tested. It keeps the calls the worker makes; it is not a Kafka:
no replication, records kept forever, and no group coordinator: a consumer is assigned
its partitions on its first fetch, and a test moves them with :meth:`MemoryConsumer.revoke`
and :meth:`MemoryConsumer.assign` (an eager rebalance, one step at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition

from .kafka_clients import GroupConsumer, Rebalancing, ResultProducer, ResultsReader

DEFAULT_PARTITIONS = 3


class MemoryBroker:
    """Topics (created on first use with ``partitions`` partitions) and committed offsets."""

    def __init__(self, partitions: int = DEFAULT_PARTITIONS) -> None:
        self.partitions = partitions
        self._logs: dict[str, list[list[ConsumerRecord[bytes, bytes]]]] = {}
        self._commits: dict[TopicPartition, int] = {}
        self._appended = asyncio.Event()
        #: While true, a send's acknowledgement waits for :meth:`ack`.
        self.hold_acks = False
        self._held: list[tuple[asyncio.Future[RecordMetadata], RecordMetadata]] = []

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        if topic not in self._logs:
            self._logs[topic] = [[] for _ in range(partitions or self.partitions)]

    def _log(self, topic: str) -> list[list[ConsumerRecord[bytes, bytes]]]:
        self.create_topic(topic)
        return self._logs[topic]

    def partitions_of(self, topic: str) -> set[int]:
        return set(range(len(self._log(topic))))

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> RecordMetadata:
        """Write a record (keyed records go to a partition by their key, like Kafka's)."""
        log = self._log(topic)
        if partition is None:
            partition = zlib.crc32(key) % len(log) if key is not None else 0
        records = log[partition]
        now_ms = int(time.time() * 1000)
        record = ConsumerRecord(
            topic, partition, len(records), now_ms, 0, key, value, None,
            len(key or b""), len(value or b""), (),
        )  # fmt: skip
        records.append(record)
        self._appended.set()
        self._appended = asyncio.Event()
        tp = TopicPartition(topic, partition)
        return RecordMetadata(topic, partition, tp, record.offset, now_ms, 0, 0)

    def records(self, topic: str, partition: int | None = None) -> list[Any]:
        log = self._log(topic)
        chosen = log if partition is None else [log[partition]]
        return [record for records in chosen for record in records]

    def end(self, tp: TopicPartition) -> int:
        return len(self._log(tp.topic)[tp.partition])

    def committed(self, tp: TopicPartition) -> int | None:
        return self._commits.get(tp)

    async def appended(self, timeout_s: float) -> None:
        """Until the next record is written anywhere, or ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._appended.wait(), timeout_s)

    @property
    def unacked(self) -> int:
        return len(self._held)

    def ack(self, which: Callable[[RecordMetadata], bool] = lambda meta: True) -> int:
        """Acknowledge the held sends ``which`` selects; returns how many."""
        kept, done = [], 0
        for fut, meta in self._held:
            if which(meta):
                if not fut.done():
                    fut.set_result(meta)
                done += 1
            else:
                kept.append((fut, meta))
        self._held = kept
        return done

    def clients(self) -> MemoryClients:
        return MemoryClients(self)

    def producer(self) -> MemoryProducer:
        return MemoryProducer(self)

    def _hold(self, meta: RecordMetadata) -> asyncio.Future[RecordMetadata]:
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        if self.hold_acks:
            self._held.append((fut, meta))
        else:
            fut.set_result(meta)
        return fut


class MemoryConsumer:
    """A group member: on its first fetch it is assigned every partition of its topics (or
    the ``partitions`` numbers given), starts at the committed offset (else the beginning),
    pauses like aiokafka."""

    def __init__(self, broker: MemoryBroker, partitions: set[int] | None = None) -> None:
        self._broker = broker
        self._only = partitions
        self._joined = False
        self._topics: list[str] = []
        self._listener: Rebalancing | None = None
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.stopped = False
        #: How many times ``getmany`` was called, and every commit made (for tests).
        self.fetches = 0
        self.commits: list[dict[TopicPartition, int]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self._topics, self._listener = list(topics), listener

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    async def _join(self) -> None:
        await self.assign(
            {
                TopicPartition(topic, p)
                for topic in self._topics
                for p in self._broker.partitions_of(topic)
                if self._only is None or p in self._only
            }
        )

    async def revoke(self) -> None:
        """A rebalance begins: every partition is revoked (aiokafka's eager protocol)."""
        revoked, self._assigned = set(self._assigned), set()
        self.paused.clear()
        if self._listener is not None:
            await self._listener.partitions_revoked(revoked)

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """The group's assignment: each partition starts at its committed offset."""
        self._joined = True
        self._assigned = set(assigned)
        for tp in assigned:
            self._positions[tp] = self._broker.committed(tp) or 0
        if self._listener is not None:
            await self._listener.partitions_assigned(set(assigned))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[tp] = offset

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        self.fetches += 1
        if not self._joined and self._topics:
            await self._join()
        batch = self._take(max_records)
        if not batch and timeout_ms:
            await self._broker.appended(timeout_ms / 1000)
            batch = self._take(max_records)
        return batch

    def _take(self, max_records: int | None) -> dict[TopicPartition, list[Any]]:
        batch: dict[TopicPartition, list[Any]] = {}
        left = max_records if max_records is not None else 1 << 30
        for tp in sorted(self._assigned - self.paused):
            if left <= 0:
                break
            log = self._broker.records(tp.topic, tp.partition)
            start = self._positions[tp]
            taken = log[start : start + left]
            if taken:
                batch[tp] = taken
                self._positions[tp] = start + len(taken)
                left -= len(taken)
        return batch

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def commit(self, offsets: Mapping[Any, int]) -> None:
        self.commits.append(dict(offsets))
        self._broker._commits.update(offsets)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._broker.end(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._broker.partitions_of(topic)


class MemoryProducer:
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None
    ) -> asyncio.Future[RecordMetadata]:
        return self._broker._hold(self._broker.append(topic, value, key))

    async def flush(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return self._broker.partitions_of(topic)


class MemoryReader:
    """A consumer outside the group, reading partitions it was assigned."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._positions: dict[TopicPartition, int] = {}

    async def stop(self) -> None:
        return None

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._broker.end(tp) for tp in partitions}

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._positions = dict.fromkeys(partitions, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[tp] = offset

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0
    ) -> dict[TopicPartition, list[Any]]:
        batch: dict[TopicPartition, list[Any]] = {}
        for tp in partitions or tuple(self._positions):
            taken = self._broker.records(tp.topic, tp.partition)[self._positions[tp] :]
            if taken:
                batch[tp] = taken
                self._positions[tp] += len(taken)
        return batch

    async def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def unsubscribe(self) -> None:
        self._positions = {}


class MemoryClients:
    """``KafkaClients`` over a :class:`MemoryBroker` (the worker's ``clients=``)."""

    def __init__(self, broker: MemoryBroker, partitions: set[int] | None = None) -> None:
        self.broker = broker
        self._partitions = partitions
        self.consumers: list[MemoryConsumer] = []

    async def check(self) -> None:
        return None

    def listener(self, handler: Rebalancing) -> Any:
        return handler

    def group_consumer(self) -> GroupConsumer:
        consumer = MemoryConsumer(self.broker, self._partitions)
        self.consumers.append(consumer)
        return consumer

    def producer(self) -> ResultProducer:
        return MemoryProducer(self.broker)

    async def results_reader(self) -> ResultsReader:
        return MemoryReader(self.broker)

    async def leave_group(self, consumer: GroupConsumer) -> None:
        if isinstance(consumer, MemoryConsumer):
            await consumer.stop()
