"""The Kafka clients the worker loop uses, as small protocols, and the aiokafka ones.

The loop (``consumer.py``) names only what it calls: a group consumer, a producer of
results and a reader of the results topic outside the group. :class:`AiokafkaClients`
makes the real ones from the settings; ``memory_kafka.py`` makes in-memory ones, so the
loop's intake, commits and backpressure are tested without a broker process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.helpers import create_ssl_context

from .config import ConfigError, KafkaSettings, Settings, resolve_secret
from .kafka_check import check_broker

log = structlog.get_logger("cardq.worker")

#: What a revocation may take beyond ``delivery.drain_grace_s``: publishing the drained
#: results and waiting for their acks, writing their marks, committing.
REVOCATION_MARGIN_S = 15.0

ASSIGNORS: dict[str, Any] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
}


class Rebalancing(Protocol):
    """What the group consumer tells the worker when the group moves partitions."""

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class GroupConsumer(Protocol):
    """The requests topic's consumer, a member of the worker's group (aiokafka's calls)."""

    async def start(self) -> None: ...

    def subscribe(self, topics: list[str], listener: Any) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int
    ) -> Any: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    async def commit(self, offsets: Mapping[Any, int]) -> None: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...


class ResultProducer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        """Returns a future that resolves to the record's metadata once acknowledged."""

    async def flush(self) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


class ResultsReader(Protocol):
    """A consumer outside the group, for reading the results topic at a takeover."""

    async def stop(self) -> None: ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int) -> Any: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def unsubscribe(self) -> None: ...


class KafkaClients(Protocol):
    """Makes the loop's clients: aiokafka ones, or in-memory ones in tests."""

    async def check(self) -> None:
        """Fail with a :class:`ConfigError` naming the key when the broker is unusable."""

    def listener(self, handler: Rebalancing) -> Any:
        """What the group consumer's ``subscribe`` takes to report rebalances to ``handler``."""

    def group_consumer(self) -> GroupConsumer: ...

    def producer(self) -> ResultProducer: ...

    async def results_reader(self) -> ResultsReader:
        """Started, ready to read."""

    async def leave_group(self, consumer: GroupConsumer) -> None:
        """Stop the consumer, giving its partitions up at once."""


def kafka_options(k: KafkaSettings) -> dict[str, Any]:
    """Connection and security options passed through to aiokafka."""
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = _ssl_context(k)
    if k.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = k.sasl_mechanism
        opts["sasl_plain_username"] = k.sasl_username
        if k.sasl_password is not None:
            opts["sasl_plain_password"] = resolve_secret(
                k.sasl_password, "kafka.sasl_password"
            ).reveal()
    return opts


def _ssl_context(k: KafkaSettings) -> ssl.SSLContext:
    for key, path in (
        ("kafka.ssl_cafile", k.ssl_cafile),
        ("kafka.ssl_certfile", k.ssl_certfile),
        ("kafka.ssl_keyfile", k.ssl_keyfile),
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(key, f"no such file: {path}")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=k.ssl_cafile, certfile=k.ssl_certfile, keyfile=k.ssl_keyfile
        )
    except ssl.SSLError as exc:
        key = "kafka.ssl_cafile" if k.ssl_certfile is None else "kafka.ssl_certfile"
        raise ConfigError(key, f"not usable for TLS ({exc.reason or exc})") from None
    return context


def rebalance_timeout_ms(settings: Settings) -> int:
    """How long the group waits for every member to finish its revocation and rejoin.

    Apache Kafka hands a member's partitions to the others once this has passed, even
    while that member is still draining them: results it then publishes come after the
    next owner read the marks and the results topic, and that owner answers the same
    records again from the store (a second result). aiokafka sets it to the session
    timeout (3 s in the tests, where a drain of sends on the wire took 4 s), so it is set
    here to cover the whole revocation: the drain grace plus publishing, marking and
    committing (README, "Exactly one result per record").

    It is also how long a rebalance waits for a member that died: the group's join ends
    when the dead member's session expires or this passes, whichever comes first. So it is
    no longer than it must be (35 s by default, under the 45 s session): a killed pod's
    partitions move on sooner when a restart or a scale-out started a rebalance. A static
    member (``group_instance_id``) keeps its session's length: its restart must not be
    cut off by a rebalance that others started meanwhile.
    """
    covering = int((settings.delivery.drain_grace_s + REVOCATION_MARGIN_S) * 1000)
    if settings.kafka.group_instance_id is None:
        return covering
    return max(settings.kafka.session_timeout_ms, covering)


def join_request_timeout_ms(rebalance_ms: int) -> int:
    """The broker holds a JoinGroup answer until the rebalance ends (up to the rebalance
    timeout): the request may not time out first (what the Java client does too)."""
    return max(40_000, rebalance_ms + 5_000)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, handler: Rebalancing) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._handler.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._handler.partitions_assigned(set(assigned))


class AiokafkaClients:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._options = kafka_options(settings.kafka)

    async def check(self) -> None:
        await check_broker(self._settings.kafka, self._options)

    def listener(self, handler: Rebalancing) -> Any:
        return _Listener(handler)

    def group_consumer(self) -> GroupConsumer:
        k = self._settings.kafka
        rebalance_ms = rebalance_timeout_ms(self._settings)
        consumer: GroupConsumer = AIOKafkaConsumer(
            **self._options,
            group_id=k.group_id,
            group_instance_id=k.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            rebalance_timeout_ms=rebalance_ms,
            request_timeout_ms=join_request_timeout_ms(rebalance_ms),
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
            partition_assignment_strategy=(ASSIGNORS[k.partition_assignment_strategy],),
        )
        return consumer

    def producer(self) -> ResultProducer:
        # max_batch_size: aiokafka sends one batch per partition per request and, when that
        # batch is full, parks every further send() in wait_drain() and wakes them all at
        # each drain. With the default 16 KiB (~20 results) that thrash cost a quarter of
        # the worker's CPU at 1,000 results/s (bench/README.md, "Profiles"); 1 MiB holds
        # every result of a busy linger period.
        producer: ResultProducer = AIOKafkaProducer(
            **self._options,
            acks="all",
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        return producer

    async def results_reader(self) -> ResultsReader:
        reader = AIOKafkaConsumer(
            **self._options,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=self._settings.kafka.max_partition_fetch_bytes,
        )
        await reader.start()
        started: ResultsReader = reader
        return started

    async def leave_group(self, consumer: GroupConsumer) -> None:
        """Leave the group, so the partitions move at once; but never wait on a join.

        ``AIOKafkaConsumer.stop`` first lets a JoinGroup in flight finish, and a broker may
        hold that answer for as long as the group's rebalance takes (23 s on Tansu with the
        default timeouts): SIGTERM and Ctrl-C then seemed ignored. A member holding no
        partitions has nothing to commit and nothing to hand over, so when the stop has not
        finished within a moment, its connections are closed: the pending JoinGroup fails
        and the coordinator, already closing, ends instead of retrying.
        """
        real: Any = consumer
        stopping = asyncio.ensure_future(real.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.5)
        if not done and not consumer.assignment():
            log.info("join_abandoned", group=self._settings.kafka.group_id)
            # aiokafka reports the failed JoinGroup as an error: here it is the intent.
            coordinator_log = logging.getLogger("aiokafka.consumer.group_coordinator")
            coordinator_log.addFilter(_drop_all)
            try:
                await real._client.close()
                await stopping
            finally:
                coordinator_log.removeFilter(_drop_all)
        await stopping


def _drop_all(record: logging.LogRecord) -> bool:
    return False
