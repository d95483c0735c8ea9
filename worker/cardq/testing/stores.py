"""The idempotency-store contract, shipped for anyone writing a store (and run on ours).

A store is the pipeline's only memory of what was delivered; one that answers ``NEW`` for
a delivered key sends a card twice, one that never lets a dead worker's claim go stalls a
key forever. :data:`CHECKS` says what the pipeline relies on, one function per promise,
each against a fresh store::

    from cardq.testing.stores import CHECKS, StoreUnderTest, check_store

    async def test_my_store_keeps_the_contract() -> None:
        await check_store(my_store_under_test)   # all checks; the first failure names itself

or one pytest case per check with ``@pytest.mark.parametrize("check", CHECKS)``.

Expiry is part of the contract, but a test must not sleep through a lease: the factory
gives a :class:`StoreUnderTest` whose ``advance(seconds)`` lets that much time pass *for
the store*. :func:`memory_store` moves a :class:`~cardq.testing.clock.FakeClock`;
:func:`redis_store` shortens the remaining TTL of every key under its prefix (Redis keeps
time itself, so that is the only clock a test can move). A store of yours does the same
with its own clock or TTLs.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..idempotency import ClaimState, DoneRecord, IdempotencyStore, Published
from ..idempotency.memory import MemoryStore
from ..idempotency.redis import RedisStore
from .clock import FakeClock


@dataclass(frozen=True, slots=True)
class StoreUnderTest:
    store: IdempotencyStore
    #: Let ``seconds`` pass for the store's leases and records, without waiting for them.
    advance: Callable[[float], Awaitable[None]]


StoreFactory = Callable[[], AbstractAsyncContextManager[StoreUnderTest]]
Check = Callable[[StoreUnderTest], Awaitable[None]]


# --------------------------------------------------------------------------- the checks


async def claim_then_finish_then_duplicate(s: StoreUnderTest) -> None:
    """One claim wins; a second sees who holds it; after finish, everyone sees the record."""
    assert (await s.store.claim("k1", "w1/r1", 30)).state is ClaimState.NEW
    second = await s.store.claim("k1", "w2/r2", 30)
    assert second.state is ClaimState.IN_FLIGHT and second.owner == "w1/r1", second
    await s.store.finish("k1", DoneRecord("r1", "om_1", "2026-01-01T00:00:00Z"), 60)
    third = await s.store.claim("k1", "w2/r2", 30)
    assert third.state is ClaimState.DONE, third
    assert third.record == DoneRecord("r1", "om_1", "2026-01-01T00:00:00Z")


async def release_only_by_owner(s: StoreUnderTest) -> None:
    """A late worker's release must not drop the claim of the worker that holds it now."""
    await s.store.claim("k2", "w1/r1", 30)
    await s.store.release("k2", "w2/r9")
    assert (await s.store.claim("k2", "w3/r3", 30)).state is ClaimState.IN_FLIGHT
    await s.store.release("k2", "w1/r1")
    assert (await s.store.claim("k2", "w3/r3", 30)).state is ClaimState.NEW


async def lookup_never_takes_the_key(s: StoreUnderTest) -> None:
    assert (await s.store.lookup("k7")).state is ClaimState.NEW
    assert (await s.store.lookup("k7")).state is ClaimState.NEW
    assert (await s.store.claim("k7", "w1/r1", 30)).state is ClaimState.NEW
    held = await s.store.lookup("k7")
    assert held.state is ClaimState.IN_FLIGHT and held.owner == "w1/r1", held
    await s.store.finish("k7", DoneRecord("r1", "om_7", "t", source="t/0/5"), 60)
    assert (await s.store.lookup("k7")).record == DoneRecord("r1", "om_7", "t", source="t/0/5")


async def claim_of_a_dead_worker_lapses_after_its_lease(s: StoreUnderTest) -> None:
    """Held for the whole lease (not a moment less), then free for the next worker."""
    assert (await s.store.claim("k3", "dead/r1", 2.0)).state is ClaimState.NEW
    await s.advance(1.5)
    assert (await s.store.claim("k3", "live/r1", 2.0)).state is ClaimState.IN_FLIGHT
    await s.advance(1.0)
    assert (await s.store.claim("k3", "live/r1", 30)).state is ClaimState.NEW


async def extend_renews_only_the_owners_leases(s: StoreUnderTest) -> None:
    await s.store.claim("k4", "w1/r1", 2.0)
    await s.store.claim("k4b", "w1/r2", 2.0)
    await s.store.extend({"k4": "w1/r1", "k4b": "someone-else"}, 30)
    await s.advance(3.0)
    assert (await s.store.claim("k4", "w2/r2", 30)).state is ClaimState.IN_FLIGHT
    assert (await s.store.claim("k4b", "w2/r2", 30)).state is ClaimState.NEW


async def extend_does_not_revive_a_finished_key(s: StoreUnderTest) -> None:
    """A renewal racing a finish must not turn the delivered record back into a claim."""
    await s.store.claim("k6", "w1/r1", 2.0)
    await s.store.finish("k6", DoneRecord("r1", "om_6", "t"), 60)
    await s.store.extend({"k6": "w1/r1"}, 30)
    assert (await s.store.lookup("k6")).state is ClaimState.DONE


