"""End to end over real parts: a broker (Tansu and Apache Kafka), the simulator over HTTP,
the worker.

Nothing here is faked: requests are produced to Kafka, the worker sends them over HTTP to
the simulator, and results are read back from the results topic.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from cardq.simulator import Simulator
from cardq.testing import ResultCollector, produce, running_worker
from tests import helpers
from tests.brokers import BrokerUnderTest

pytestmark = pytest.mark.both_brokers


async def committed(broker: BrokerUnderTest, partitions: int = 1) -> list[int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, group_id=broker.group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return [
            await consumer.committed(TopicPartition(broker.topics.requests, p))
            for p in range(partitions)
        ]
    finally:
        await consumer.stop()


async def test_webhook_requests_flow_to_results(broker: BrokerUnderTest, sim: Simulator) -> None:
    await broker.create_all()
    settings = broker.settings(sim.base_url)
    requests = [helpers.hook(f"r{i}", text=f"card {i}") for i in range(20)]
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        async with running_worker(settings):
            await produce(broker.bootstrap_servers, broker.topics.requests, requests)
            await produce(broker.bootstrap_servers, broker.topics.requests, [b"{not json"])
            await results.wait_for_count(21, timeout=20)
            await results.wait_for(lambda c: len(c.dead_letters) >= 1, timeout=10)
        by_id = results.by_request()
    delivered = [by_id[f"r{i}"][0] for i in range(20)]
    assert all(r["status"] == "delivered" for r in delivered)
    assert all(
        r["attempts"] == 1 and r["destination"] == "feishu_webhook/hook/webhook" for r in delivered
    )
    texts = [a.body["content"]["text"] for a in sim.accepted]
    assert texts == [f"card {i}" for i in range(20)]  # one destination: order kept
    rejected = by_id["None"][0]
    assert rejected["status"] == "rejected"
    assert rejected["error"]["code"] == "invalid_json" and rejected["error"]["field"] == "$"
    assert results.dead_letters[0]["result"]["status"] == "rejected"
    assert await committed(broker) == [21]


@pytest.mark.tansu_only(
    "the re-read from the committed offset after a SIGKILL is shown on Apache Kafka by "
    "test_engine's crash test (the Redis store; the store does not change what the broker does)"
)
async def test_sigkill_before_commit_then_restart_leaves_no_request_without_result(
    broker: BrokerUnderTest, sim: Simulator, tmp_path: Path
) -> None:
    """At least once: a worker killed mid-run loses nothing; the next one finishes."""
    await broker.create_all()
    sim.faults.latency_s = 0.02  # slow enough to be killed in the middle
    config = broker.write_config(
        tmp_path / "cardq.yaml",
        sim.base_url,
        delivery={"commit_interval_s": 5.0},  # a long interval: the kill lands before commits
    )
    ids = [f"k{i}" for i in range(150)]
    # Many destinations so the worker has many sends in flight when it dies.
    requests = [helpers.mind(rid, group=f"g{i % 30}") for i, rid in enumerate(ids)]
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        await produce(broker.bootstrap_servers, broker.topics.requests, requests)
        with helpers.worker_process(config) as first:
            await results.wait_for(lambda c: len(c.results) >= 20, timeout=30)
            first.kill()  # SIGKILL: no drain, no commit
            first.wait()
        assert len(results.by_request()) < len(ids)  # it really died mid-run
        with helpers.worker_process(config) as second:
            await results.wait_for(lambda c: set(ids) <= set(c.by_request()), timeout=60)
            second.terminate()  # SIGTERM: drain, commit, leave, exit 0
            assert await asyncio.to_thread(second.wait, 30) == 0
    by_id = results.by_request()
    assert all(any(r["status"] == "delivered" for r in by_id[rid]) for rid in ids)
    # MindOffice drops a resend with the same x-request-id: nothing was delivered twice.
    counts = sim.accepted_by_idempotency()
    assert max(counts.values()) == 1 and len(counts) == len(ids)
