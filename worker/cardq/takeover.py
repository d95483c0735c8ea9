"""What a partition's new owner learns first: which of its records already have a result.

The marks in the store say most of it; an owner that died may also have published
results it had not marked yet, so the results topic is read from the positions the
store keeps to its end. A re-read record found here is finished without a second
result (README, "Exactly one result per record").
"""

from __future__ import annotations

import asyncio

import orjson
import structlog
from aiokafka import TopicPartition

from .config import Settings
from .idempotency import IdempotencyStore, Published
from .kafka_clients import KafkaClients, ResultProducer, ResultsReader
from .metrics import Metrics

log = structlog.get_logger("cardq.worker")

#: How long a new assignment may spend reading the results topic for unmarked results.
RESULTS_SCAN_TIMEOUT_S = 30.0


class Takeover:
    def __init__(
        self,
        settings: Settings,
        clients: KafkaClients,
        producer: ResultProducer,
        store: IdempotencyStore,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._producer = producer
        self._store = store
        self._metrics = metrics
        self._reader: ResultsReader | None = None

    async def load(self, assigned: set[TopicPartition]) -> dict[TopicPartition, set[int]]:
        """Learn which records of the assigned partitions already have a result: the marks
        in the store, plus the results an owner that died published but had not marked
        (read from the results topic, from the positions the store keeps to its end).
        Then leave the results topic's current end as the starting point for our own
        successor. Bounded in time; on an error the records stay unknown, and a re-read
        one gets its result again (README, "Exactly one result per record")."""
        store = self._store
        idem = self._settings.idempotency
        known: dict[TopicPartition, set[int]] = {}
        tps = sorted(assigned, key=lambda tp: (tp.topic, tp.partition))
        if not tps:
            return known
        try:
            async with asyncio.timeout(idem.redis_timeout_s):
                states = await asyncio.gather(
                    *(store.published((tp.topic, tp.partition)) for tp in tps)
                )
        except Exception as exc:
            log.warning("published_marks_unavailable", error=type(exc).__name__)
            return known
        for tp, state in zip(tps, states, strict=True):
            if state.offsets:
                known[tp] = set(state.offsets)
        try:
            async with asyncio.timeout(RESULTS_SCAN_TIMEOUT_S):
                found, ends = await self._scan_results(tps, states)
        except Exception as exc:
            log.warning("results_scan_failed", error=type(exc).__name__)
            return known
        for tp, offsets in found.items():
            known.setdefault(tp, set()).update(offsets)
            self._metrics.unmarked_results_found.inc(len(offsets))
        try:
            await store.mark_published(
                {(tp.topic, tp.partition): found.get(tp, set()) for tp in tps},
                idem.ttl_s,
                {(tp.topic, tp.partition): ends for tp in tps},
            )
        except Exception as exc:  # the next owner scans from the older positions
            log.warning("published_positions_failed", error=type(exc).__name__)
        return known

    async def _results_reader(self) -> ResultsReader:
        """A consumer outside the group for reading the results topic, started on first
        use and kept: a new one costs a bootstrap and a metadata round at every
        assignment, which a takeover would wait for."""
        if self._reader is None:
            self._reader = await self._clients.results_reader()
        return self._reader

    async def _scan_results(
        self, tps: list[TopicPartition], states: list[Published]
    ) -> tuple[dict[TopicPartition, set[int]], dict[int, int]]:
        """Read the results topic from the earliest kept position to its end; return the
        offsets of the assigned partitions found there, and the end offsets."""
        topic = self._settings.kafka.topics.results
        partitions = sorted(await self._producer.partitions_for(topic))
        # The reader asks, not the group's consumer: this runs inside its rebalance.
        scanner = await self._results_reader()
        end_offsets = await scanner.end_offsets([TopicPartition(topic, p) for p in partitions])
        ends = {tp.partition: offset for tp, offset in end_offsets.items()}
        start: dict[int, int] = {}
        for state in states:
            for p, offset in state.positions.items():
                if offset < ends.get(p, 0):
                    start[p] = min(start.get(p, offset), offset)
        found: dict[TopicPartition, set[int]] = {}
        if not start:
            return found, ends
        wanted = {(tp.topic, tp.partition): tp for tp in tps}
        try:
            left = {TopicPartition(topic, p) for p in start}
            scanner.assign(sorted(left, key=lambda tp: tp.partition))
            for tp in left:
                scanner.seek(tp, start[tp.partition])
            scanned = 0
            while left:
                batch = await scanner.getmany(*left, timeout_ms=200)
                for records in batch.values():
                    scanned += len(records)
                    for record in records:
                        source = _result_source(record.value)
                        if source is not None and source[:2] in wanted:
                            found.setdefault(wanted[source[:2]], set()).add(source[2])
                for tp in list(left):
                    if await scanner.position(tp) >= ends[tp.partition]:
                        left.discard(tp)
        finally:
            scanner.unsubscribe()  # (drops the manual assignment too)
        log.info(
            "results_scanned",
            results=scanned,
            found=sum(len(v) for v in found.values()),
            partitions=sorted(tp.partition for tp in tps),
        )
        return found, ends

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.stop()


def _result_source(value: bytes | None) -> tuple[str, int, int] | None:
    """The requests-topic coordinates a published result names, if it names them."""
    try:
        source = orjson.loads(value or b"null")["source"]
        return str(source["topic"]), int(source["partition"]), int(source["offset"])
    except Exception:
        return None
