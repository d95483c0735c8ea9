"""Compressed batches are read: producers compress, and franz-go (Go) uses snappy by default.

Without the codecs aiokafka raises ``UnsupportedCodecError`` on the first compressed batch
and the worker stops; the Go producer example found this.
"""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, TansuBroker, destination_of, running_worker
from tests import helpers

TOPICS = Topics()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_batches_are_delivered(
    codec: str, broker: TansuBroker, sim: Simulator
) -> None:
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    settings = helpers.settings(broker.bootstrap_servers, sim.base_url)
    requests = [helpers.mind(f"{codec}-{i}", group=f"g{i % 3}") for i in range(6)]
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", compression_type=codec
    )
    await producer.start()
    try:
        batch = [
            await producer.send(TOPICS.requests, orjson.dumps(r), key=destination_of(r).encode())
            for r in requests
        ]
        await producer.flush()
        for sent in batch:
            await sent
    finally:
        await producer.stop()
    async with ResultCollector(broker.bootstrap_servers) as results, running_worker(settings):
        await results.wait_for_count(len(requests), timeout=20)
    assert {r[0]["status"] for r in results.by_request().values()} == {"delivered"}
    assert len(sim.accepted) == len(requests)
