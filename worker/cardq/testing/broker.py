"""Talking to a real broker from a test: produce requests, collect results, run a worker.

:class:`ResultCollector` waits for *conditions* (a count of results, a predicate), never for
fixed sleeps; :func:`running_worker` runs a worker in this event loop and drains it on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ..config import Settings, Topics
from ..consumer import Worker
from ..metrics import Metrics


def destination_of(request: Mapping[str, Any]) -> str:
    """The Kafka key a producer should use: ``backend/bot/target`` as the worker derives it."""
    from .. import validation

    try:
        return validation.from_dict(dict(request)).destination
    except validation.ValidationError:
        return str(request.get("request_id", "invalid"))


async def produce(
    bootstrap_servers: str,
    topic: str,
    requests: Iterable[Mapping[str, Any] | bytes],
    *,
    key: Callable[[Mapping[str, Any]], str] | None = destination_of,
    max_request_size: int = 4 * 1024 * 1024,
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_request_size=max_request_size,
    )
    await producer.start()
    count = 0
    try:
        for item in requests:
            if isinstance(item, bytes):
                value, k = item, None
            else:
                value = orjson.dumps(item)
                k = key(item).encode() if key is not None else None
            await producer.send(topic, value, key=k)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


class ResultCollector:
    """``async with ResultCollector(bootstrap, topics) as results: await results.wait_for(...)``."""

    def __init__(self, bootstrap_servers: str, topics: Topics | None = None) -> None:
        self._bootstrap = bootstrap_servers
        self._topics = topics or Topics()
        self.results: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def by_request(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for result in self.results:
            out.setdefault(str(result.get("request_id")), []).append(result)
        return out

    async def __aenter__(self) -> ResultCollector:
        consumer = AIOKafkaConsumer(
            self._topics.results,
            self._topics.dead_letters,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                for tp, records in batch.items():
                    target = self.results if tp.topic == self._topics.results else self.dead_letters
                    target.extend(orjson.loads(r.value or b"null") for r in records)
                if batch:
                    self._changed.set()
        finally:
            await consumer.stop()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, predicate: Callable[[ResultCollector], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_count(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` distinct request ids have a result."""
        try:
            await self.wait_for(lambda c: len(c.by_request()) >= count, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{len(self.by_request())} of {count} results after {timeout:g} s"
            ) from None


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, *, metrics: Metrics | None = None, **kwargs: Any
) -> AsyncIterator[Worker]:
    worker = Worker(settings, metrics=metrics, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        ready = asyncio.ensure_future(worker.became_ready.wait())
        await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raise what stopped it
        if not ready.done():
            ready.cancel()
            raise TimeoutError("the worker did not join its group within 20 s")
        yield worker
    finally:
        worker.stop()
        await task
