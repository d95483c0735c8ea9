"""A delivery pipeline without a worker or a broker: backends in, results out.

:func:`build_pipeline` fills in what a test does not care about with the values that make
a test fast and deterministic: retries back off for milliseconds (not the production
seconds), the limiter has no safety margin, the store is in memory. :func:`job` wraps a
request as the consumer would after reading it at ``offset``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..backends.base import Backend
from ..config import DeliverySettings, IdempotencySettings
from ..idempotency import IdempotencyStore
from ..idempotency.memory import MemoryStore
from ..job import Job
from ..metrics import Metrics
from ..models import SendRequest, Source, utcnow
from ..pipeline import Pipeline
from ..ratelimit import Limiter, RateLimiter
from ..validation import from_dict

#: Retries a test can wait for: the production backoff (seconds) would only slow it down.
FAST_BACKOFF: Mapping[str, float] = {"backoff_base_s": 0.001, "backoff_cap_s": 0.01}


def build_pipeline(
    backends: Mapping[str, Backend],
    *,
    limiter: Limiter | None = None,
    store: IdempotencyStore | None = None,
    delivery: Mapping[str, Any] | DeliverySettings | None = None,
    idempotency: IdempotencySettings | None = None,
    metrics: Metrics | None = None,
    worker_id: str = "w",
) -> Pipeline:
    """``delivery`` as a mapping overrides single fields on top of :data:`FAST_BACKOFF`."""
    if not isinstance(delivery, DeliverySettings):
        delivery = DeliverySettings(**{**FAST_BACKOFF, **(delivery or {})})
    return Pipeline(
        backends=backends,
        limiter=limiter if limiter is not None else RateLimiter(margin=0.0),
        store=store if store is not None else MemoryStore(),
        delivery=delivery,
        idempotency=idempotency if idempotency is not None else IdempotencySettings(),
        metrics=metrics if metrics is not None else Metrics(),
        worker_id=worker_id,
    )


def job(request: SendRequest | Mapping[str, Any], offset: int = 0, *, topic: str = "t") -> Job:
    """A request as read from partition 0 of ``topic`` at ``offset`` (a dict is validated)."""
    if isinstance(request, SendRequest):
        return Job(request, Source(topic, 0, offset), b"{}", utcnow())
    return Job(from_dict(dict(request)), Source(topic, 0, offset), orjson.dumps(request), utcnow())
