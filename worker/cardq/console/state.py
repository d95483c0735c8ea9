"""Gather the console's view of one pod from the parts that already hold it.

Nothing here is a second source of truth: lanes are read from the scheduler, budgets from
the rate limiter (any :class:`BudgetSource`), troubles and failures from :class:`Activity`,
pauses from :class:`Pauses`. A snapshot is built per request of the page, so a console
nobody looks at costs nothing.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..models import utcnow
from ..priority import PriorityLimiter
from .activity import Activity
from .pauses import Pauses
from .pool import PoolPauses

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import Result
    from ..pipeline import Pipeline
    from ..scheduler import LaneView, Scheduler


class WorkerHooks(Protocol):
    """What :meth:`Console.attach` reads of the worker: the worker imports the console, so
    the console names what it needs instead of importing the worker back."""

    @property
    def settings(self) -> Settings: ...

    def on_result(self, hook: Callable[[Result], None]) -> None: ...


class WorkerParts(Protocol):
    """The parts the worker built (``parts.Parts``) that the console reads and wires."""

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def pipeline(self) -> Pipeline: ...


#: Rows per table the state answers with by default (``?top=N`` changes it, up to 500).
TOP = 20


@runtime_checkable
class BudgetSource(Protocol):
    """A read-only view of rate budgets: ``{"reach": "pod"|"pool", "scopes": [{"key",
    "windows": [{"limit", "seconds", "used"}], "cooling_s", "fill"}]}``, busiest first.

    The in-process :class:`~cardq.ratelimit.RateLimiter` is one. A limiter that shares
    budgets through Redis plugs in by being one too, its snapshot saying ``"reach":
    "pool"`` (see :func:`budget_sources`); nothing in the console changes.
    """

    def snapshot(self) -> dict[str, Any]: ...


def budget_sources(limiter: object) -> tuple[BudgetSource | None, BudgetSource | None]:
    """(this pod's budgets, the pool's) as the pipeline's limiter can show them.

    A limiter that is a :class:`BudgetSource` answers for the reach its snapshot names; a
    pool limiter may also carry the pod's own budgets (the scopes it keeps local) as a
    ``local`` attribute that is a :class:`BudgetSource`. A limiter that is neither shows
    no budgets (the page says so) rather than failing.
    """
    if not isinstance(limiter, BudgetSource):
        return None, None
    if limiter.snapshot().get("reach") != "pool":
        return limiter, None
    local = getattr(limiter, "local", None)
    return (local if isinstance(local, BudgetSource) else None), limiter


@dataclass(kw_only=True, eq=False)
class Console:
    """One pod's console: where each part of the view is read from, and the action token."""

    worker_id: str
    bots: list[str]
    scheduler: Scheduler
    budgets: BudgetSource | None
    activity: Activity
    pauses: Pauses
    pool_pauses: PoolPauses | None = None
    pool_budgets: BudgetSource | None = None
    #: ``None``: actions are off.
    token: str | None = None

    @classmethod
    def attach(cls, worker: WorkerHooks, parts: WorkerParts) -> Console:
        """Wire a console into a worker and the parts its ``run`` built."""
        from ..config import resolve_secret

        s = worker.settings
        settings = s.observability.console
        activity = Activity()
        pauses = Pauses()
        parts.scheduler.pauses = pauses
        parts.pipeline.on_attempt_failed = activity.attempt_failed
        worker.on_result(activity.finished)
        token = None
        if settings.actions and settings.token is not None:
            token = resolve_secret(settings.token, "observability.console.token").reveal()
        pool = None
        idem = s.idempotency
        if idem.store == "redis":
            import redis.asyncio as aioredis

            password = (
                resolve_secret(idem.redis_password, "idempotency.redis_password").reveal()
                if idem.redis_password
                else None
            )
            client = aioredis.Redis.from_url(idem.redis_url, password=password)
            pool = PoolPauses(client, f"{idem.key_prefix}console:paused", pauses)
        limiter = parts.pipeline.limiter
        # The priority wrapper orders waiters and has no budgets to show: the budgets are
        # its inner limiter's (the process's or the pool's).
        if isinstance(limiter, PriorityLimiter):
            limiter = limiter.inner
        pod_budgets, pool_budgets = budget_sources(limiter)
        return cls(
            worker_id=s.worker_id,
            bots=sorted(s.bots),
            scheduler=parts.scheduler,
            budgets=pod_budgets,
            activity=activity,
            pauses=pauses,
            pool_pauses=pool,
            pool_budgets=pool_budgets,
            token=token,
        )

    # ------------------------------------------------------------------ the view

    def state(self, top: int = TOP) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "at": utcnow().isoformat(),
            "actions": self.token is not None,
            "pool": self.pool_pauses is not None,
            "bots": self.bots,
            "lanes": self._lanes(top),
            "budgets": {
                "pod": _top(self.budgets.snapshot(), top) if self.budgets else None,
                "pool": _top(self.pool_budgets.snapshot(), top) if self.pool_budgets else None,
            },
            "troubled": self.activity.troubled()[:top],
            "failures": self.activity.latest_failures()[:top],
            "dead_letters": dict(self.activity.dead_letters),
            "results": dict(self.activity.results),
            "pauses": [p.as_dict() for p in self.pauses.all()],
        }

    def _lanes(self, top: int) -> dict[str, Any]:
        now = time.time()
        views = self.scheduler.views()

        def waited(view: LaneView) -> float:
            return now - view.oldest.timestamp() if view.oldest is not None else 0.0

        # Paused lanes first (someone chose that), then the longest queues, then the oldest.
        shown = heapq.nlargest(top, views, key=lambda v: (v.held is not None, v.queued, waited(v)))
        rows = []
        for view in shown:
            current = view.current
            if view.held is not None:
                phase = "paused"
            elif current is not None:
                phase = current.phase.value
            else:
                phase = "queued"
            rows.append(
                {
                    "destination": view.destination,
                    "queued": view.queued,
                    "in_progress": current is not None,
                    "phase": phase,
                    "attempts": current.attempts if current is not None else 0,
                    "waiting_s": round(max(0.0, waited(view)), 1),
                    "paused": view.held.as_dict() if view.held is not None else None,
                }
            )
        return {
            "total": len(views),
            "queued": sum(v.queued for v in views),
            "in_progress": sum(1 for v in views if v.current is not None),
            "paused": sum(1 for v in views if v.held is not None),
            "top": rows,
        }


def _top(snapshot: dict[str, Any], top: int) -> dict[str, Any]:
    scopes = snapshot.get("scopes", [])
    return {**snapshot, "tracked": snapshot.get("tracked", len(scopes)), "scopes": scopes[:top]}
