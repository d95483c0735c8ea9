"""Producing built requests: the one part of the client that talks to Kafka."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from .request import Request


class CardqProducer:
    """An aiokafka producer that sends :class:`Request` objects keyed by their destination.

    ``acks="all"``: a request the broker has not fully replicated is not reported as sent.
    Extra keyword arguments go to ``AIOKafkaProducer`` (security, compression, …).
    """

    def __init__(
        self, bootstrap_servers: str, *, topic: str = "cardq.requests", **options: Any
    ) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, **{"acks": "all", **options}
        )

    async def __aenter__(self) -> CardqProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def send(self, request: Request) -> tuple[int, int]:
        """Produce and wait for the broker; return (partition, offset)."""
        meta = await self._producer.send_and_wait(
            self.topic, request.to_json(), key=request.destination.encode()
        )
        return int(meta.partition), int(meta.offset)
