"""A rebalance does not stop a pool's sends (``rebalance.py``, "Holding through a
rebalance"): with the Redis store, revoked partitions go on sending until the next
assignment; one that stays publishes what waited and reads on, one that moved drops what
waited and its new owner answers every record, sending none twice.

The loop runs over the in-memory Kafka (its consumer is revoked and assigned by the test,
one step at a time), the store is a real Redis, the platform a mock MindOffice whose
sends the test can hold on the wire.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiokafka.structs import TopicPartition

from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.config import Settings
from cardq.consumer import Worker
from cardq.memory_kafka import MemoryBroker, MemoryClients
from tests import helpers
from tests.test_worker_inmemory import results, until, worker_on

RID = re.compile(rb"hold-\d+")
RECORDS = 40


class Platform:
    """A MindOffice that counts each request it accepts and can hold sends on the wire."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.on_the_wire = 0
        self.open = asyncio.Event()
        self.open.set()

    async def answer(self, request: HttpRequest) -> Response:
        self.on_the_wire += 1
        try:
            await self.open.wait()
        finally:
            self.on_the_wire -= 1
        found = RID.search(request.body)
        assert found is not None
        rid = found.group().decode()
        self.accepted[rid] += 1
        body = {"code": 200, "data": {"message_id": f"m-{rid}"}}
        return Response(200, {}, orjson.dumps(body))


def pool_settings(redis_url: str, prefix: str) -> Settings:
    return helpers.settings(
        "in-memory:9092",
        "http://platform",
        idempotency={
            "store": "redis",
            "redis_url": redis_url,
            "key_prefix": f"{prefix}idem:",
            "budget_key_prefix": f"{prefix}budget:",
        },
    )


def produce(broker: MemoryBroker, s: Settings) -> None:
    for i in range(RECORDS):
        value = orjson.dumps(helpers.mind(f"hold-{i:03d}", f"g{i % 10}", text=f"hold-{i:03d}"))
        broker.append(s.kafka.topics.requests, value, b"key", partition=i % 2)


def per_record(broker: MemoryBroker, s: Settings) -> Counter[tuple[int, int]]:
    return Counter((r["source"]["partition"], r["source"]["offset"]) for r in results(broker, s))


async def revoke_while_sending(
    broker: MemoryBroker, s: Settings, platform: Platform, clients: MemoryClients
) -> int:
    """Some results out, sends held on the wire, then the revocation: it holds the
    partitions (it returns without waiting for those sends) and, the sends let go, the
    lanes go on sending while no result is published. Returns the results published."""
    await until(lambda: len(results(broker, s)) >= 8, "a first few results")
    platform.open.clear()
    await until(lambda: platform.on_the_wire >= 2, "sends held on the wire")
    consumer = clients.consumers[0]
    await asyncio.wait_for(consumer.revoke(), 5)  # a drain would wait for the held sends
    published = len(results(broker, s))
    accepted = sum(platform.accepted.values())
    platform.open.set()
    await until(lambda: sum(platform.accepted.values()) >= accepted + 6, "sends go on")
    assert len(results(broker, s)) == published, "a held partition published a result"
    return published


@pytest.fixture
def settings_for(redis_url: str, redis_prefix: str) -> Callable[[], Settings]:
    return lambda: pool_settings(redis_url, redis_prefix)


async def test_a_partition_that_stays_sends_through_the_rebalance_and_reads_on(
    settings_for: Callable[[], Settings],
) -> None:
    s, broker, platform = settings_for(), MemoryBroker(partitions=2), Platform()
    produce(broker, s)
    async with worker_on(broker, s, MockTransport(platform.answer)) as (worker, clients):
        await revoke_while_sending(broker, s, platform, clients)
        both = {TopicPartition(s.kafka.topics.requests, p) for p in (0, 1)}
        assert worker.assignment.held == both
        await clients.consumers[0].assign(both)
        await until(lambda: len(per_record(broker, s)) == RECORDS, "every record answered")
        await until(
            lambda: all(broker.committed(tp) == RECORDS // 2 for tp in both), "all committed"
        )
    answered = per_record(broker, s)
    assert set(answered.values()) == {1}, "a record with two results"
    assert platform.accepted == Counter({f"hold-{i:03d}": 1 for i in range(RECORDS)})
    assert {r["status"] for r in results(broker, s)} == {"delivered"}


async def test_a_partition_that_moved_is_answered_by_its_new_owner_without_a_second_send(
    settings_for: Callable[[], Settings],
) -> None:
    s, broker, platform = settings_for(), MemoryBroker(partitions=2), Platform()
    produce(broker, s)
    topic = s.kafka.topics.requests
    stays, moves = TopicPartition(topic, 0), TopicPartition(topic, 1)
    async with worker_on(broker, s, MockTransport(platform.answer)) as (worker, clients):
        await revoke_while_sending(broker, s, platform, clients)
        await clients.consumers[0].assign({stays})
        assert worker.assignment.held == set()
        # the new owner of partition 1: a second worker of the pool
        successor = MemoryClients(broker, partitions={1})
        await run_alongside(
            successor,
            s,
            MockTransport(platform.answer),
            until(lambda: len(per_record(broker, s)) == RECORDS, "every record answered"),
        )
    answered = per_record(broker, s)
    assert set(answered.values()) == {1}, "a record with two results"
    assert platform.accepted == Counter({f"hold-{i:03d}": 1 for i in range(RECORDS)})
    assert {r["status"] for r in results(broker, s)} == {"delivered"}
    assert broker.committed(moves) == RECORDS // 2


async def run_alongside(
    clients: MemoryClients, s: Settings, transport: MockTransport, condition: Awaitable[Any]
) -> None:
    """Run a second worker until ``condition`` holds."""
    worker = Worker(s, clients=clients, transport=transport, serve_health=False)
    task = asyncio.create_task(worker.run())
    try:
        await condition
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_without_a_shared_store_a_revocation_drains_as_before() -> None:
    """The memory store cannot tell another member what was sent: nothing is held."""
    s = helpers.settings("in-memory:9092", "http://platform")
    broker, platform = MemoryBroker(partitions=2), Platform()
    produce(broker, s)
    async with worker_on(broker, s, MockTransport(platform.answer)) as (worker, clients):
        await until(lambda: len(results(broker, s)) >= 8, "a first few results")
        await clients.consumers[0].revoke()
        assert worker.assignment.held == set()
        assert worker.parts is not None and worker.parts.publisher.held == {}
