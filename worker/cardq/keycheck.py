"""Records whose Kafka key is not their destination: counted always, logged now and then.

The destination key is what puts one destination on one partition, which keeps its order
and its rate limit exact without any coordination between pods. A producer that sends
without a key (or with a request id, a bot name…) scatters a destination over partitions:
nothing fails, sends merely overlap and a busy chat may see throttle answers. So the worker
still delivers such a record, but says so: in a metric, and in a warning at most once per
``every_s`` per reason, so that a producer sending thousands of them cannot flood the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from .metrics import Metrics
from .models import SendRequest

log = structlog.get_logger("cardq.worker")

NO_KEY, WRONG_KEY = "no_key", "wrong_key"


class KeyCheck:
    def __init__(
        self,
        metrics: Metrics,
        *,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._every_s = every_s
        self._clock = clock
        self._next_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def check(self, key: bytes | None, request: SendRequest, partition: int, offset: int) -> None:
        destination = request.destination
        if key is not None and key == destination.encode():
            return
        reason = NO_KEY if key is None else WRONG_KEY
        m = self._metrics
        m.child(m.key_mismatches, request.backend, request.bot, reason).inc()
        now = self._clock()
        if now < self._next_log.get(reason, 0.0):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._next_log[reason] = now + self._every_s
        log.warning(
            "request_key_not_destination",
            reason=reason,
            key=None if key is None else key[:200].decode("utf-8", "replace"),
            destination=destination,
            request_id=request.request_id,
            partition=partition,
            offset=offset,
            suppressed_since_last=self._suppressed.pop(reason, 0),
            hint="produce with the destination as the Kafka key (README, 'The contract')",
        )
