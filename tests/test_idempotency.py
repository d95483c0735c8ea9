"""Both stores against the same contract; the Redis one against the real Redis here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from cardq.idempotency import ClaimState, DoneRecord, IdempotencyStore, Published
from cardq.idempotency.memory import MemoryStore
from cardq.idempotency.redis import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    """The memory store never asks for a Redis server; the Redis one gets the session's."""
    built: IdempotencyStore
    if request.param == "memory":
        built = MemoryStore()
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")
        built = RedisStore.from_url(url, prefix=prefix)
    yield built
    await built.aclose()


async def test_claim_then_finish_then_duplicate(store: IdempotencyStore) -> None:
    first = await store.claim("k1", "w1/r1", 30)
    assert first.state is ClaimState.NEW
    second = await store.claim("k1", "w2/r2", 30)
    assert second.state is ClaimState.IN_FLIGHT
    assert second.owner == "w1/r1"
    await store.finish("k1", DoneRecord("r1", "om_1", "2026-01-01T00:00:00Z"), 60)
    third = await store.claim("k1", "w2/r2", 30)
    assert third.state is ClaimState.DONE
    assert third.record == DoneRecord("r1", "om_1", "2026-01-01T00:00:00Z")


async def test_release_only_by_owner(store: IdempotencyStore) -> None:
    await store.claim("k2", "w1/r1", 30)
    await store.release("k2", "w2/r9")  # not the owner: no effect
    assert (await store.claim("k2", "w3/r3", 30)).state is ClaimState.IN_FLIGHT
    await store.release("k2", "w1/r1")
    assert (await store.claim("k2", "w3/r3", 30)).state is ClaimState.NEW


async def test_claim_of_dead_worker_is_reclaimed_after_timeout(store: IdempotencyStore) -> None:
    assert (await store.claim("k3", "dead/r1", 0.2)).state is ClaimState.NEW
    assert (await store.claim("k3", "live/r1", 0.2)).state is ClaimState.IN_FLIGHT
    await asyncio.sleep(0.3)  # the claim's own timeout is the condition under test
    assert (await store.claim("k3", "live/r1", 30)).state is ClaimState.NEW


async def test_extend_renews_only_the_owners_leases(store: IdempotencyStore) -> None:
    await store.claim("k4", "w1/r1", 0.2)
    await store.claim("k4b", "w1/r2", 0.2)
    await store.extend({"k4": "w1/r1", "k4b": "someone-else"}, 30)
    await asyncio.sleep(0.3)  # the lease's own expiry is the condition under test
    assert (await store.claim("k4", "w2/r2", 30)).state is ClaimState.IN_FLIGHT
    assert (await store.claim("k4b", "w2/r2", 30)).state is ClaimState.NEW


async def test_lookup_never_takes_the_key(store: IdempotencyStore) -> None:
    assert (await store.lookup("k7")).state is ClaimState.NEW
    assert (await store.claim("k7", "w1/r1", 30)).state is ClaimState.NEW
    held = await store.lookup("k7")
    assert held.state is ClaimState.IN_FLIGHT and held.owner == "w1/r1"
    await store.finish("k7", DoneRecord("r1", "om_7", "t", source="t/0/5"), 60)
    done = await store.lookup("k7")
    assert done.record == DoneRecord("r1", "om_7", "t", source="t/0/5")


async def test_done_record_expires_after_ttl(store: IdempotencyStore) -> None:
    await store.claim("k5", "w1/r1", 30)
    await store.finish("k5", DoneRecord("r1", None, "t"), 0.2)
    await asyncio.sleep(0.3)
    assert (await store.claim("k5", "w1/r2", 30)).state is ClaimState.NEW


async def test_memory_store_is_bounded() -> None:
    store = MemoryStore(max_keys=100)
    for i in range(1000):
        await store.claim(f"k{i}", "w", 30)
    assert len(store) == 100
    assert (await store.claim("k999", "x", 30)).state is ClaimState.IN_FLIGHT


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


async def test_published_offsets_by_partition_until_forgotten(store: IdempotencyStore) -> None:
    assert await store.published(("topic", 0)) == Published(set(), {})
    await store.mark_published({("topic", 0): [3, 5, 9], ("topic", 1): [4]}, 60)
    await store.mark_published({("topic", 0): [11]}, 60, {("topic", 0): {0: 17, 2: 5}})
    await store.mark_published({}, 60, {("topic", 0): {2: 8}})
    assert await store.published(("topic", 0)) == Published({3, 5, 9, 11}, {0: 17, 2: 8})
    assert (await store.published(("topic", 1))).offsets == {4}
    await store.forget_published({("topic", 0): 9})  # committed offset 9: 9 is read again
    assert await store.published(("topic", 0)) == Published({9, 11}, {0: 17, 2: 8})
    assert await store.published(("other", 0)) == Published(set(), {})


async def test_published_marks_cannot_collide_with_a_key(store: IdempotencyStore) -> None:
    await store.mark_published({("topic", 0): [1]}, 60)
    assert (await store.claim("published:topic:0", "w1/r1", 30)).state is ClaimState.NEW


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
