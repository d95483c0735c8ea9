"""A drain is over only when the work it dropped has ended, and that work sends nothing.

Why: a drain cancels the jobs of revoked partitions that are not on the wire, but a
cancellation can be swallowed on its way (redis-py does so when it arrives mid-command).
Such a job went on: it claimed its key, sent, and in one pool benchmark run its worker
exited before recording the delivery, so the partition's next owner, once the claim had
lapsed, sent the same webhook card again. The drain now waits for the dropped jobs too,
and the pipeline checks ``Job.dropped`` before it claims and before it sends.
"""

from __future__ import annotations

import asyncio

import orjson

from cardq import validation
from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.consumer import Worker
from cardq.idempotency import Claim, ClaimState
from cardq.idempotency.memory import MemoryStore
from cardq.memory_kafka import MemoryBroker
from tests import helpers
from tests.test_worker_inmemory import until

OK = orjson.dumps({"code": 200, "data": {"message_id": "m-1"}})


class SwallowingStore(MemoryStore):
    """A store whose claim, once asked to, holds on and swallows a cancellation, as
    redis-py may: the command completes and the caller never sees the cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.claiming = asyncio.Event()
        self.go_on = asyncio.Event()
        self.swallowed = 0

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        if self.hold:
            self.claiming.set()
            while not self.go_on.is_set():
                try:
                    await self.go_on.wait()
                except asyncio.CancelledError:
                    self.swallowed += 1
        return await super().claim(key, owner, claim_ttl_s)


async def test_a_job_whose_cancellation_was_swallowed_sends_nothing_after_its_drain() -> None:
    s = helpers.settings("in-memory:9092", "http://platform")
    broker, store = MemoryBroker(partitions=1), SwallowingStore()
    sent: list[bytes] = []

    def answer(request: HttpRequest) -> Response:
        sent.append(request.body)
        return Response(200, {}, OK)

    store.hold = True
    request = helpers.mind("drained-1", "g1")
    broker.append(s.kafka.topics.requests, orjson.dumps(request), b"key")
    clients = broker.clients()
    worker = Worker(
        s, clients=clients, store=store, transport=MockTransport(answer), serve_health=False
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(store.claiming.wait(), 10)
        revoking = asyncio.create_task(clients.consumers[0].revoke())
        await until(lambda: store.swallowed == 1, "the drain's cancellation, swallowed")
        assert not revoking.done(), "the drain ended while the job it dropped still ran"
        store.go_on.set()  # the claim completes, as a swallowed Redis command does
        await asyncio.wait_for(revoking, 10)
        assert sent == [], "a dropped job sent its request"
        key = validation.decode(orjson.dumps(request)).idempotency_key
        assert (await store.lookup(key)).state is ClaimState.NEW, "the claim was kept"
    finally:
        store.go_on.set()  # a failed test's held claim must not hold up the shutdown
        worker.stop()
        await asyncio.wait_for(task, 10)
