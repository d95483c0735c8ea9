"""The pool's store: one Redis shared by every worker of a consumer group.

A claim is ``SET key "c|owner" NX PX claim_ttl``: atomic, and it expires by itself when
its owner dies. A delivered key holds ``"d|{record}"`` for ``ttl_s``. Only the owner can
extend or release its claim (checked in Lua, so a late worker cannot drop a new claim).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from . import Claim, ClaimState, DoneRecord

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
_IF_OWNER_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_IF_OWNER_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_MARK_PUBLISHED = """
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, 2) == 'd|' and not string.find(v, '"published":true', 1, true) then
    local record = cjson.decode(string.sub(v, 3))
    record['published'] = true
    redis.call('SET', key, 'd|' .. cjson.encode(record), 'KEEPTTL')
  end
end
return 0
"""


def _encode(record: DoneRecord) -> bytes:
    return b"d|" + orjson.dumps(
        {
            "request_id": record.request_id,
            "message_id": record.message_id,
            "finished_at": record.finished_at,
            "published": record.published,
        }
    )


#: Connections to Redis per worker, and how long a command waits for one before it fails
#: (and the pipeline retries it like any other store error).
POOL_SIZE = 64
POOL_WAIT_S = 10.0


class RedisStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "cardq:idem:") -> None:
        self._redis = client
        self._prefix = prefix
        self._claim: Any = client.register_script(_CLAIM)
        self._extend: Any = client.register_script(_IF_OWNER_EXTEND)
        self._delete: Any = client.register_script(_IF_OWNER_DELETE)
        self._mark: Any = client.register_script(_MARK_PUBLISHED)

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, prefix: str) -> RedisStore:
        # A blocking pool: with hundreds of lanes claiming at once, redis-py's default pool
        # (100 connections) raised MaxConnectionsError past that, and every lane retried
        # with a warning: ~8,700 lines in the soak benchmark's first 25 s. Waiting for one
        # of 64 connections is what Redis (one thread) serves best anyway.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password, max_connections=POOL_SIZE, timeout=POOL_WAIT_S
        )
        return cls(aioredis.Redis.from_pool(pool), prefix=prefix)  # aclose() closes the pool

    async def claim(self, key: str, owner: str, claim_ttl_s: float) -> Claim:
        found = await self._claim(
            keys=[self._prefix + key], args=[b"c|" + owner.encode(), int(claim_ttl_s * 1000)]
        )
        if not found:
            return Claim(ClaimState.NEW)
        if found.startswith(b"d|"):
            data = orjson.loads(found[2:])
            return Claim(ClaimState.DONE, record=DoneRecord(**data))
        return Claim(ClaimState.IN_FLIGHT, owner=found[2:].decode(errors="replace"))

    async def extend(self, key: str, owner: str, claim_ttl_s: float) -> None:
        await self._extend(
            keys=[self._prefix + key], args=[b"c|" + owner.encode(), int(claim_ttl_s * 1000)]
        )

    async def finish(self, key: str, record: DoneRecord, ttl_s: float) -> None:
        await self._redis.set(self._prefix + key, _encode(record), px=int(ttl_s * 1000))

    async def mark_published(self, keys: list[str]) -> None:
        if keys:
            await self._mark(keys=[self._prefix + k for k in keys], args=[])

    async def release(self, key: str, owner: str) -> None:
        await self._delete(keys=[self._prefix + key], args=[b"c|" + owner.encode()])

    async def aclose(self) -> None:
        await self._redis.aclose()
