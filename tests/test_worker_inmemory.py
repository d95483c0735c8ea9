"""The worker loop over the in-memory Kafka (``cardq.memory_kafka``): intake, commits,
backpressure and a poison record, with no broker process. The platform is a mock
transport answering like a Feishu webhook; everything else is the worker's own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.config import Settings
from cardq.consumer import State, Worker
from cardq.memory_kafka import MemoryBroker, MemoryClients
from tests import helpers

OK = orjson.dumps({"code": 0, "msg": "success", "data": {}})


def platform(handler: Callable[[bytes], Response] | None = None) -> MockTransport:
    def answer(request: HttpRequest) -> Response:
        return handler(request.body) if handler is not None else Response(200, {}, OK)

    return MockTransport(answer)


def settings(**delivery: Any) -> Settings:
    return helpers.settings("in-memory:9092", "http://platform", delivery=delivery)


@contextlib.asynccontextmanager
async def worker_on(
    broker: MemoryBroker, s: Settings, transport: MockTransport
) -> AsyncIterator[tuple[Worker, MemoryClients]]:
    clients = broker.clients()
    worker = Worker(s, clients=clients, transport=transport, serve_health=False)
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.joined or task.done(), "the worker joined")
        if task.done():
            task.result()
        yield worker, clients
    finally:
        broker.hold_acks = False  # a failed test's held acks must not hold up the drain
        broker.ack()
        worker.stop()
        await asyncio.wait_for(task, 10)


async def until(condition: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.01)


def results(broker: MemoryBroker, s: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in broker.records(s.kafka.topics.results)]


def put(broker: MemoryBroker, s: Settings, value: bytes | None, partition: int = 0) -> None:
    broker.append(s.kafka.topics.requests, value, b"key", partition=partition)


def hook(rid: str) -> bytes:
    return orjson.dumps(helpers.hook(rid))


async def test_intake_delivers_valid_records_and_rejects_invalid_ones() -> None:
    broker, s = MemoryBroker(), settings()
    put(broker, s, hook("ok-1"))
    put(broker, s, orjson.dumps({**helpers.hook("bad-1"), "bot": "nobody"}))
    put(broker, s, hook("ok-2"))
    async with worker_on(broker, s, platform()) as (worker, _):
        await until(lambda: len(results(broker, s)) == 3, "three results")
        tp = TopicPartition(s.kafka.topics.requests, 0)
        await until(lambda: broker.committed(tp) == 3, "the commit reached the end")
    by_id = {r["request_id"]: r for r in results(broker, s)}
    assert by_id["ok-1"]["status"] == by_id["ok-2"]["status"] == "delivered"
    assert by_id["bad-1"]["status"] == "rejected"
    assert by_id["bad-1"]["error"]["field"] == "bot"
    letters = broker.records(s.kafka.topics.dead_letters)
    assert len(letters) == 1 and letters[0].key == b"bad-1"
    assert worker.state is State.STOPPED and worker.counts == {"consumed": 3, "results": 3}


async def test_only_contiguous_acknowledged_offsets_are_committed() -> None:
    """Results acknowledged out of order: the commit stays below the first unacknowledged
    record until its ack arrives, then jumps past every acknowledged one."""
    broker, s = MemoryBroker(), settings()
    broker.hold_acks = True
    for n in range(5):
        put(broker, s, hook(f"r{n}"))
    tp = TopicPartition(s.kafka.topics.requests, 0)
    async with worker_on(broker, s, platform()) as (_, clients):
        consumer = clients.consumers[0]
        await until(lambda: broker.unacked == 5, "five results sent, none acknowledged")

        def source_offset(meta: Any) -> int:
            record = broker.records(meta.topic, meta.partition)[meta.offset]
            return int(orjson.loads(record.value)["source"]["offset"])

        assert broker.ack(lambda meta: source_offset(meta) != 0) == 4
        # Let the loop go round long enough for several commit intervals (0.2 s each; an
        # idle fetch waits 0.2 s): nothing of partition 0 may be committed meanwhile.
        fetched = consumer.fetches
        await until(lambda: consumer.fetches >= fetched + 5, "five more fetches")
        assert broker.committed(tp) in (None, 0)
        assert all(commit[tp] == 0 for commit in consumer.commits)
        assert broker.ack() == 1
        await until(lambda: broker.committed(tp) == 5, "committed past every acked offset")
    assert [commit[tp] for commit in consumer.commits] in ([5], [0, 5])


async def test_a_full_buffer_pauses_partitions_and_resumes_them_when_it_drains() -> None:
    """Backpressure: results held unacknowledged keep records buffered; at the bound the
    partitions are paused, and acknowledging resumes them until everything is answered."""
    broker, s = MemoryBroker(), settings(max_buffered_records=6)
    broker.hold_acks = True
    for n in range(30):
        put(broker, s, hook(f"r{n}"), partition=n % 3)
    async with worker_on(broker, s, platform()) as (_, clients):
        consumer = clients.consumers[0]
        await until(lambda: len(consumer.paused) == 3, "every partition paused")
        assert broker.unacked <= 6  # a fetch asks for no more than the buffer has room for

        def answered_all() -> bool:
            broker.ack()
            return len(results(broker, s)) == 30 and not broker.unacked

        await until(answered_all, "every record answered")
        await until(lambda: not consumer.paused, "resumed once drained")
    assert sorted(r["request_id"] for r in results(broker, s)) == sorted(f"r{n}" for n in range(30))


async def test_a_poison_record_is_dead_lettered_and_the_partition_goes_on() -> None:
    broker, s = MemoryBroker(), settings()
    put(broker, s, b"\xff\xfe not json")
    put(broker, s, None)  # a tombstone
    put(broker, s, hook("after"))
    tp = TopicPartition(s.kafka.topics.requests, 0)
    async with worker_on(broker, s, platform()):
        await until(lambda: broker.committed(tp) == 3, "committed past the poison")
    by_offset = {r["source"]["offset"]: r for r in results(broker, s)}
    assert [by_offset[n]["status"] for n in range(3)] == ["rejected", "rejected", "delivered"]
    assert by_offset[0]["error"]["code"] == by_offset[1]["error"]["code"] == "invalid_json"
    assert len(broker.records(s.kafka.topics.dead_letters)) == 2


async def test_a_backend_bug_fails_the_request_as_internal_once_without_retry() -> None:
    """A backend raising something that is no delivery error (a bug) ends the request
    ``failed``/``internal`` with a dead letter at the first attempt; the lane goes on."""
    calls: list[bytes] = []

    def answer(body: bytes) -> Response:
        calls.append(body)
        if b"boom" in body:
            raise KeyError("missing")
        return Response(200, {}, OK)

    broker, s = MemoryBroker(), settings()
    put(broker, s, orjson.dumps(helpers.hook("bug-1", text="boom")))
    put(broker, s, hook("fine-1"))
    with helpers.json_log("error") as log:
        async with worker_on(broker, s, platform(answer)):
            await until(lambda: len(results(broker, s)) == 2, "two results")
    by_id = {r["request_id"]: r for r in results(broker, s)}
    failed = by_id["bug-1"]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["kind"] == "internal" and failed["error"]["retryable"] is False
    assert by_id["fine-1"]["status"] == "delivered"
    assert sum(b"boom" in body for body in calls) == 1
    assert [letter.key for letter in broker.records(s.kafka.topics.dead_letters)] == [b"bug-1"]
    tracebacks = [line for line in log.getvalue().splitlines() if "Traceback" in line]
    assert len(tracebacks) == 1, log.getvalue()