async def done_record_lives_for_its_ttl(s: StoreUnderTest) -> None:
    await s.store.claim("k5", "w1/r1", 30)
    await s.store.finish("k5", DoneRecord("r1", None, "t"), 60)
    await s.advance(59.0)
    assert (await s.store.claim("k5", "w1/r2", 30)).state is ClaimState.DONE
    await s.advance(2.0)
    assert (await s.store.claim("k5", "w1/r2", 30)).state is ClaimState.NEW


async def published_offsets_by_partition_until_forgotten(s: StoreUnderTest) -> None:
    store = s.store
    assert await store.published(("topic", 0)) == Published(set(), {})
    await store.mark_published({("topic", 0): [3, 5, 9], ("topic", 1): [4]}, 60)
    await store.mark_published({("topic", 0): [11]}, 60, {("topic", 0): {0: 17, 2: 5}})
    await store.mark_published({}, 60, {("topic", 0): {2: 8}})
    assert await store.published(("topic", 0)) == Published({3, 5, 9, 11}, {0: 17, 2: 8})
    assert (await store.published(("topic", 1))).offsets == {4}
    await store.forget_published({("topic", 0): 9})  # committed offset 9: 9 is read again
    assert await store.published(("topic", 0)) == Published({9, 11}, {0: 17, 2: 8})
    assert await store.published(("other", 0)) == Published(set(), {})


async def published_marks_cannot_collide_with_a_key(s: StoreUnderTest) -> None:
    await s.store.mark_published({("topic", 0): [1]}, 60)
    assert (await s.store.claim("published:topic:0", "w1/r1", 30)).state is ClaimState.NEW
    assert await s.store.published(("topic", 0)) == Published({1}, {})


async def subject_remembered_until_forgotten(s: StoreUnderTest) -> None:
    """The card of a ``subject_key`` (``lifecycle.py``): replaced, per key, forgotten."""
    key = '["feishu_message/app/chat_id:oc_1","fp-1"]'
    assert await s.store.subject(key) is None
    await s.store.remember_subject(key, "om_1", 60)
    assert await s.store.subject(key) == "om_1"
    await s.store.remember_subject(key, "om_2", 60)  # a new card replaced a gone one
    assert await s.store.subject(key) == "om_2"
    assert await s.store.subject('["feishu_message/app/chat_id:oc_2","fp-1"]') is None
    await s.store.forget_subject(key)
    assert await s.store.subject(key) is None
    await s.store.forget_subject(key)  # forgetting twice is harmless


async def subject_lives_for_its_ttl_apart_from_the_keys(s: StoreUnderTest) -> None:
    await s.store.remember_subject("same", "om_1", 60)
    assert (await s.store.claim("same", "w1/r1", 30)).state is ClaimState.NEW
    await s.store.finish("same", DoneRecord("r1", "om_9", "t"), 120)
    assert await s.store.subject("same") == "om_1"
    await s.advance(59.0)
    assert await s.store.subject("same") == "om_1"
    await s.advance(2.0)
    assert await s.store.subject("same") is None
    assert (await s.store.lookup("same")).state is ClaimState.DONE


CHECKS: tuple[Check, ...] = (
    claim_then_finish_then_duplicate,
    release_only_by_owner,
    lookup_never_takes_the_key,
    claim_of_a_dead_worker_lapses_after_its_lease,
    extend_renews_only_the_owners_leases,
    extend_does_not_revive_a_finished_key,
    done_record_lives_for_its_ttl,
    published_offsets_by_partition_until_forgotten,
    published_marks_cannot_collide_with_a_key,
    subject_remembered_until_forgotten,
    subject_lives_for_its_ttl_apart_from_the_keys,
)


async def check_store(factory: StoreFactory, checks: tuple[Check, ...] = CHECKS) -> None:
    """Every check against a fresh store; the first to fail raises, naming itself."""
    for check in checks:
        async with factory() as under_test:
            try:
                await check(under_test)
            except AssertionError as exc:
                raise AssertionError(f"store contract, {check.__name__}: {exc}") from exc


# --------------------------------------------------------------------------- our stores


@contextlib.asynccontextmanager
async def memory_store(**kwargs: Any) -> AsyncIterator[StoreUnderTest]:
    """A :class:`MemoryStore` on a fake clock (``kwargs`` go to the store)."""
    clock = FakeClock()
    store = MemoryStore(clock=clock, **kwargs)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    try:
        yield StoreUnderTest(store, advance)
    finally:
        await store.aclose()


# Time passing, for the keys under a prefix: each TTL shortened, each one that runs out gone.
_ADVANCE = """
local ms = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then
    if ttl <= ms then redis.call('DEL', key) else redis.call('PEXPIRE', key, ttl - ms) end
  end
end
return 0
"""


def redis_store(url: str, prefix: str) -> StoreFactory:
    """A factory of :class:`RedisStore` s on the Redis at ``url``, each under its own
    sub-prefix of ``prefix`` (so checks never see each other's keys, and the caller
    deletes everything under ``prefix`` afterwards)."""

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[StoreUnderTest]:
        own = f"{prefix}{uuid.uuid4().hex[:12]}:"
        store = RedisStore.from_url(url, prefix=own)
        client = aioredis.Redis.from_url(url)  # the test's hand on the clock, not the store's
        shorten: Any = client.register_script(_ADVANCE)

        async def advance(seconds: float) -> None:
            keys = [key async for key in client.scan_iter(match=own + "*", count=1000)]
            if keys:
                await shorten(keys=keys, args=[int(seconds * 1000)])

        try:
            yield StoreUnderTest(store, advance)
        finally:
            await store.aclose()
            await client.aclose()

    return factory
