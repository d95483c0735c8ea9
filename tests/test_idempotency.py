"""Both stores against the same contract; the Redis one against the real Redis here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from worker.idempotency import ClaimState, DoneRecord, IdempotencyStore
from worker.idempotency.memory import MemoryStore
from worker.idempotency.redis import RedisStore


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


async def test_extend_keeps_claim(store: IdempotencyStore) -> None:
    await store.claim("k4", "w1/r1", 0.2)
    await store.extend("k4", "w1/r1", 30)
    await asyncio.sleep(0.3)
    assert (await store.claim("k4", "w2/r2", 30)).state is ClaimState.IN_FLIGHT


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


async def test_mark_published_is_remembered(store: IdempotencyStore) -> None:
    await store.claim("k6", "w1/r1", 30)
    await store.finish("k6", DoneRecord("r1", "om_6", "t"), 60)
    await store.mark_published(["k6", "unknown-key"])
    claim = await store.claim("k6", "w2/r1", 30)
    assert claim.record == DoneRecord("r1", "om_6", "t", published=True)


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
