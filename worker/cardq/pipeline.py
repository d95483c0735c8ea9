"""One request's life: look up → wait for budget → claim → send → classify → retry or finish.

The pipeline decides retries; backends only classify (``backends/base.py``). Every path
ends in exactly one :class:`Result` (built by ``outcome.py``). The phases are visible on
the :class:`Job` (``job.py``).

Why the key is claimed *after* the rate budget is granted, and only as a short lease: a
claim held while a lane waits for budget (seconds to minutes for a flooded chat) would
block the key for a whole claim timeout if its worker died, and every busy destination
of that worker would stall that long after a takeover. Here a claim exists only while a
send can actually happen, its lease (``idempotency.claim_timeout_s``) is renewed while
the send is on the wire, and a dead worker's keys are free one lease after it died.

Why a throttle answer is not an attempt: it says "not now", not "this request is bad";
the platform's limit is a reason to wait, so only ``max_age_s`` and ``expires_at`` bound
how long a throttled request keeps waiting. ``attempts`` in the result still counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVar

import structlog

from .backends.base import Backend
from .config import DeliverySettings, IdempotencySettings
from .errors import AuthExpired, DeliveryError, Internal, Throttled
from .gate import Gate
from .idempotency import Claim, ClaimState, DoneRecord, IdempotencyStore
from .job import Job, Phase, StoreUnavailable, source_id
from .lifecycle import Lifecycle
from .metrics import Metrics
from .models import ErrorInfo, ErrorKind, Result, Status, utcnow
from .outcome import backoff, build_result, error_info, expiry, time_limit, where
from .ratelimit import Limiter, RateScope
from .secrets import scrub

log = structlog.get_logger("cardq.pipeline")

T = TypeVar("T")


class Pipeline:
    def __init__(
        self,
        *,
        backends: Mapping[str, Backend],
        limiter: Limiter,
        store: IdempotencyStore,
        delivery: DeliverySettings,
        idempotency: IdempotencySettings,
        metrics: Metrics,
        worker_id: str,
    ) -> None:
        self.backends = backends
        self.limiter = limiter
        self.store = store
        self.delivery = delivery
        self.idem = idempotency
        self.metrics = metrics
        self.worker_id = worker_id
        self._wire = Gate(delivery.max_in_flight)
        #: Requests with a ``subject_key`` update or recall the card sent for it.
        self.lifecycle = Lifecycle(store, idempotency.subject_ttl_s)
        self._in_flight = 0
        #: Told of every failed attempt, retried or not (the console's throttled and
        #: failing destinations, with the platform's codes).
        self.on_attempt_failed: Callable[[Job, DeliveryError], None] | None = None
        #: Claims held by sends about to go or on the wire (key -> owner): their leases
        #: are renewed together by one task while any is held.
        self._held: dict[str, str] = {}
        self._keeper: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    # ------------------------------------------------------------------ results

    def result(
        self,
        job: Job,
        status: Status,
        *,
        error: ErrorInfo | None = None,
        message_id: str | None = None,
        original_request_id: str | None = None,
    ) -> Result:
        return build_result(
            job,
            status,
            worker_id=self.worker_id,
            error=error,
            message_id=message_id,
            original_request_id=original_request_id,
        )

    # ------------------------------------------------------------------ the state machine

    async def run(self, job: Job) -> Result | None:
        """The request's one result. (``None`` would mean "finish without a result"; the
        consumer skips re-read records whose result is on the broker before they get here.)"""
        deadline = time_limit(job, self.delivery)
        job.phase = Phase.WAITING
        expired = self._expired(job, deadline)
        if expired is not None:
            return expired
        # A delivered key answers at once, without waiting for budget (a takeover re-reads
        # many of them); a key held elsewhere is waited for.
        answer = await self._settle(job, deadline)
        if answer is not None:
            return answer
        result = await self._deliver(job, deadline)
        job.phase = Phase.DONE
        return result

    def _answer(self, job: Job, record: DoneRecord) -> Result:
        """The result for a key already delivered: the same record read again reports its
        delivery; any other record (a resend of the same request id, or another request
        with the same key) is a ``duplicate`` naming the first delivery."""
        req = job.request
        self.metrics.idempotency_hits.labels(req.backend, req.bot).inc()
        same_record = record.source == source_id(job.source)
        if record.source is None:  # written by a version that did not record the source
            same_record = record.request_id == req.request_id
        if same_record:
            return self.result(job, Status.DELIVERED, message_id=record.message_id)
        return self.result(
            job,
            Status.DUPLICATE,
            message_id=record.message_id,
            original_request_id=record.request_id,
        )

    async def _settle(self, job: Job, deadline: float, found: Claim | None = None) -> Result | None:
        """Wait until the key is free to claim (``None``). A delivered key answers with a
        result; a key held by another worker is waited for (its lease runs out if that
        worker died); an unreachable store is waited for until the deadline."""
        key = job.request.idempotency_key
        pause = 0.05
        while True:
            if found is None:
                found = await self._patiently(
                    lambda: self.store.lookup(key), deadline=deadline, job=job
                )
            if found.state is ClaimState.NEW:
                return None
            if found.state is ClaimState.DONE:
                assert found.record is not None
                return self._answer(job, found.record)
            if time.monotonic() + pause > deadline:
                return self.result(
                    job,
                    Status.FAILED,
                    error=ErrorInfo(
                        ErrorKind.EXPIRED,
                        "claim_wait_timeout",
                        "the idempotency key stayed claimed by another worker until the "
                        "request's deadline",
                    ),
                )
            with job.waiting("claim"):
                await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            found = None

    async def _deliver(self, job: Job, deadline: float) -> Result:
        req = job.request
        key = req.idempotency_key
        owner = f"{self.worker_id}/{req.request_id}"
        backend = self.backends[req.bot]
        scopes = backend.rate_scopes(req)
        m = self.metrics
        auth_retried = False
        store_pause = 0.1
        while True:
            job.phase = Phase.WAITING
            with job.waiting("rate_limit"):
                waited = await self.limiter.acquire(scopes)
            m.child(m.rate_wait, req.backend).observe(waited)
            # From here on the slot is ours: every path below gives it back exactly once.
            if dropped(job):  # a drain's cancellation was swallowed on its way
                self._unused_slot(scopes)
                raise asyncio.CancelledError
            expired = self._expired(job, deadline)
            if expired is not None:
                self._unused_slot(scopes)
                return expired
            try:
                claim = await self.store.claim(key, owner, self.idem.claim_timeout_s)
            except asyncio.CancelledError:  # revoked meanwhile: the slot was not used
                self._unused_slot(scopes)
                raise
            except Exception as exc:
                self._unused_slot(scopes)
                if time.monotonic() + store_pause > deadline:
                    raise StoreUnavailable(f"idempotency store: {type(exc).__name__}") from exc
                log.warning("idempotency_store_error", error=type(exc).__name__, **where(job))
                with job.waiting("store"):
                    await asyncio.sleep(store_pause)
                store_pause = min(store_pause * 2, 5.0)
                claim = None  # _settle looks again, riding out the outage
            if dropped(job) and claim is not None and claim.state is ClaimState.NEW:
                self._unused_slot(scopes)
                await asyncio.shield(self._release(key, owner))
                raise asyncio.CancelledError
            if claim is None or claim.state is not ClaimState.NEW:
                if claim is not None:
                    self._unused_slot(scopes)
                answer = await self._settle(job, deadline, claim)
                if answer is not None:
                    return answer
                continue
            self._hold(key, owner)
            outcome: Result | DeliveryError | None = None
            try:
                outcome = await self._send(job, backend, scopes)
                if isinstance(outcome, Result):
                    await self._finish(job, outcome)
                    return outcome
                await self._release(key, owner)
            except asyncio.CancelledError:
                if not isinstance(outcome, Result):  # never free a key that was delivered
                    await asyncio.shield(self._release(key, owner))
                raise
            finally:
                self._held.pop(key, None)
            error = outcome
            job.phase = Phase.WAITING
            if self.on_attempt_failed is not None:
                self.on_attempt_failed(job, error)
            if not error.retryable:
                return self.result(job, Status.FAILED, error=error_info(error))
            if isinstance(error, AuthExpired) and not auth_retried:
                auth_retried = True  # the backend dropped the token: fetch and retry at once
                m.retries.labels(req.backend, req.bot, "auth").inc()
                continue
            throttled = isinstance(error, Throttled)
            if throttled:
                job.throttles += 1
                tries = job.throttles
            else:
                tries = job.attempts - job.throttles
                if tries >= self.delivery.max_attempts:
                    return self.result(
                        job, Status.FAILED, error=error_info(error, "retries_exhausted", final=True)
                    )
            delay = backoff(self.delivery, tries, error.retry_after)
            if isinstance(error, Throttled):
                chosen = [s for s in scopes if (s.kind == "app") == (error.scope == "app")]
                self.limiter.cool_down(chosen or scopes, delay)
            if time.monotonic() + delay > deadline:
                expires = req.expires_at
                if expires is not None and expires <= utcnow() + timedelta(seconds=delay):
                    # The producer's own deadline comes first: the request expired.
                    return self.result(
                        job, Status.EXPIRED, error=error_info(error, "expired", final=True)
                    )
                return self.result(
                    job, Status.FAILED, error=error_info(error, "max_age_exceeded", final=True)
                )
            m.retries.labels(req.backend, req.bot, error.kind.value).inc()
            log.info(
                "send_retry",
                **where(job),
                attempt=job.attempts,
                reason=error.kind.value,
                platform_code=error.platform_code,
                delay_s=round(delay, 3),
            )
            with job.waiting("rate_limit" if throttled else "retry"):
                await asyncio.sleep(delay)

    async def _send(
        self, job: Job, backend: Backend, scopes: tuple[RateScope, ...]
    ) -> Result | DeliveryError:
        """One HTTP attempt under the in-flight bound; releases the rate slot at its end."""
        req = job.request
        m = self.metrics
        job.attempts += 1
        if job.first_attempt_at is None:
            job.first_attempt_at = utcnow()
        try:
            async with self._wire:
                job.phase = Phase.SENDING
                self._in_flight += 1
                m.in_flight.set(self._in_flight)
                started = time.perf_counter()
                try:
                    delivery = await self.lifecycle.send(backend, req)
                finally:
                    self._in_flight -= 1
                    m.in_flight.set(self._in_flight)
                    m.child(m.send_duration, req.backend).observe(time.perf_counter() - started)
            return self.result(job, Status.DELIVERED, message_id=delivery.message_id)
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # a bug: not retried (outcome.py), and the lane goes on
            log.exception("backend_bug", **where(job), backend=req.backend)
            return Internal(scrub(f"internal error ({type(exc).__name__}: {exc})"))
        finally:
            # The send is counted at its end: see ratelimit.py for why.
            self.limiter.release(scopes)

    async def _finish(self, job: Job, result: Result) -> None:
        """Record the delivery under the key (and which record made it)."""
        req = job.request
        record = DoneRecord(
            req.request_id,
            result.message_id,
            result.finished_at.isoformat(),
            source=source_id(job.source),
        )
        try:
            await self._patiently(
                lambda: self.store.finish(req.idempotency_key, record, self.idem.ttl_s),
                deadline=time.monotonic() + self.idem.claim_timeout_s,
            )
        except StoreUnavailable:
            # Delivered all the same: say so. Only a re-read of this record could now
            # send it again (the platform's own key still drops that where it has one).
            log.error("idempotency_record_lost", **where(job))

    def _unused_slot(self, scopes: tuple[RateScope, ...]) -> None:
        """A granted slot that sends nothing (expired meanwhile, the key delivered or
        taken meanwhile, a store error): given back uncounted."""
        self.limiter.abandon(scopes)

    def _hold(self, key: str, owner: str) -> None:
        self._held[key] = owner
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_leases(), name="claim-leases")

    async def _keep_leases(self) -> None:
        """Renew every held claim each third of a lease, in one store call, while any is
        held. A failed renewal is retried at the next turn; a lease that still runs out
        (a store outage longer than two thirds of it) frees the key for another worker,
        which is what a dead worker needs too."""
        lease = self.idem.claim_timeout_s
        while self._held:
            await asyncio.sleep(lease / 3)
            held = dict(self._held)
            if not held:
                break
            try:
                await self.store.extend(held, lease)
            except Exception as exc:
                log.warning("idempotency_extend_failed", error=type(exc).__name__, keys=len(held))

    # ------------------------------------------------------------------ helpers

    async def _patiently(
        self, call: Callable[[], Awaitable[T]], *, deadline: float, job: Job | None = None
    ) -> T:
        """Call the idempotency store, riding out an outage until ``deadline``: without
        the store a request cannot be sent safely, so it waits rather than fails."""
        pause = 0.1
        while True:
            try:
                return await call()
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(f"idempotency store: {type(exc).__name__}") from exc
                log.warning("idempotency_store_error", error=type(exc).__name__, retry_in=pause)
                with job.waiting("store") if job is not None else contextlib.nullcontext():
                    await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _release(self, key: str, owner: str) -> None:
        """Best effort: an unreleased claim expires by itself one lease
        (``claim_timeout_s``) later, so a store error here never blocks a key for long."""
        try:
            await self.store.release(key, owner)
        except Exception as exc:
            log.warning("idempotency_release_failed", error=type(exc).__name__)

    def _expired(self, job: Job, deadline: float) -> Result | None:
        if time.monotonic() < deadline:
            return None
        status, error = expiry(job, self.delivery)
        return self.result(job, status, error=error)


def dropped(job: Job) -> bool:
    """``job.dropped`` read afresh (set by a drain while the pipeline awaited)."""
    return job.dropped
