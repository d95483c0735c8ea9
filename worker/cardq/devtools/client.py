"""What ``cardq send`` uses to produce one request (service teams: see ``cardq.client``).

The Kafka key is the request's destination key, so every request for one destination
lands on one partition and keeps its order (see ``schemas/README.md``).
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ..config import Settings
from ..kafka_check import check_broker
from ..kafka_clients import kafka_options
from ..models import SendRequest


async def produce_and_wait(
    settings: Settings,
    bootstrap: str,
    topic: str,
    request: SendRequest,
    raw: bytes,
    wait: float | None,
    *,
    address_key: str = "kafka.bootstrap_servers",
) -> int:
    options = {**kafka_options(settings.kafka), "bootstrap_servers": bootstrap}
    await check_broker(settings.kafka, options, address_key=address_key)
    consumer = None
    if wait is not None:
        # Subscribe before producing so the result cannot slip past us.
        consumer = AIOKafkaConsumer(
            settings.kafka.topics.results,
            **options,
            group_id=None,
            auto_offset_reset="latest",
            enable_auto_commit=False,
        )
        await consumer.start()
        await consumer.seek_to_end()
        for tp in consumer.assignment():
            await consumer.position(tp)
    producer = AIOKafkaProducer(**options, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, raw, key=request.destination.encode())
        print(
            f"sent {request.request_id} to {topic}[{meta.partition}]@{meta.offset} "
            f"(destination {request.destination})",
            flush=True,  # seen at once, not after the --wait
        )
    finally:
        await producer.stop()
    if consumer is None:
        return 0
    try:
        async with asyncio.timeout(wait):
            async for record in consumer:
                if record.key == request.request_id.encode():
                    result = orjson.loads(record.value or b"{}")
                    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
                    return 0 if result.get("status") in ("delivered", "duplicate") else 1
    except TimeoutError:
        print(f"no result for {request.request_id} within {wait:g} s", file=sys.stderr)
        return 1
    finally:
        await consumer.stop()
    return 1


def new_request_id() -> str:
    return str(uuid.uuid4())
