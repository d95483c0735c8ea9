"""The incident-storm counters: digest cards and the requests merged into them, and
requests a newer state replaced (``cardq_digest_cards``, ``cardq_digest_merged``,
``cardq_superseded``)."""

from __future__ import annotations

from aiokafka import TopicPartition

from cardq.idempotency.memory import MemoryStore
from cardq.memory_kafka import MemoryBroker
from cardq.metrics import Metrics
from cardq.models import Result, Source, Status, utcnow
from cardq.offsets import OffsetTracker
from cardq.pipeline import Pipeline
from cardq.publisher import ResultPublisher
from tests import helpers
from tests.test_digest import SETTINGS, card_request, job_of, run_lane


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_digest_counts_one_card_and_each_request_merged() -> None:
    pipelines: list[Pipeline] = []

    async def keep(pipeline: Pipeline) -> None:
        pipelines.append(pipeline)

    jobs = [job_of(card_request(f"r{i}"), i, age_s=30) for i in range(6)]
    jobs.append(job_of(card_request("other", digest_key="grp-web"), 6, age_s=30))
    published, _ = await run_lane(jobs, SETTINGS, hold_first=True, before=keep)
    assert len(published) == 7
    labels = {"backend": "feishu_message", "bot": "app"}
    metrics = pipelines[0].metrics
    # r0 went alone before the backlog built, r1-r5 as one digest, "other" alone
    assert sample(metrics, "cardq_digest_cards_total", **labels) == 1
    assert sample(metrics, "cardq_digest_merged_total", **labels) == 5


def test_a_superseded_result_is_counted() -> None:
    settings = helpers.settings("127.0.0.1:9092", "http://127.0.0.1:1")
    metrics = Metrics()
    publisher = ResultPublisher(
        settings, MemoryBroker().producer(), OffsetTracker(), MemoryStore(), metrics, lambda: ()
    )
    now = utcnow()
    for status in (Status.SUPERSEDED, Status.DELIVERED, Status.SUPERSEDED):
        result = Result(
            status=status,
            source=Source("requests", 0, 1),
            worker_id="w",
            received_at=now,
            finished_at=now,
            backend="feishu_message",
            bot="app",
        )
        publisher._count(TopicPartition("requests", 0), 1, result)
    assert sample(metrics, "cardq_superseded_total", backend="feishu_message", bot="app") == 2
