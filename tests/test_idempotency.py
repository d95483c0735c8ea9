"""Both stores against the shipped contract (``cardq.testing.stores``), the Redis one
against the real Redis here; time passes by the test's word, never by a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cardq.devtools.redis_server import RedisServer
from cardq.idempotency import ClaimState, DoneRecord
from cardq.idempotency.memory import MemoryStore
from cardq.idempotency.redis import RedisStore
from cardq.testing import FakeClock
from cardq.testing.stores import (
    CHECKS,
    Check,
    StoreFactory,
    StoreUnderTest,
    check_store,
    memory_store,
    redis_store,
)


@pytest.fixture(params=["memory", "redis"])
def factory(request: pytest.FixtureRequest) -> StoreFactory:
    """The memory store never asks for a Redis server; the Redis one gets the session's."""
    if request.param == "memory":
        return memory_store
    return redis_store(
        request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    )


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_store_keeps_the_contract(factory: StoreFactory, check: Check) -> None:
    async with factory() as under_test:
        await check(under_test)


class ForgetfulStore(MemoryStore):
    """A store with the classic bug: anyone may release a claim, not only its owner."""

    async def release(self, key: str, owner: str) -> None:
        self._entries.pop(key, None)


async def test_the_contract_catches_a_store_that_breaks_it() -> None:
    """The shipped runner fails a wrong store, and says which promise it broke."""

    @contextlib.asynccontextmanager
    async def forgetful() -> AsyncIterator[StoreUnderTest]:
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        yield StoreUnderTest(ForgetfulStore(clock=clock), advance)

    with pytest.raises(AssertionError, match="release_only_by_owner"):
        await check_store(forgetful)
    await check_store(memory_store)  # and passes a right one


async def test_memory_store_is_bounded() -> None:
    store = MemoryStore(max_keys=100)
    for i in range(1000):
        await store.claim(f"k{i}", "w", 30)
    assert len(store) == 100
    assert (await store.claim("k999", "x", 30)).state is ClaimState.IN_FLIGHT
    assert (await store.claim("k0", "x", 30)).state is ClaimState.NEW  # the oldest went first


async def test_redis_advance_moves_only_its_own_keys(redis_url: str, redis_prefix: str) -> None:
    """The Redis harness's clock is the keys' TTLs under its own prefix: another store's
    lease (another test, another pod) is not shortened."""
    other = RedisStore.from_url(redis_url, prefix=redis_prefix + "other:")
    try:
        await other.claim("k", "w1", 2.0)
        async with redis_store(redis_url, redis_prefix)() as under_test:
            await under_test.store.claim("k", "w1", 2.0)
            await under_test.advance(3.0)
            assert (await under_test.store.lookup("k")).state is ClaimState.NEW
        assert (await other.lookup("k")).state is ClaimState.IN_FLIGHT
    finally:
        await other.aclose()


async def test_many_lanes_at_once_wait_for_a_connection_instead_of_failing(
    redis_url: str, redis_prefix: str
) -> None:
    """Hundreds of lanes claim at once; more than the pool holds must queue, not fail
    (redis-py's default pool raised MaxConnectionsError past 100)."""
    store = RedisStore.from_url(redis_url, prefix=redis_prefix)
    try:
        claims = await asyncio.gather(*(store.claim(f"k{i}", "w", 30.0) for i in range(500)))
    finally:
        await store.aclose()
    assert all(c.state is ClaimState.NEW for c in claims)


async def test_redis_pool_queues_a_burst_instead_of_failing(
    redis_url: str, redis_prefix: str
) -> None:
    """1,000 concurrent calls over 4 connections: every one answered, none refused (a
    plain pool raises MaxConnectionsError past its bound), and never more than 4 open."""
    store = RedisStore.from_url(redis_url, prefix=redis_prefix, max_connections=4, timeout_s=5)
    pool = store._redis.connection_pool
    opened: list[int] = []

    async def lookup_and_claim(i: int) -> ClaimState:
        await store.lookup(f"burst{i}")
        opened.append(len(pool._available_connections) + len(pool._in_use_connections))
        return (await store.claim(f"burst{i}", "w1", 30)).state

    try:
        states = await asyncio.gather(*(lookup_and_claim(i) for i in range(1000)))
    finally:
        await store.aclose()
    assert states == [ClaimState.NEW] * 1000
    assert max(opened) <= 4


async def test_redis_call_waits_its_turn_longer_than_the_timeout(
    redis_url: str, redis_prefix: str
) -> None:
    """A call queued behind others waits for as long as they take: only Redis's answer is
    bounded by ``timeout_s``. (redis-py's blocking pool refused the wait itself after
    ``timeout_s`` with "No connection available", and a deep backlog's lookups failed by
    the thousand in the soak benchmark.)"""
    store = RedisStore.from_url(redis_url, prefix=redis_prefix, max_connections=1, timeout_s=0.2)
    try:
        async with store._turns:  # every connection busy for longer than the timeout
            waiting = asyncio.ensure_future(store.lookup("queued"))
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                assert not waiting.done()
                await asyncio.sleep(0.05)
        assert (await asyncio.wait_for(waiting, 5)).state is ClaimState.NEW
    finally:
        await store.aclose()


async def test_a_redis_restart_costs_no_failed_call(tmp_path: Path) -> None:
    """Redis restarted with its data: the store's pooled connections are dead, and the
    first call on each used to fail although Redis answered again (the published marks
    of a new assignment among them). Each call is made again at once on a new one."""
    server = RedisServer(persist_dir=tmp_path / "redis").start()
    store = RedisStore.from_url(server.url, prefix="restart:")
    try:
        record = DoneRecord("r1", "om_1", "2026-01-01T00:00:00+00:00", source="t/0/1")
        await store.finish("k", record, 60)
        await store.mark_published({("t", 0): [5]}, 60)
        server.stop()
        server.start()  # the same port, its data kept
        assert (await store.lookup("k")).state is ClaimState.DONE
        assert list((await store.published(("t", 0))).offsets) == [5]
    finally:
        await store.aclose()
        server.stop()


async def test_memory_store_bounds_subjects_too() -> None:
    store = MemoryStore(max_keys=10)
    for i in range(50):
        await store.remember_subject(f"fp-{i}", f"om_{i}", 60)
    assert await store.subject("fp-0") is None
    assert await store.subject("fp-49") == "om_49"
