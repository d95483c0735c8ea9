"""End to end over real parts: Tansu broker, the simulator over HTTP, the worker.

Nothing here is faked: requests are produced to Kafka, the worker sends them over HTTP to
the simulator, and results are read back from the results topic.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests import helpers
from worker.config import Topics
from worker.simulator import Simulator, SimulatorConfig
from worker.testing import ResultCollector, TansuBroker, produce, running_worker

TOPICS = Topics()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(SimulatorConfig())
    await simulator.start()
    helpers.register(simulator)
    yield simulator
    await simulator.stop()


async def committed(bootstrap: str, group: str, partitions: int = 1) -> list[int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return [
            await consumer.committed(TopicPartition(TOPICS.requests, p)) for p in range(partitions)
        ]
    finally:
        await consumer.stop()


async def test_webhook_requests_flow_to_results(broker: TansuBroker, sim: Simulator) -> None:
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    settings = helpers.settings(broker.bootstrap_servers, sim.base_url)
    requests = [helpers.hook(f"r{i}", text=f"card {i}") for i in range(20)]
    async with ResultCollector(broker.bootstrap_servers) as results:
        async with running_worker(settings):
            await produce(broker.bootstrap_servers, TOPICS.requests, requests)
            await produce(broker.bootstrap_servers, TOPICS.requests, [b"{not json"])
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
    assert await committed(broker.bootstrap_servers, "cardq-test") == [21]


async def test_sigkill_before_commit_then_restart_leaves_no_request_without_result(
    broker: TansuBroker, sim: Simulator, tmp_path: Path
) -> None:
    """At least once: a worker killed mid-run loses nothing; the next one finishes."""
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    sim.faults.latency_s = 0.02  # slow enough to be killed in the middle
    config = helpers.write_config(
        tmp_path / "cardq.yaml",
        broker.bootstrap_servers,
        sim.base_url,
        delivery={"commit_interval_s": 5.0},  # a long interval: the kill lands before commits
    )
    ids = [f"k{i}" for i in range(150)]
    # Many destinations so the worker has many sends in flight when it dies.
    requests = [helpers.mind(rid, group=f"g{i % 30}") for i, rid in enumerate(ids)]
    env = {**os.environ, **helpers.CREDENTIALS}
    async with ResultCollector(broker.bootstrap_servers) as results:
        await produce(broker.bootstrap_servers, TOPICS.requests, requests)
        first = subprocess.Popen(
            helpers.worker_command(config),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await results.wait_for(lambda c: len(c.results) >= 20, timeout=30)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert len(results.by_request()) < len(ids)  # it really died mid-run
        second = subprocess.Popen(
            helpers.worker_command(config),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await results.wait_for(lambda c: set(ids) <= set(c.by_request()), timeout=60)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 30) == 0
    by_id = results.by_request()
    assert all(any(r["status"] == "delivered" for r in by_id[rid]) for rid in ids)
    # MindOffice drops a resend with the same x-request-id: nothing was delivered twice.
    counts = sim.accepted_by_idempotency()
    assert max(counts.values()) == 1 and len(counts) == len(ids)
