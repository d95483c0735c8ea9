"""How a request ends: its :class:`Result`, its deadline, and how long a retry waits.

Pure functions of the job and the settings, so the pipeline's loop (``pipeline.py``)
reads as the sequence of steps and these rules are unit-testable on their own.

Why a bug is not retried: an exception that is no :class:`DeliveryError` (a KeyError, a
TypeError in a backend) says nothing about the platform, and sending again runs the same
code into the same bug. It used to be retried as ``unavailable`` until the request's
deadline, which hid the bug behind retries for minutes; it now ends the request at once,
``failed`` with error kind ``internal``, with a dead letter and one logged traceback.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

from .config import DeliverySettings
from .errors import DeliveryError, ErrorKind
from .job import Job
from .models import ErrorInfo, Result, Status, utcnow


def build_result(
    job: Job,
    status: Status,
    *,
    worker_id: str,
    error: ErrorInfo | None = None,
    message_id: str | None = None,
    original_request_id: str | None = None,
) -> Result:
    req = job.request
    return Result(
        status=status,
        source=job.source,
        worker_id=worker_id,
        received_at=job.received_at,
        finished_at=utcnow(),
        request_id=req.request_id,
        idempotency_key=req.idempotency_key,
        backend=req.backend,
        bot=req.bot,
        operation=req.operation,
        destination=req.destination,
        message_id=message_id,
        attempts=job.attempts,
        error=error,
        first_attempt_at=job.first_attempt_at,
        original_request_id=original_request_id,
        trace=req.trace,
        version=req.result_version,
        subject_key=req.subject_key,
    )


def error_info(error: DeliveryError, code: str | None = None, *, final: bool = False) -> ErrorInfo:
    message = error.message
    if final:
        message = f"{message}; gave up ({code})"
    return ErrorInfo(
        kind=error.kind,
        code=code or error.code,
        message=message,
        platform_code=error.platform_code,
        platform_subcode=error.platform_subcode,
        platform_msg=error.platform_msg,
        retryable=error.retryable,
    )


def backoff(delivery: DeliverySettings, attempt: int, retry_after: float | None) -> float:
    """Full jitter (AWS architecture blog), or the platform's reset time plus a little."""
    if retry_after is not None:
        return retry_after + random.uniform(0, 0.1 * max(retry_after, 0.1))
    ceiling = min(delivery.backoff_cap_s, delivery.backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)


def time_limit(job: Job, delivery: DeliverySettings) -> float:
    """The monotonic time after which the request is no longer sent."""
    req = job.request
    now_wall = utcnow()
    born = req.created_at or job.received_at
    if job.source.timestamp_ms and req.created_at is None:
        born = datetime.fromtimestamp(job.source.timestamp_ms / 1000, tz=now_wall.tzinfo)
    limit = born + timedelta(seconds=delivery.max_age_s)
    if req.expires_at is not None and req.expires_at < limit:
        limit = req.expires_at
    return time.monotonic() + (limit - now_wall).total_seconds()


def expiry(job: Job, delivery: DeliverySettings) -> tuple[Status, ErrorInfo]:
    """Why a request past its deadline ends: its own ``expires_at``, or the maximum age."""
    req = job.request
    if req.expires_at is not None and req.expires_at <= utcnow():
        return Status.EXPIRED, ErrorInfo(
            ErrorKind.EXPIRED, "expired", "expires_at passed before delivery"
        )
    return Status.FAILED, ErrorInfo(
        ErrorKind.EXPIRED,
        "max_age_exceeded",
        f"older than delivery.max_age_s ({delivery.max_age_s:g} s) before delivery",
    )


def where(job: Job) -> dict[str, object]:
    """What every log line about a request carries, so one grep follows it."""
    return {
        "request_id": job.request.request_id,
        "destination": job.request.destination,
        "partition": job.source.partition,
        "offset": job.source.offset,
    }
