"""What keeps a rebalance from giving a record two results (README, "Exactly one result
per record"): the rebalance timeout the worker asks for covers a whole revocation (drain
grace plus publishing, marking, committing), so Apache Kafka does not hand a draining
member's partitions on, and the JoinGroup request, which the broker may hold that long,
outlives it; a job read under an assignment given up since publishes nothing."""

from __future__ import annotations

import orjson
from aiokafka import TopicPartition

from cardq import validation
from cardq.idempotency.memory import MemoryStore
from cardq.job import Job
from cardq.kafka_clients import (
    REVOCATION_MARGIN_S,
    join_request_timeout_ms,
    rebalance_timeout_ms,
)
from cardq.memory_kafka import MemoryBroker
from cardq.metrics import Metrics
from cardq.models import Result, Source, Status, utcnow
from cardq.offsets import OffsetTracker
from cardq.publisher import ResultPublisher
from tests import helpers


def test_the_rebalance_timeout_covers_the_drain_grace_and_the_margin() -> None:
    settings = helpers.settings(
        "127.0.0.1:9092", "http://127.0.0.1:1", delivery={"drain_grace_s": 20}
    )
    assert settings.kafka.session_timeout_ms == 3_000  # aiokafka's default would be this
    assert rebalance_timeout_ms(settings) == int((20 + REVOCATION_MARGIN_S) * 1000)


def test_a_longer_session_timeout_is_kept() -> None:
    settings = helpers.settings(
        "127.0.0.1:9092",
        "http://127.0.0.1:1",
        kafka={"session_timeout_ms": 120_000},
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
    publisher.assignment = 3  # revoked (2), assigned again (3)
    now = utcnow()
    result = Result(
        status=Status.DELIVERED, source=source, worker_id="w", received_at=now, finished_at=now
    )
    await publisher.publish_job(job, result)
    await publisher.flush()
    assert publisher.counts["results"] == 0
    assert broker.records(settings.kafka.topics.results) == []
