"""What keeps a rebalance from giving a record two results (README, "Exactly one result
per record"): the rebalance timeout the worker asks for covers a whole revocation (drain
grace plus publishing, marking, committing), so Apache Kafka does not hand a draining
member's partitions on, and the JoinGroup request, which the broker may hold that long,
outlives it; a job read under an assignment given up since publishes nothing."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
from aiokafka import TopicPartition

from cardq import validation
from cardq.backends.transport import MockTransport, Response
from cardq.idempotency.memory import MemoryStore
from cardq.job import Job
from cardq.kafka_clients import (
    REVOCATION_MARGIN_S,
    join_request_timeout_ms,
    rebalance_timeout_ms,
)
from cardq.memory_kafka import MemoryBroker, MemoryClients
from cardq.metrics import Metrics
from cardq.models import Result, Source, Status, utcnow
from cardq.offsets import OffsetTracker
from cardq.parts import build_parts
from cardq.publisher import ResultPublisher
from cardq.rebalance import Assignment, Rebalance
from tests import helpers


def test_the_rebalance_timeout_covers_the_drain_grace_and_the_margin() -> None:
    settings = helpers.settings(
        "127.0.0.1:9092", "http://127.0.0.1:1", delivery={"drain_grace_s": 20}
    )
    assert settings.kafka.session_timeout_ms == 3_000  # aiokafka's default would be this
    assert rebalance_timeout_ms(settings) == int((20 + REVOCATION_MARGIN_S) * 1000)


def test_a_dead_member_holds_a_rebalance_no_longer_than_a_revocation_needs() -> None:
    """The group waits for a dead member up to the rebalance timeout: not the session's
    45 s when a revocation needs 35 (a killed pod's partitions move on sooner)."""
    settings = helpers.settings(
        "127.0.0.1:9092",
        "http://127.0.0.1:1",
        kafka={"session_timeout_ms": 45_000},
        delivery={"drain_grace_s": 20},
    )
    assert rebalance_timeout_ms(settings) == int((20 + REVOCATION_MARGIN_S) * 1000) < 45_000


def test_a_static_members_longer_session_is_kept() -> None:
    settings = helpers.settings(
        "127.0.0.1:9092",
        "http://127.0.0.1:1",
        kafka={"session_timeout_ms": 120_000, "group_instance_id": "cardq-0"},
        delivery={"drain_grace_s": 5},
    )
    assert rebalance_timeout_ms(settings) == 120_000


def test_the_join_request_outlives_the_rebalance() -> None:
    assert join_request_timeout_ms(35_000) == 40_000  # aiokafka's default request timeout
    assert join_request_timeout_ms(120_000) == 125_000


async def test_a_job_read_under_an_assignment_given_up_publishes_nothing() -> None:
    """A job still running after its partition's revocation (its offset forgotten, the
    record someone else's to answer) has its result dropped, not published."""
    settings = helpers.settings("127.0.0.1:9092", "http://127.0.0.1:1")
    broker = MemoryBroker()
    producer = broker.producer()
    publisher = ResultPublisher(
        settings, producer, OffsetTracker(), MemoryStore(), Metrics(), lambda: ()
    )
    raw = orjson.dumps(helpers.mind("late-1", "g1"))
    source = Source("requests", 3, 44)
    job = Job(
        request=validation.decode(raw),
        source=source,
        raw=raw,
        received_at=utcnow(),
        tp=TopicPartition("requests", 3),
        assignment=1,
    )
    publisher.renew([job.tp, job.tp, job.tp])  # 1: read; 2: revoked; 3: assigned again
    now = utcnow()
    result = Result(
        status=Status.DELIVERED, source=source, worker_id="w", received_at=now, finished_at=now
    )
    await publisher.publish_job(job, result)
    await publisher.flush()
    assert publisher.counts["results"] == 0
    assert broker.records(settings.kafka.topics.results) == []


async def test_a_stop_during_an_assignments_marks_load_ends_the_callback_at_once() -> None:
    """aiokafka runs the rebalance callbacks in its coordinator task, and its ``stop()``
    waits for that task: a SIGTERM arriving while an assignment loads its marks (a results
    scan may take 30 s) must end the callback, not wait for the load."""
    settings = helpers.settings("in-memory:9092", "http://127.0.0.1:1")
    broker = MemoryBroker()
    parts = build_parts(
        settings,
        Metrics(),
        MemoryClients(broker),
        OffsetTracker(),
        store=MemoryStore(),
        transport=MockTransport(lambda request: Response(200, {}, b"{}")),
    )
    loads_cancelled: list[bool] = []

    class EndlessScan:
        async def load(self, assigned: set[TopicPartition]) -> dict[TopicPartition, set[int]]:
            try:
                await asyncio.Event().wait()  # a scan that does not end by itself
            except asyncio.CancelledError:
                loads_cancelled.append(True)
                raise
            return {}

        async def aclose(self) -> None:
            return None

    parts = dataclasses.replace(parts, takeover=EndlessScan())  # type: ignore[arg-type]
    state = Assignment()
    joined: list[bool] = []

    async def commit(revoked: set[TopicPartition]) -> None:
        return None

    rebalance = Rebalance(settings, parts, Metrics(), state, commit, lambda: joined.append(True))
    tp = TopicPartition(settings.kafka.topics.requests, 0)
    callback = asyncio.ensure_future(rebalance.partitions_assigned({tp}))
    await helpers.until(lambda: state.loading is not None, "the marks load began", timeout=5)
    assert not callback.done()  # the scan holds it, as a slow one would
    state.stopping.set()  # SIGTERM
    await asyncio.wait_for(callback, 2)
    assert loads_cancelled == [True]
    assert state.loading is None and not joined  # nothing of it is taken in
    await parts.aclose(MemoryClients(broker))
