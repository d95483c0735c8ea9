"""What went wrong lately, per destination and per request, for the console.

Fed from two places: every failed attempt (the pipeline's ``on_attempt_failed``, which
sees throttles and errors that a later retry may still recover from, with the platform's
codes) and every finished result (``Worker.on_result``: the requests that ended badly and
the dead letters). Everything is bounded: the most recently troubled destinations and the
latest failures are kept, older ones are forgotten.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DeliveryError, Throttled
from ..models import Result, Status

if TYPE_CHECKING:
    from ..job import Job


#: How long after its last problem a destination still shows as troubled.
RECENT_S = 300.0


@dataclass(slots=True)
class Trouble:
    """One destination's recent problems."""

    destination: str
    bot: str
    throttled: int = 0
    failed: int = 0
    last_at: float = 0.0
    last_kind: str = ""
    last_code: str = ""
    platform_code: int | None = None
    platform_msg: str | None = None
    delivered_since: int = 0  # deliveries after the last problem: it may have recovered

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "bot": self.bot,
            "state": "throttled" if self.last_kind == "throttled" else "failing",
            "throttled": self.throttled,
            "failed": self.failed,
            "last_kind": self.last_kind,
            "last_code": self.last_code,
            "platform_code": self.platform_code,
            "platform_msg": self.platform_msg,
            "seconds_ago": round(now - self.last_at, 1),
            "delivered_since": self.delivered_since,
        }


class Activity:
    def __init__(self, *, keep_failures: int = 50, keep_destinations: int = 500) -> None:
        self._troubles: OrderedDict[str, Trouble] = OrderedDict()
        self._keep_destinations = keep_destinations
        self._failures: deque[dict[str, Any]] = deque(maxlen=keep_failures)
        self.dead_letters: Counter[str] = Counter()
        self.results: Counter[str] = Counter()

    # ------------------------------------------------------------------ feeds

    def attempt_failed(self, job: Job, error: DeliveryError) -> None:
        req = job.request
        trouble = self._troubles.pop(req.destination, None) or Trouble(req.destination, req.bot)
        self._troubles[req.destination] = trouble  # most recent last
        if isinstance(error, Throttled):
            trouble.throttled += 1
        else:
            trouble.failed += 1
        trouble.last_at = time.time()
        trouble.last_kind = error.kind.value
        trouble.last_code = error.code
        trouble.platform_code = error.platform_code
        trouble.platform_msg = error.platform_msg
        trouble.delivered_since = 0
        while len(self._troubles) > self._keep_destinations:
            self._troubles.popitem(last=False)

    def finished(self, result: Result) -> None:
        self.results[result.status.value] += 1
        if result.status in (Status.DELIVERED, Status.DUPLICATE):
            trouble = self._troubles.get(result.destination or "")
            if trouble is not None:
                trouble.delivered_since += 1
            return
        error = result.error
        if result.needs_dead_letter:
            self.dead_letters[error.kind.value if error else "unknown"] += 1
        self._failures.append(
            {
                "at": result.finished_at.isoformat(),
                "request_id": result.request_id,
                "status": result.status.value,
                "destination": result.destination,
                "bot": result.bot,
                "attempts": result.attempts,
                "kind": error.kind.value if error else None,
                "code": error.code if error else None,
                "platform_code": error.platform_code if error else None,
                "message": error.message if error else None,
                "dead_letter": result.needs_dead_letter,
            }
        )

    # ------------------------------------------------------------------ views

    def troubled(self, now: float | None = None) -> list[dict[str, Any]]:
        """Destinations with a problem in the last :data:`RECENT_S`, latest first."""
        now = time.time() if now is None else now
        recent = [t for t in self._troubles.values() if now - t.last_at <= RECENT_S]
        return [t.as_dict(now) for t in reversed(recent)]

    def latest_failures(self) -> list[dict[str, Any]]:
        return list(reversed(self._failures))
