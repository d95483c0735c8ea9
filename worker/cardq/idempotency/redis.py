"""The pool's store: one Redis shared by every worker of a consumer group.

A claim is ``SET key "c|owner" NX PX claim_ttl``: atomic, and it expires by itself when
its owner dies. A delivered key holds ``"d|{record}"`` for ``ttl_s``. Only the owner can
extend or release its claim (checked in Lua, so a late worker cannot drop a new claim).
Published offsets are a sorted set per partition (member and score: the offset), and
the results-topic positions a hash beside it, kept under names no idempotency key can
take (keys are printable ASCII; the names hold a NUL), and so are the subjects' message
ids (``{prefix}\0subject:{key}``, a plain string with its own lifetime). Marks and
positions are written in one MULTI, so a position never moves past a result whose mark
was not written.

At most ``max_connections`` calls run at once; the others wait their turn in order, for
as long as the calls before them take. A burst of lookups (every buffered record looks up
its key when a backlog is read) therefore queues instead of raising ``MaxConnectionsError``
by the hundred, and it is never refused merely for being long: redis-py's blocking pool
also bounded the *wait* for a connection by ``timeout_s``, so once more calls were queued
than 64 connections serve in 5 s, the tail failed with "No connection available", was
logged as an outage and retried, which lengthened the queue (bench/README.md, "Soak").
What Redis itself is given is bounded: each command's answer by ``timeout_s``, so a hung
Redis is an error the pipeline rides out, never a lane stuck forever.

A call on a connection from before a Redis restart fails once ("Connection closed by
server"): it is made again at once on a new connection. Without that, the first calls
after an outage failed although Redis was back, among them the published marks a new
assignment loads (267 records answered twice in one pool benchmark run). A claim whose
answer was lost and that is made again finds its own claim: the key then waits one
lease, it is never sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from . import Claim, ClaimState, DoneRecord, Marks, Partition, Published, ResultPositions

T = TypeVar("T")

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
_IF_OWNER_EXTEND = """
local ttl = ARGV[#ARGV]
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then redis.call('PEXPIRE', key, ttl) end
end
return 0
"""
_IF_OWNER_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _encode(record: DoneRecord) -> bytes:
    return b"d|" + orjson.dumps(
        {
            "request_id": record.request_id,
            "message_id": record.message_id,
            "finished_at": record.finished_at,
            "source": record.source,
        }
    )


def _decode(found: bytes | None) -> Claim:
    if not found:
        return Claim(ClaimState.NEW)
    if found.startswith(b"d|"):
        return Claim(ClaimState.DONE, record=DoneRecord.from_dict(orjson.loads(found[2:])))
    return Claim(ClaimState.IN_FLIGHT, owner=found[2:].decode(errors="replace"))


class RedisStore:
    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "cardq:idem:", max_calls: int = 64
    ) -> None:
        self._redis = client
        #: a turn per connection (``max_calls`` = the pool's bound): waiting for one is
        #: not bounded, see the module's docstring
        self._turns = asyncio.Semaphore(max_calls)
        self._prefix = prefix
        self._published_prefix = prefix + "\x00published:"
        self._subject_prefix = prefix + "\x00subject:"
        self._claim: Any = client.register_script(_CLAIM)
        self._extend: Any = client.register_script(_IF_OWNER_EXTEND)
        self._delete: Any = client.register_script(_IF_OWNER_DELETE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        password: str | None = None,
        prefix: str,
        max_connections: int = 64,
        timeout_s: float = 5.0,
    ) -> RedisStore:
        # Hundreds of lanes call at once: redis-py's default pool (100 connections) raised
        # MaxConnectionsError past that (~8,700 warnings in the soak benchmark's first
        # 25 s), and its blocking pool refused calls that waited longer than ``timeout_s``.
        # The turns keep calls within ``max_connections``, which Redis (one thread) serves
        # best anyway, so the pool never has to refuse one.
        pool = aioredis.ConnectionPool.from_url(
            url,
            password=password,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client = aioredis.Redis.from_pool(pool)  # aclose() closes the pool
        return cls(client, prefix=prefix, max_calls=max_connections)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._turns:
            return await call()

    async def lookup(self, key: str) -> Claim:
        found: Any = await self._call(lambda: self._redis.get(self._prefix + key))
        return _decode(found)

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        args = [b"c|" + owner.encode(), int(claim_ttl_s * 1000)]
        found = await self._call(lambda: self._claim(keys=[self._prefix + key], args=args))
        return _decode(found)

    async def extend(self, claims: Mapping[str, str], claim_ttl_s: float) -> None:
        if not claims:
            return
        keys = [self._prefix + key for key in claims]
        owners: list[bytes | int] = [b"c|" + owner.encode() for owner in claims.values()]
        await self._call(lambda: self._extend(keys=keys, args=[*owners, int(claim_ttl_s * 1000)]))

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None:
        value = _encode(record)
        await self._call(lambda: self._redis.set(self._prefix + key, value, px=int(ttl_s * 1000)))

    async def release(self, key: str, owner: str) -> None:
        args = [b"c|" + owner.encode()]
        await self._call(lambda: self._delete(keys=[self._prefix + key], args=args))

    def _published_key(self, partition: Partition) -> str:
        return f"{self._published_prefix}{partition[0]}:{partition[1]}"

    async def mark_published(
        self, offsets: Marks, ttl_s: float, positions: ResultPositions | None = None
    ) -> None:
        ttl_ms = int(ttl_s * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            for partition, marks in offsets.items():
                if marks:
                    name = self._published_key(partition)
                    pipe.zadd(name, {str(m): m for m in marks})
                    pipe.pexpire(name, ttl_ms)
            for partition, where in (positions or {}).items():
                if where:
                    name = self._published_key(partition) + ":positions"
                    pipe.hset(name, mapping={str(p): o for p, o in where.items()})
                    pipe.pexpire(name, ttl_ms)
            await self._call(pipe.execute)

    async def published(self, partition: Partition) -> Published:
        name = self._published_key(partition)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(name, 0, -1)
            pipe.hgetall(name + ":positions")
            members, where = await self._call(pipe.execute)
        return Published(
            {int(m) for m in members}, {int(p): int(o) for p, o in dict(where).items()}
        )

    async def forget_published(self, below: Mapping[Partition, int]) -> None:
        if not below:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, offset in below.items():
                pipe.zremrangebyscore(self._published_key(partition), "-inf", f"({offset}")
            await self._call(pipe.execute)

    async def subject(self, key: str) -> str | None:
        found: Any = await self._call(lambda: self._redis.get(self._subject_prefix + key))
        return found.decode() if found else None

    async def remember_subject(self, key: str, message_id: str, ttl_s: float) -> None:
        name, ttl_ms = self._subject_prefix + key, int(ttl_s * 1000)
        await self._call(lambda: self._redis.set(name, message_id, px=ttl_ms))

    async def forget_subject(self, key: str) -> None:
        await self._call(lambda: self._redis.delete(self._subject_prefix + key))

    async def aclose(self) -> None:
        await self._redis.aclose()
