"""Everything the worker loop runs on, built from the settings in one place.

``build_parts`` is the only place that decides which store, rate limiter, transport and
Kafka clients a worker uses; the loop receives them built, so none of them is optional
there. Tests pass their own store, transport or in-memory Kafka clients
(``memory_kafka.py``) and get the same loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .backends import BackendContext, build
from .backends.base import Backend
from .backends.tokens import TokenPool
from .backends.transport import AiohttpTransport, Transport
from .config import Settings, resolve_secret
from .digest import Digests
from .idempotency import IdempotencyStore
from .idempotency.memory import MemoryStore
from .intake import Intake
from .kafka_clients import GroupConsumer, KafkaClients, ResultProducer
from .keycheck import KeyCheck
from .metrics import Metrics
from .offsets import OffsetTracker
from .pipeline import Pipeline
from .priority import PriorityLimiter
from .publisher import ResultPublisher
from .ratelimit import Limiter, RateLimiter
from .scheduler import Scheduler
from .store_health import StoreHealth, WatchedStore, redis_address
from .takeover import Takeover


def redis_password(settings: Settings) -> str | None:
    ref = settings.idempotency.redis_password
    return resolve_secret(ref, "idempotency.redis_password").reveal() if ref else None


def build_store(settings: Settings) -> IdempotencyStore:
    idem = settings.idempotency
    if idem.store == "redis":
        from .idempotency.redis import RedisStore

        password = redis_password(settings)
        return RedisStore.from_url(
            idem.redis_url,
            password=password,
            prefix=idem.key_prefix,
            max_connections=idem.redis_max_connections,
            timeout_s=idem.redis_timeout_s,
        )
    return MemoryStore(max_keys=idem.memory_max_keys)


def build_limiter(settings: Settings, metrics: Metrics, health: StoreHealth | None) -> Limiter:
    """One process paces alone; a pool with Redis shares its app and chat budgets there."""
    if health is None:
        return RateLimiter(margin=settings.delivery.limit_margin)
    from .ratelimit_redis import PoolRateLimiter, budget_client

    idem = settings.idempotency
    return PoolRateLimiter(
        budget_client(idem.redis_url, redis_password(settings)),
        health,
        metrics,
        prefix=idem.budget_key_prefix,
        margin=settings.delivery.limit_margin,
        lease_s=idem.budget_lease_s,
    )


@dataclass(frozen=True, slots=True)
class Parts:
    store: IdempotencyStore
    #: The Redis store's reachability (``None`` with the memory store).
    store_health: StoreHealth | None
    transport: Transport
    backends: Mapping[str, Backend]
    pipeline: Pipeline
    scheduler: Scheduler
    consumer: GroupConsumer
    producer: ResultProducer
    tracker: OffsetTracker
    intake: Intake
    publisher: ResultPublisher
    takeover: Takeover

    async def aclose(self, clients: KafkaClients) -> None:
        """Close what :func:`build_parts` built, the lanes first, the store last."""
        await self.scheduler.close()
        await self.pipeline.limiter.aclose()
        await self.pipeline.aclose()
        await clients.leave_group(self.consumer)
        await self.takeover.aclose()
        await self.producer.stop()
        if isinstance(self.transport, AiohttpTransport):  # a mock has nothing to close
            await self.transport.aclose()
        await self.store.aclose()


def build_parts(
    settings: Settings,
    metrics: Metrics,
    clients: KafkaClients,
    tracker: OffsetTracker,
    *,
    store: IdempotencyStore | None = None,
    transport: Transport | None = None,
) -> Parts:
    """The worker's parts, finishing records in ``tracker``; ``store`` and ``transport``
    replace the configured ones."""
    s = settings
    transport = transport or AiohttpTransport(max_connections=s.http.max_connections)
    # "is not None": an empty MemoryStore is falsy, and "or" used to replace it
    store = store if store is not None else build_store(s)
    health = None
    if s.idempotency.store == "redis":
        health = StoreHealth(redis_address(s.idempotency.redis_url), metrics)
        store = WatchedStore(store, health, s.worker_id)
    tokens = TokenPool(transport, on_fetch=lambda app: metrics.token_fetches.labels(app).inc())
    ctx = BackendContext(transport=transport, timeout_s=s.http.timeout_s, tokens=tokens)
    backends = {name: build(bot, ctx) for name, bot in s.bots.items()}
    pipeline = Pipeline(
        backends=backends,
        limiter=PriorityLimiter(build_limiter(s, metrics, health), s.priority.urgent_share),
        store=store,
        delivery=s.delivery,
        idempotency=s.idempotency,
        metrics=metrics,
        worker_id=s.worker_id,
    )
    consumer = clients.group_consumer()
    producer = clients.producer()
    publisher = ResultPublisher(s, producer, tracker, store, metrics, consumer.assignment)
    scheduler = Scheduler(pipeline, publisher.publish_job)
    if s.digest.enabled:
        scheduler.digests = Digests(pipeline, s.digest)
    return Parts(
        store=store,
        store_health=health,
        transport=transport,
        backends=backends,
        pipeline=pipeline,
        scheduler=scheduler,
        consumer=consumer,
        producer=producer,
        tracker=tracker,
        intake=Intake(s, KeyCheck(metrics)),
        publisher=publisher,
        takeover=Takeover(s, clients, producer, store, metrics),
    )


async def watch_store(settings: Settings, health: StoreHealth) -> None:
    """PING the Redis store once a second (or faster for a short readiness limit)."""
    from .ratelimit_redis import budget_client

    s = settings.idempotency
    client = budget_client(s.redis_url, redis_password(settings))
    interval = min(1.0, (s.unready_after_s or 5.0) / 5)
    try:
        await health.watch(client.ping, interval)
    finally:
        await client.aclose()
