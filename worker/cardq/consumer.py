"""The worker loop, the only module that imports aiokafka.

Read it top to bottom: :meth:`Worker.run` starts the clients, then loops
fetch → intake → backpressure → commit until asked to stop, then shuts down::

    CREATED ─ start() ─▶ RUNNING ─ SIGTERM / stop() ─▶ DRAINING ─▶ STOPPED
                            ▲  │ partitions revoked: drain them, commit, give them up
                            └──┘

Delivery guarantee: a record's offset is committed only after its result (and its dead
letter, if any) is acknowledged by the broker, and the committed offset of a partition is
the lowest one not yet finished (``offsets.py``). A worker that dies loses nothing: the
next owner re-reads from the commit point, and the idempotency store keeps what was
already delivered from being sent again.

One result per record: each acknowledged result's offset is marked in the store as soon
as the ack arrives (a background task writes whatever has gathered, one call at a time),
together with where on the results topic this partition's later, still unmarked results
would be. A partition's new owner loads the marks when it is assigned, reads the results
topic from those positions to its end for results an owner that died had published but
not yet marked, and finishes all of those records without a second result
(README, "Exactly one result per record").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.helpers import create_ssl_context

from . import flow, validation
from .backends import BackendContext, build
from .backends.base import Backend
from .backends.tokens import TokenPool
from .backends.transport import AiohttpTransport, Transport
from .config import ConfigError, KafkaSettings, Settings, resolve_secret
from .console.state import Console
from .console.web import application as console_app
from .health import HealthServer
from .idempotency import IdempotencyStore, Partition, Published
from .idempotency.memory import MemoryStore
from .kafka_check import check_broker
from .keycheck import KeyCheck
from .metrics import Metrics
from .models import ErrorInfo, ErrorKind, Result, Source, Status, encode_dead_letter, utcnow
from .offsets import OffsetTracker
from .pipeline import WAIT_REASONS, Job, Pipeline
from .ratelimit import Limiter, RateLimiter
from .scheduler import Scheduler
from .store_health import StoreHealth, WatchedStore, redis_address

log = structlog.get_logger("cardq.worker")

#: While the first join is pending, a ``still_joining_group`` line this often.
JOIN_NOTE_EVERY_S = 5.0

#: How long a new assignment may spend reading the results topic for unmarked results.
RESULTS_SCAN_TIMEOUT_S = 30.0

#: What a revocation may take beyond ``delivery.drain_grace_s``: publishing the drained
#: results and waiting for their acks, writing their marks, committing.
REVOCATION_MARGIN_S = 15.0

ASSIGNORS: dict[str, Any] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
}


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def kafka_options(k: KafkaSettings) -> dict[str, Any]:
    """Connection and security options passed through to aiokafka."""
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = _ssl_context(k)
    if k.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = k.sasl_mechanism
        opts["sasl_plain_username"] = k.sasl_username
        if k.sasl_password is not None:
            opts["sasl_plain_password"] = resolve_secret(
                k.sasl_password, "kafka.sasl_password"
            ).reveal()
    return opts


def rebalance_timeout_ms(settings: Settings) -> int:
    """How long the group waits for every member to finish its revocation and rejoin.

    Apache Kafka hands a member's partitions to the others once this has passed, even
    while that member is still draining them: results it then publishes come after the
    next owner read the marks and the results topic, and that owner answers the same
    records again from the store (a second result). aiokafka sets it to the session
    timeout (3 s in the tests, where a drain of sends on the wire took 4 s), so it is set
    here to cover the whole revocation: the drain grace plus publishing, marking and
    committing (README, "Exactly one result per record"). It costs nothing when a member
    dies: the broker drops a member whose heartbeats stop after the session timeout.
    """
    covering = int((settings.delivery.drain_grace_s + REVOCATION_MARGIN_S) * 1000)
    return max(settings.kafka.session_timeout_ms, covering)


def join_request_timeout_ms(rebalance_ms: int) -> int:
    """The broker holds a JoinGroup answer until the rebalance ends (up to the rebalance
    timeout): the request may not time out first (what the Java client does too)."""
    return max(40_000, rebalance_ms + 5_000)


def redis_password(settings: Settings) -> str | None:
    ref = settings.idempotency.redis_password
    return resolve_secret(ref, "idempotency.redis_password").reveal() if ref else None


def _ssl_context(k: KafkaSettings) -> ssl.SSLContext:
    for key, path in (
        ("kafka.ssl_cafile", k.ssl_cafile),
        ("kafka.ssl_certfile", k.ssl_certfile),
        ("kafka.ssl_keyfile", k.ssl_keyfile),
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(key, f"no such file: {path}")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=k.ssl_cafile, certfile=k.ssl_certfile, keyfile=k.ssl_keyfile
        )
    except ssl.SSLError as exc:
        key = "kafka.ssl_cafile" if k.ssl_certfile is None else "kafka.ssl_certfile"
        raise ConfigError(key, f"not usable for TLS ({exc.reason or exc})") from None
    return context


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


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(set(assigned))


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        store: IdempotencyStore | None = None,
        transport: Transport | None = None,
        serve_health: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.state = State.CREATED
        self.joined = False
        self.became_ready = asyncio.Event()
        self._serve_health = serve_health and settings.observability.port is not None
        self.health: HealthServer | None = None
        self._store = store
        self._transport = transport
        self._stop = asyncio.Event()
        self._rebalance_timeout_ms = rebalance_timeout_ms(settings)
        self._tracker = OffsetTracker()
        self._paused: set[TopicPartition] = set()
        #: per partition, the offset after the last record read (for its backlog)
        self._next_offset: dict[TopicPartition, int] = {}
        d = settings.delivery
        self._bound = flow.Bound(d.max_buffered_records, d.max_buffered_bytes, d.resume_ratio)
        #: Bumped by every rebalance: a fetch that started before it is stale (its records
        #: belong to an assignment already drained and committed; they are read again).
        self._epoch = 0
        #: Bumped when an assignment begins and when a revocation has given partitions
        #: up: a job read under an older one publishes nothing (see ``_publish_job``).
        self._assignment = 0
        self._publishing: set[asyncio.Task[None]] = set()
        #: Offsets whose results were acknowledged, not yet marked in the store; and per
        #: results partition, the offset just after the last such result. Acks of one
        #: partition come in offset order and marks are written in ack order, so every
        #: result of ours before that offset is marked: it is where a successor of any
        #: of our partitions must start reading for unmarked ones.
        self._to_mark: dict[Partition, list[int]] = {}
        self._positions: dict[int, int] = {}
        self._marks_waiting = asyncio.Event()
        self._marks_lock = asyncio.Lock()
        self._marker: asyncio.Task[None] | None = None
        #: Per assigned partition: offsets whose result an earlier owner (or an earlier
        #: assignment) already published; a re-read of one is finished without a result.
        self._already_published: dict[TopicPartition, set[int]] = {}
        #: Set while an assignment loads those marks: intake waits for it.
        self._loading: asyncio.Future[None] | None = None
        self._pending_acks: set[asyncio.Future[Any]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._scanner: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        #: The Redis store's reachability (``None`` with the memory store).
        self.store_health: StoreHealth | None = None
        self._probe: asyncio.Task[None] | None = None
        self.counts = {"consumed": 0, "results": 0}
        self._result_hooks: list[Callable[[Result], None]] = []
        self._key_check = KeyCheck(self.metrics)

    # ------------------------------------------------------------------ public surface

    @property
    def ready(self) -> bool:
        return self.state is State.RUNNING and self.joined and not self._store_gone()

    def _store_gone(self) -> bool:
        """Redis unreachable for longer than ``idempotency.unready_after_s``."""
        limit = self.settings.idempotency.unready_after_s
        health = self.store_health
        return health is not None and limit is not None and health.unreachable_for() >= limit

    def stop(self) -> None:
        """Ask the worker to drain and exit (SIGTERM does the same)."""
        self._stop.set()

    def on_result(self, hook: Callable[[Result], None]) -> None:
        """Call ``hook`` with every result once it is acknowledged (tests, ``cardq dev``)."""
        self._result_hooks.append(hook)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        s = self.settings
        k = s.kafka
        options = kafka_options(k)
        await check_broker(k, options)  # a wrong address or password: one line, exit 2
        transport = self._transport or AiohttpTransport(max_connections=s.http.max_connections)
        # "is not None": an empty MemoryStore is falsy, and "or" used to replace it
        store = self._store if self._store is not None else build_store(s)
        if s.idempotency.store == "redis":
            self.store_health = StoreHealth(redis_address(s.idempotency.redis_url), self.metrics)
            store = WatchedStore(store, self.store_health, s.worker_id)
        limiter = build_limiter(s, self.metrics, self.store_health)
        tokens = TokenPool(
            transport, on_fetch=lambda app: self.metrics.token_fetches.labels(app).inc()
        )
        ctx = BackendContext(transport=transport, timeout_s=s.http.timeout_s, tokens=tokens)
        self.backends: Mapping[str, Backend] = {
            name: build(bot, ctx) for name, bot in s.bots.items()
        }
        self.pipeline = Pipeline(
            backends=self.backends,
            limiter=limiter,
            store=store,
            delivery=s.delivery,
            idempotency=s.idempotency,
            metrics=self.metrics,
            worker_id=s.worker_id,
        )
        self.scheduler = Scheduler(self.pipeline, self._publish_job)
        # max_batch_size: aiokafka sends one batch per partition per request and, when that
        # batch is full, parks every further send() in wait_drain() and wakes them all at
        # each drain. With the default 16 KiB (~20 results) that thrash cost a quarter of
        # the worker's CPU at 1,000 results/s (bench/README.md, "Profiles"); 1 MiB holds
        # every result of a busy linger period.
        self._producer = AIOKafkaProducer(
            **options,
            acks="all",
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        self._consumer = AIOKafkaConsumer(
            **options,
            group_id=k.group_id,
            group_instance_id=k.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            rebalance_timeout_ms=self._rebalance_timeout_ms,
            request_timeout_ms=join_request_timeout_ms(self._rebalance_timeout_ms),
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
            partition_assignment_strategy=(ASSIGNORS[k.partition_assignment_strategy],),
        )
        if self._serve_health:
            console = None
            if s.observability.console.enabled:
                console = console_app(Console.attach(self))
            self.health = HealthServer(self.metrics, lambda: self.ready, console)
            port = s.observability.port
            assert port is not None
            await self.health.start(s.observability.host, port)
        if self.store_health is not None:
            self._probe = asyncio.create_task(self._watch_store(), name="store-probe")
        await self._producer.start()
        self._marker = asyncio.create_task(self._mark_loop(), name="published-marks")
        try:
            await self._consumer.start()
            self._consumer.subscribe([k.topics.requests], listener=_Rebalance(self))
            self.state = State.RUNNING
            log.info(
                "worker_started",
                worker_id=s.worker_id,
                topic=k.topics.requests,
                group=k.group_id,
                bots=sorted(self.backends),
            )
            # The join can take seconds (a broker may hold it until the group settles):
            # say what the worker is waiting for, so a quiet start is not mistaken for a hang.
            log.info("joining_group", group=k.group_id, bootstrap_servers=k.bootstrap_servers)
            watcher = asyncio.create_task(self._note_slow_join())
            try:
                await self._loop()
            finally:
                watcher.cancel()
        finally:
            await self._shutdown(store, transport)

    async def _note_slow_join(self) -> None:
        """A line every few seconds until the first assignment: ``getmany`` waits for the
        join without returning, so the fetch loop cannot say it is still waiting."""
        k = self.settings.kafka
        started = time.monotonic()
        while not self.joined and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.became_ready.wait(), JOIN_NOTE_EVERY_S)
            if not self.joined and not self._stop.is_set():
                log.info(
                    "still_joining_group",
                    group=k.group_id,
                    bootstrap_servers=k.bootstrap_servers,
                    waited_s=round(time.monotonic() - started, 1),
                )

    async def _watch_store(self) -> None:
        """PING the Redis store once a second (or faster for a short readiness limit)."""
        from .ratelimit_redis import budget_client

        health = self.store_health
        assert health is not None
        s = self.settings.idempotency
        client = budget_client(s.redis_url, redis_password(self.settings))
        interval = min(1.0, (s.unready_after_s or 5.0) / 5)
        try:
            await health.watch(client.ping, interval)
        finally:
            await client.aclose()

    async def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        d = self.settings.delivery
        next_commit = time.monotonic() + d.commit_interval_s
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                room = d.max_buffered_records - self._tracker.buffered
                fetch = asyncio.ensure_future(self._fetch(max(1, min(2000, room))))
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batch, epoch = fetch.result()
                if self._loading is not None and batch:
                    await asyncio.shield(self._loading)  # the marks of a new assignment
                if epoch != self._epoch:
                    # A rebalance ran between the fetch and now (aiokafka lets it start as
                    # soon as getmany returns). Every partition was revoked (eager protocol)
                    # and is read again from its committed offset: these would be duplicates.
                    continue
                for tp, records in batch.items():
                    for record in records:
                        self._intake(tp, record)
                self._backpressure()
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + d.commit_interval_s
                    await self._commit()
                    await self._observe_lag()
        finally:
            stop_wait.cancel()

    async def _fetch(self, max_records: int) -> tuple[dict[TopicPartition, list[Any]], int]:
        """One getmany, and the rebalance epoch at the instant it returned (no await in
        between, so no rebalance callback can run before the epoch is read)."""
        consumer = self._consumer
        assert consumer is not None
        batch = await consumer.getmany(timeout_ms=200, max_records=max_records)
        return batch, self._epoch

    # ------------------------------------------------------------------ intake

    def _intake(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        raw = record.value or b""
        self._tracker.add(tp, record.offset, len(raw))
        self._next_offset[tp] = record.offset + 1
        self.counts["consumed"] += 1
        self.metrics.child(self.metrics.consumed, str(tp.partition)).inc()
        marks = self._already_published.get(tp)
        if marks and record.offset in marks:
            # Read again (above the commit point) after its result reached the broker.
            marks.discard(record.offset)
            self._tracker.finish(tp, record.offset, len(raw))
            self.metrics.already_published.inc()
            return
        source = Source(tp.topic, tp.partition, record.offset, record.timestamp, record.key)
        received = utcnow()
        try:
            if record.value is None:
                raise validation.ValidationError("$", "the record has no value", "invalid_json")
            request = validation.decode(raw, max_bytes=self.settings.delivery.max_record_bytes)
            backend = self.backends.get(request.bot)
            validation.check_bot(request, backend.description.kind if backend is not None else None)
            self._key_check.check(record.key, request, tp.partition, record.offset)
        except validation.ValidationError as exc:
            result = Result(
                status=Status.REJECTED,
                source=source,
                worker_id=self.settings.worker_id,
                received_at=received,
                finished_at=utcnow(),
                error=ErrorInfo(ErrorKind.INVALID, exc.code, exc.reason, field=exc.field),
            )
            _fill_known_fields(result, raw)
            task = asyncio.create_task(self._publish(tp, record.offset, raw, result))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)
            return
        job = Job(
            request=request,
            source=source,
            raw=raw,
            received_at=received,
            tp=tp,
            assignment=self._assignment,
        )
        self.scheduler.submit(job)

    # ------------------------------------------------------------------ results

    async def _publish_job(self, job: Job, result: Result | None) -> None:
        if job.assignment != self._assignment:
            # Read under an assignment given up since (its revocation's drain is over):
            # the offset was forgotten, and the partition's owner now, maybe this worker
            # again, reads the record anew and answers it (from the store if this job
            # delivered it). Publishing here would give the record a second result.
            log.warning(
                "stale_result_dropped",
                partition=job.source.partition,
                offset=job.source.offset,
                status=result.status.value if result is not None else None,
            )
            return
        if result is None:  # already reported by an earlier read of this record
            self._tracker.finish(job.tp, job.source.offset, job.size)
            return
        await self._publish(job.tp, job.source.offset, job.raw, result)

    async def _publish(self, tp: Any, offset: int, raw: bytes, result: Result) -> None:
        """Hand the result (and dead letter) to the producer; the offset finishes on ack."""
        producer = self._producer
        assert producer is not None
        topics = self.settings.kafka.topics
        key = (result.request_id or f"{tp.topic}/{tp.partition}/{offset}").encode()
        acked: asyncio.Future[Any] = await producer.send(topics.results, result.encode(), key=key)
        if result.needs_dead_letter:
            letter = encode_dead_letter(raw, result)
            letter_acked = await producer.send(topics.dead_letters, letter, key=key)
            acked = asyncio.gather(acked, letter_acked)
        # (a lone result's future is used as it is: gather() per result cost 3% of the CPU)
        self._pending_acks.add(acked)
        acked.add_done_callback(lambda fut: self._acked(fut, tp, offset, raw, result))

    def _acked(
        self, fut: asyncio.Future[Any], tp: Any, offset: int, raw: bytes, result: Result
    ) -> None:
        self._pending_acks.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            # Not acknowledged: keep the offset open and publish again (never lose it).
            log.warning(
                "result_publish_failed",
                request_id=result.request_id,
                partition=tp.partition,
                offset=offset,
            )
            if self.state is not State.STOPPED:
                task = asyncio.ensure_future(self._republish(tp, offset, raw, result))
                self._publishing.add(task)
                task.add_done_callback(self._publishing.discard)
            return
        self._tracker.finish(tp, offset, len(raw))
        where = (tp.topic, tp.partition)
        self._to_mark.setdefault(where, []).append(offset)
        meta = fut.result()
        if isinstance(meta, list):  # the result and its dead letter: the result is first
            meta = meta[0]
        positions = self._positions
        positions[meta.partition] = max(positions.get(meta.partition, 0), meta.offset + 1)
        self._marks_waiting.set()
        self.counts["results"] += 1
        m = self.metrics
        backend, bot = result.backend or "unknown", result.bot or "unknown"
        m.child(m.results, backend, bot, result.status.value).inc()
        if result.needs_dead_letter:
            reason = result.error.kind.value if result.error else "unknown"
            m.dead_letters.labels(backend, bot, reason).inc()
        if result.status in (Status.DELIVERED, Status.DUPLICATE):
            born = result.source.timestamp_ms
            if born:
                m.child(m.end_to_end, backend).observe(max(0.0, time.time() - born / 1000))
        if result.status is not Status.DELIVERED:
            log.info(
                "request_finished",
                status=result.status.value,
                request_id=result.request_id,
                destination=result.destination,
                partition=tp.partition,
                offset=offset,
                error=result.error.as_dict() if result.error else None,
            )
        for hook in self._result_hooks:
            hook(result)

    async def _republish(self, tp: Any, offset: int, raw: bytes, result: Result) -> None:
        await asyncio.sleep(1.0)
        await self._publish(tp, offset, raw, result)

    # ------------------------------------------------------------------ published marks

    async def _mark_loop(self) -> None:
        """Mark acknowledged results in the store as they come: the window in which a
        crash leaves a published result unmarked is one store round trip, not a commit
        interval. A failed write keeps its marks and is tried again after a pause that
        doubles up to 5 s (a store outage costs one warning per pause, not a flood)."""
        pause = 0.5
        while True:
            await self._marks_waiting.wait()
            self._marks_waiting.clear()
            if await self._write_marks():
                pause = 0.5
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                self._marks_waiting.set()

    async def _write_marks(self) -> bool:
        async with self._marks_lock:
            if not self._to_mark and not self._positions:
                return True
            batch, self._to_mark = self._to_mark, {}
            positions, self._positions = self._positions, {}
            consumer = self._consumer
            owned = consumer.assignment() if consumer is not None else set()
            try:
                await self.pipeline.store.mark_published(
                    batch,
                    self.settings.idempotency.ttl_s,
                    {(tp.topic, tp.partition): positions for tp in owned},
                )
            except Exception as exc:
                log.warning(
                    "published_marks_failed",
                    error=type(exc).__name__,
                    records=sum(map(len, batch.values())),
                )
                for partition, offsets in batch.items():
                    self._to_mark.setdefault(partition, []).extend(offsets)
                for results_partition, offset in positions.items():
                    merged = max(self._positions.get(results_partition, 0), offset)
                    self._positions[results_partition] = merged
                return False
            return True

    async def _load_published(self, assigned: set[TopicPartition]) -> None:
        """Learn which records of the assigned partitions already have a result: the marks
        in the store, plus the results an owner that died published but had not marked
        (read from the results topic, from the positions the store keeps to its end).
        Then leave the results topic's current end as the starting point for our own
        successor. Bounded in time; on an error the records stay unknown, and a re-read
        one gets its result again (README, "Exactly one result per record")."""
        store = self.pipeline.store
        ttl = self.settings.idempotency.ttl_s
        tps = sorted(assigned, key=lambda tp: (tp.topic, tp.partition))
        if not tps:
            return
        try:
            async with asyncio.timeout(self.settings.idempotency.redis_timeout_s):
                states = await asyncio.gather(
                    *(store.published((tp.topic, tp.partition)) for tp in tps)
                )
        except Exception as exc:
            log.warning("published_marks_unavailable", error=type(exc).__name__)
            return
        for tp, state in zip(tps, states, strict=True):
            if state.offsets:
                self._already_published[tp] = set(state.offsets)
        try:
            async with asyncio.timeout(RESULTS_SCAN_TIMEOUT_S):
                found, ends = await self._scan_results(tps, states)
        except Exception as exc:
            log.warning("results_scan_failed", error=type(exc).__name__)
            return
        for tp, offsets in found.items():
            self._already_published.setdefault(tp, set()).update(offsets)
            self.metrics.unmarked_results_found.inc(len(offsets))
        try:
            await store.mark_published(
                {(tp.topic, tp.partition): found.get(tp, set()) for tp in tps},
                ttl,
                {(tp.topic, tp.partition): ends for tp in tps},
            )
        except Exception as exc:  # the next owner scans from the older positions
            log.warning("published_positions_failed", error=type(exc).__name__)

    async def _results_reader(self) -> AIOKafkaConsumer:
        """A consumer outside the group for reading the results topic, started on first
        use and kept: a new one costs a bootstrap and a metadata round at every
        assignment, which a takeover would wait for."""
        if self._scanner is None:
            scanner = AIOKafkaConsumer(
                **kafka_options(self.settings.kafka),
                group_id=None,
                enable_auto_commit=False,
                max_partition_fetch_bytes=self.settings.kafka.max_partition_fetch_bytes,
            )
            await scanner.start()
            self._scanner = scanner
        return self._scanner

    async def _scan_results(
        self, tps: list[TopicPartition], states: list[Published]
    ) -> tuple[dict[TopicPartition, set[int]], dict[int, int]]:
        """Read the results topic from the earliest kept position to its end; return the
        offsets of the assigned partitions found there, and the end offsets."""
        producer = self._producer
        assert producer is not None
        topic = self.settings.kafka.topics.results
        partitions = sorted(await producer.partitions_for(topic))
        # The reader asks, not the group's consumer: this runs inside its rebalance.
        scanner = await self._results_reader()
        end_offsets = await scanner.end_offsets([TopicPartition(topic, p) for p in partitions])
        ends = {tp.partition: offset for tp, offset in end_offsets.items()}
        start: dict[int, int] = {}
        for state in states:
            for p, offset in state.positions.items():
                if offset < ends.get(p, 0):
                    start[p] = min(start.get(p, offset), offset)
        found: dict[TopicPartition, set[int]] = {}
        if not start:
            return found, ends
        wanted = {(tp.topic, tp.partition): tp for tp in tps}
        try:
            left = {TopicPartition(topic, p) for p in start}
            scanner.assign(sorted(left, key=lambda tp: tp.partition))
            for tp in left:
                scanner.seek(tp, start[tp.partition])
            scanned = 0
            while left:
                batch = await scanner.getmany(*left, timeout_ms=200)
                for records in batch.values():
                    scanned += len(records)
                    for record in records:
                        source = _result_source(record.value)
                        if source is not None and source[:2] in wanted:
                            found.setdefault(wanted[source[:2]], set()).add(source[2])
                for tp in list(left):
                    if await scanner.position(tp) >= ends[tp.partition]:
                        left.discard(tp)
        finally:
            scanner.unsubscribe()  # (drops the manual assignment too)
        log.info(
            "results_scanned",
            results=scanned,
            found=sum(len(v) for v in found.values()),
            partitions=sorted(tp.partition for tp in tps),
        )
        return found, ends

    # ------------------------------------------------------------------ commits

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        assert consumer is not None
        assigned: set[object] = set(consumer.assignment())
        if only is not None:
            assigned &= set(only)
        offsets = self._tracker.to_commit(assigned)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit_failed", error=type(exc).__name__)
            return
        self._tracker.committed(offsets)
        # Marks below a committed offset are never needed again (never re-read).
        below: dict[Partition, int] = {}
        for tp, offset in offsets.items():
            assert isinstance(tp, TopicPartition)
            below[(tp.topic, tp.partition)] = offset
            pending = self._to_mark.get((tp.topic, tp.partition))
            if pending:
                pending[:] = [o for o in pending if o >= offset]
        try:
            await self.pipeline.store.forget_published(below)
        except Exception as exc:  # never stops the worker: the next commit trims them
            log.warning("published_marks_trim_failed", error=type(exc).__name__)

    async def _observe_lag(self) -> None:
        """Lag = the partition's high watermark minus the commit point (or, where nothing
        is held, the fetch position): what a new owner would still have to process."""
        consumer = self._consumer
        assert consumer is not None
        m = self.metrics
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue  # nothing fetched yet: unknown, not zero
            state = self._tracker.partitions.get(tp)
            point = state.commit_point() if state is not None else None
            if point is None:
                try:
                    point = await consumer.position(tp)
                except KafkaError:
                    continue
            m.lag.labels(str(tp.partition)).set(max(0, high - point))
        m.buffered.set(self._tracker.buffered)
        m.buffered_bytes.set(self._tracker.buffered_bytes)
        waiting, behind_limits = self.scheduler.waiting()
        for reason in WAIT_REASONS:
            m.jobs_waiting.labels(reason).set(waiting.get(reason, 0))
        m.rate_limited_backlog.set(behind_limits)

    # ------------------------------------------------------------------ backpressure

    def _backpressure(self) -> None:
        """Bound what is held in memory and share it fairly: each partition that still has
        records to read may hold an equal share of the bound, is paused at it and resumed
        below ``resume_ratio`` of it; at the bound everything pauses (``flow.plan``). The
        loop keeps calling ``getmany`` while paused, so the group never sees a stalled
        member."""
        consumer = self._consumer
        assert consumer is not None
        t = self._tracker
        held: dict[TopicPartition, flow.Held] = {}
        for tp in consumer.assignment():
            state = t.partitions.get(tp)
            records, size = (state.buffered, state.buffered_bytes) if state else (0, 0)
            held[tp] = flow.Held(records, size, self._backlog(tp))
        decided = flow.plan(held, self._paused, self._bound)
        if decided.pause:
            consumer.pause(*decided.pause)
            self._paused.update(decided.pause)
        if decided.resume:
            consumer.resume(*decided.resume)
            self._paused.difference_update(decided.resume)
        self.metrics.paused.set(len(self._paused))
        self.metrics.buffered.set(t.buffered)

    def _backlog(self, tp: TopicPartition) -> int | None:
        """Records on the broker past the last one read (None until both are known)."""
        read = self._next_offset.get(tp)
        high = self._consumer.highwater(tp) if self._consumer is not None else None
        if read is None or not isinstance(high, int):
            return None
        return max(0, high - read)

    # ------------------------------------------------------------------ rebalance

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._epoch += 1
        self._assignment += 1
        self._paused &= assigned  # a fresh assignment starts unpaused (aiokafka resets it)
        self.scheduler.forget_revoked(assigned)
        if self._consumer is not None:
            topic = self.settings.kafka.topics.requests
            total = self._consumer.partitions_for_topic(topic) or ()
            self.pipeline.limiter.set_share(len(assigned), len(total))
        # aiokafka may fetch for the new assignment while this runs: the loop waits for
        # the marks before it takes any record in (no await before this line).
        loading = self._loading = asyncio.get_running_loop().create_future()
        try:
            await self._load_published(assigned)
        finally:
            loading.set_result(None)
            if self._loading is loading:
                self._loading = None
        self.joined = True
        if self.state is State.RUNNING:
            self.metrics.ready.set(1)
            self.became_ready.set()
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            already_published=sum(len(self._already_published.get(tp, ())) for tp in assigned),
        )

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._epoch += 1
        if not revoked:
            return
        began = time.monotonic()
        grace = self.settings.delivery.drain_grace_s
        finished, _ = await self.scheduler.drain(revoked, grace)
        await self._flush()
        await self._write_marks()  # before the next owner loads them
        await self._commit(only=revoked)
        left = self._tracker.forget(set(revoked))  # unfinished: the next owner sends them
        self._assignment += 1  # what is still running of them publishes nothing
        self._paused -= revoked
        for tp in revoked:
            self._next_offset.pop(tp, None)
            self._already_published.pop(tp, None)
        for tp in revoked:
            with contextlib.suppress(KeyError):  # no lag sample was taken yet
                self.metrics.lag.remove(str(tp.partition))
        took = time.monotonic() - began
        log.info(
            "partitions_revoked",
            partitions=sorted(tp.partition for tp in revoked),
            finished=finished,
            left_to_next_owner=left,
            took_s=round(took, 3),
        )
        if took * 1000 > self._rebalance_timeout_ms:
            # The group may have handed these partitions on while they drained: a result
            # published after that can be a record's second one.
            log.warning(
                "revocation_overran",
                took_s=round(took, 3),
                rebalance_timeout_ms=self._rebalance_timeout_ms,
            )

    async def _flush(self) -> None:
        if self._publishing:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)
        if self._producer is not None:
            await self._producer.flush()
        if self._pending_acks:  # let every ack callback run (it finishes the offset)
            await asyncio.gather(*list(self._pending_acks), return_exceptions=True)

    # ------------------------------------------------------------------ shutdown

    async def _stop_consumer(self, consumer: AIOKafkaConsumer) -> None:
        """Leave the group, so the partitions move at once; but never wait on a join.

        ``AIOKafkaConsumer.stop`` first lets a JoinGroup in flight finish, and a broker may
        hold that answer for as long as the group's rebalance takes (23 s on Tansu with the
        default timeouts): SIGTERM and Ctrl-C then seemed ignored. A member holding no
        partitions has nothing to commit and nothing to hand over, so when the stop has not
        finished within a moment, its connections are closed: the pending JoinGroup fails
        and the coordinator, already closing, ends instead of retrying.
        """
        stopping = asyncio.ensure_future(consumer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.5)
        if not done and not consumer.assignment():
            log.info("join_abandoned", group=self.settings.kafka.group_id)
            # aiokafka reports the failed JoinGroup as an error: here it is the intent.
            coordinator_log = logging.getLogger("aiokafka.consumer.group_coordinator")
            coordinator_log.addFilter(_drop_all)
            try:
                await consumer._client.close()
                await stopping
            finally:
                coordinator_log.removeFilter(_drop_all)
        await stopping

    async def _shutdown(self, store: IdempotencyStore, transport: Transport) -> None:
        consumer, producer = self._consumer, self._producer
        self.state = State.DRAINING
        self.metrics.ready.set(0)
        finished = left = 0
        try:
            if consumer is not None and consumer.assignment():
                assigned = set(consumer.assignment())
                consumer.pause(*assigned)
                finished, left = await self.scheduler.drain(
                    assigned, self.settings.delivery.drain_grace_s
                )
                await self._flush()
                await self._write_marks()
                await self._commit()
                left = self._tracker.buffered
        finally:
            await self.scheduler.close()
            await self.pipeline.limiter.aclose()
            if self._probe is not None:
                self._probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._probe
            if self._marker is not None:
                self._marker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._marker
            await self.pipeline.aclose()
            if consumer is not None:
                await self._stop_consumer(consumer)
            if self._scanner is not None:
                await self._scanner.stop()
            if producer is not None:
                await producer.stop()
            if isinstance(transport, AiohttpTransport):  # a mock has nothing to close
                await transport.aclose()
            await store.aclose()
            if self.health is not None:
                await self.health.stop()
            self.state = State.STOPPED
            log.info(
                "worker_stopped",
                consumed=self.counts["consumed"],
                results=self.counts["results"],
                finished_while_draining=finished,
                left_to_next_owner=left,
            )


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def _fill_known_fields(result: Result, raw: bytes) -> None:
    """A rejected record still reports what could be read of it (request id, bot…)."""
    try:
        data = orjson.loads(raw)
    except Exception:
        return
    if not isinstance(data, dict):
        return
    for name in ("request_id", "idempotency_key", "backend", "bot", "operation"):
        value = data.get(name)
        if isinstance(value, str) and len(value) <= 256:
            setattr(result, name, value)
    if result.idempotency_key is None:
        result.idempotency_key = result.request_id


def _result_source(value: bytes | None) -> tuple[str, int, int] | None:
    """The requests-topic coordinates a published result names, if it names them."""
    try:
        source = orjson.loads(value or b"null")["source"]
        return str(source["topic"]), int(source["partition"]), int(source["offset"])
    except Exception:
        return None
