"""Lanes: one FIFO per destination key; lanes run concurrently.

Records for one destination (``backend/bot/target``) are sent in the order they were
read; records for different destinations never wait for each other. A lane that waits for
its rate budget or a retry delay holds nothing another lane needs, which is what keeps a
quiet group's alert from queueing behind a flooded one (no head-of-line blocking).

Two exceptions to first-in, first-out, both for incident storms: an urgent request is taken
before the routine ones queued in its lane (``priority.py`` orders lanes for a shared app
budget), and a lane that is behind its budget sends the queued requests that share a
``digest_key`` as one card (``digest.py``).

The scheduler knows nothing about Kafka: it takes :class:`Job`\\ s and hands each finished
one to ``publish``. A lane exists only while it has work. Nor does it know the console:
an operator's pauses reach it through the :class:`LaneGate` it owns (``console/pauses.py``
implements it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from . import priority
from .digest import Digests
from .job import Job, Phase, StoreUnavailable
from .models import ErrorInfo, ErrorKind, Result, Status
from .pipeline import Pipeline
from .secrets import scrub
from .supersede import Supersessions, superseded

log = structlog.get_logger("cardq.scheduler")

#: Hands a finished job's result to the producer; ``None``: finish it without a result.
Publish = Callable[[Job, Result | None], Awaitable[None]]


class Hold(Protocol):
    """Why a lane waits (the console shows it)."""

    def as_dict(self) -> dict[str, object]: ...


class LaneGate(Protocol):
    """What may hold a lane between two requests (an operator's pause)."""

    def holds(self, destination: str, bot: str) -> Hold | None:
        """The hold that keeps this lane waiting, if any; checked before each request."""

    async def changed(self) -> None:
        """Return at the next change anywhere (the lane checks again)."""


class _Cancelled:
    """What a lane's job ends with when only it was cancelled: its partition was revoked,
    or it stepped back for an urgent request (:func:`_make_way`)."""


_CANCELLED = _Cancelled()


class _Lane:
    __slots__ = (
        "current",
        "held",
        "jobs",
        "stepped_back",
        "subjects",
        "task",
        "urgent",
        "yielding",
    )

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        #: How many urgent jobs were queued (a hint: see :func:`_take_next`).
        self.urgent = 0
        #: The running job that may step back for an urgent one (not a digest card), and
        #: the one that did (see :func:`_make_way`).
        self.yielding: Job | None = None
        self.stepped_back: Job | None = None
        self.current: Job | None = None
        self.task: asyncio.Task[None] | None = None
        self.held: Hold | None = None
        #: Queued states by ``subject_key``: a newer one replaces an older one unsent.
        self.subjects = Supersessions()


@dataclass(slots=True)
class LaneView:
    """What the console shows of one lane (read-only)."""

    destination: str
    queued: int
    current: Job | None
    oldest: datetime | None  # when the longest-waiting job of the lane was read
    held: Hold | None


class Scheduler:
    def __init__(self, pipeline: Pipeline, publish: Publish) -> None:
        self._pipeline = pipeline
        self._publish = publish
        self._lanes: dict[str, _Lane] = {}
        self._revoked: set[object] = set()
        #: Destinations and bots an operator paused (the console): their lanes wait.
        self.pauses: LaneGate | None = None
        #: Merges the queued requests of a lane that is behind (``None``: never).
        self.digests: Digests | None = None

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    @property
    def subjects_tracked(self) -> int:
        """Supersession entries over all lanes: bounded by the jobs the lanes hold."""
        return sum(len(lane.subjects) for lane in self._lanes.values())

    def views(self) -> list[LaneView]:
        views = []
        for key, lane in self._lanes.items():
            first = lane.current or (lane.jobs[0] if lane.jobs else None)
            oldest = first.received_at if first is not None else None
            views.append(LaneView(key, len(lane.jobs), lane.current, oldest, lane.held))
        return views

    def waiting(self) -> tuple[dict[str, int], int]:
        """Lane heads that wait, by reason, and the records held in lanes whose head
        waits for a rate limit (sampled for the metrics, not kept on the hot path)."""
        by_reason: dict[str, int] = {}
        behind_limits = 0
        for lane in self._lanes.values():
            current = lane.current
            if current is None or current.waiting_for is None:
                continue
            by_reason[current.waiting_for] = by_reason.get(current.waiting_for, 0) + 1
            if current.waiting_for == "rate_limit":
                behind_limits += 1 + len(lane.jobs)
        return by_reason, behind_limits

    def submit(self, job: Job) -> None:
        key = job.request.destination
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.jobs.append(job)
            lane.subjects.submitted(job)
            lane.task = asyncio.create_task(self._run(key, lane), name=f"lane:{key}")
            return
        lane.jobs.append(job)
        lane.subjects.submitted(job)
        head = lane.current
        if head is not None and head.task is not None and lane.subjects.replaces_head(head, job):
            head.task.cancel()  # it ends in _run with its ``superseded`` result
        if job.request.priority == "urgent":
            lane.urgent += 1
            _make_way(lane)

    async def _run(self, key: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                if self.pauses is not None:
                    lane.held = self.pauses.holds(key, lane.jobs[0].request.bot)
                    if lane.held is not None:
                        await self.pauses.changed()
                        continue  # check again (a drain may also have emptied the lane)
                job = _take_next(lane)
                if job.tp in self._revoked:
                    continue  # the partition has a new owner: it will send this record
                if await self._finish_if_superseded(lane, job):
                    continue  # a newer state of its subject replaced it: not sent
                if self.digests is not None and job.request.digest_key is not None:
                    group = self.digests.take(job, lane.jobs)
                    # A member a newer queued state replaced ends superseded, not as a line.
                    group = [
                        m
                        for m in group
                        if m is job or not await self._finish_if_superseded(lane, m)
                    ]
                    if len(group) > 1:
                        await self._run_digest(lane, group)
                        continue
                lane.yielding = job
                result = await self._execute(lane, job)
                lane.yielding = None
                if isinstance(result, _Cancelled) and await self._finish_if_superseded(lane, job):
                    if lane.stepped_back is job:  # replaced while it waited for its budget
                        lane.stepped_back = None
                    continue
                if lane.stepped_back is job:
                    lane.stepped_back = None
                    if isinstance(result, _Cancelled):  # it made way for an urgent one
                        lane.jobs.appendleft(job)  # and goes right after it
                        continue
                if not isinstance(result, _Cancelled):
                    lane.subjects.take(job)  # replaced too late (it was sent): forget it
                    await self._finish(lane, job, result)
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _execute(self, lane: _Lane, job: Job) -> Result | _Cancelled | None:
        """Run one job's pipeline as the lane's current job; ``_CANCELLED`` when only the
        job was cancelled (its partition was revoked: the next owner sends it)."""
        lane.current = job
        context = priority.context_for(job.request.priority)
        job.task = asyncio.create_task(self._pipeline.run(job), context=context)
        try:
            return await job.task
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            lane.current = None
            return _CANCELLED
        except Exception as exc:
            # The store stayed down past the deadline, or a bug: the request still
            # ends with a result and the lane goes on (never a stuck partition).
            return self._failed(job, exc)

    async def _finish_if_superseded(self, lane: _Lane, job: Job) -> bool:
        """Finish ``job`` as ``superseded`` when a newer state of its subject replaced it."""
        newer = lane.subjects.take(job)
        if newer is None:
            return False
        await self._finish(lane, job, superseded(self._pipeline, job, newer))
        return True

    async def _finish(self, lane: _Lane, job: Job, result: Result | None) -> None:
        job.phase = Phase.DONE
        await self._publish(job, result)
        _done(lane, job)

    async def _run_digest(self, lane: _Lane, group: list[Job]) -> None:
        """Send merged requests as digest cards (``digest.py``): each card is the lane's
        current job while it runs (a drain sees it like any other); each carried request
        is published with its own result once its card has one."""
        assert self.digests is not None
        alone, sends = await self.digests.plan(group)
        for job in alone:
            if job.tp not in self._revoked:
                result = await self._execute_yielding(lane, job)
                if not isinstance(result, _Cancelled):
                    await self._finish(lane, job, result)
        for send in sends:
            if send.job.tp in self._revoked:
                continue
            card = await self._execute_yielding(lane, send.job)
            if isinstance(card, _Cancelled):
                continue
            assert card is not None  # only a re-read record gets None, and a card is none
            send.job.phase = Phase.DONE
            for member, result in await self.digests.results(send, card):
                member.phase = Phase.DONE
                await self._publish(member, result)
                member.phase = Phase.PUBLISHED
            _done(lane, send.job)

    async def _execute_yielding(self, lane: _Lane, job: Job) -> Result | _Cancelled | None:
        """Run a job of a digest's plan, which steps back for an urgent request while it
        waits for its budget (as the lane's own jobs do, :func:`_make_way`): the queued
        urgent jobs run first, then this one again. Why: a digest card waits for the same
        app budget as everything else, and the lane's urgent alert used to wait behind it."""
        while True:
            lane.yielding = job
            result = await self._execute(lane, job)
            lane.yielding = None
            if not (isinstance(result, _Cancelled) and lane.stepped_back is job):
                return result
            lane.stepped_back = None
            while (urgent := _take_urgent(lane)) is not None:
                if urgent.tp in self._revoked or await self._finish_if_superseded(lane, urgent):
                    continue
                done = await self._execute(lane, urgent)
                if isinstance(done, _Cancelled):
                    await self._finish_if_superseded(lane, urgent)
                else:
                    await self._finish(lane, urgent, done)

    def _failed(self, job: Job, exc: Exception) -> Result:
        """The store down past the request's deadline is ``unavailable``; anything else is
        a bug, ``internal`` (not retried: ``outcome.py``), with its traceback logged once."""
        message = scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, StoreUnavailable):
            log.error("store_unavailable", request_id=job.request.request_id, error=message)
            error = ErrorInfo(ErrorKind.UNAVAILABLE, "store_unavailable", message)
        else:
            log.exception("pipeline_error", request_id=job.request.request_id)
            error = ErrorInfo(ErrorKind.INTERNAL, "internal_error", message, retryable=False)
        return self._pipeline.result(job, Status.FAILED, error=error)

    async def drain(self, tps: Collection[object], grace_s: float) -> tuple[int, int]:
        """Stop the work of revoked partitions. Queued and waiting jobs are dropped at once
        (their claims released); sends on the wire get up to ``grace_s`` to finish and have
        their results handed to the producer. Returns (finished, left to the next owner)."""
        self._revoked.update(tps)
        queued = 0
        for lane in self._lanes.values():
            kept = deque(job for job in lane.jobs if job.tp not in tps)
            queued += len(lane.jobs) - len(kept)
            for job in lane.jobs:
                if job.tp in tps:
                    lane.subjects.take(job)  # the next owner replaces its states
            lane.jobs = kept
        current = [
            lane.current
            for lane in self._lanes.values()
            if lane.current is not None and lane.current.tp in tps
        ]
        waiting: list[asyncio.Future[Any]] = []
        finishing: list[Job] = []
        for job in current:
            # A pipeline task that already returned (a duplicate answered from the store,
            # an expired request) has a result the lane is about to publish: wait for it.
            returned = job.task is not None and job.task.done() and not job.task.cancelled()
            if job.phase in (Phase.SENDING, Phase.DONE) or returned:
                job.published = job.published or asyncio.Event()
                waiting.append(asyncio.ensure_future(job.published.wait()))
                finishing.append(job)
            elif job.phase is not Phase.PUBLISHED and job.task is not None:
                job.dropped = True
                job.task.cancel()
                # Waited for too: a cancellation swallowed on its way (redis-py mid-command)
                # would let the task go on, so the drain is over only once it has ended.
                waiting.append(job.task)
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=grace_s)
            for fut in pending:
                fut.cancel()
            for job in finishing:
                if job.phase is not Phase.PUBLISHED and job.task is not None:
                    job.task.cancel()
        finished = sum(1 for job in current if job.phase is Phase.PUBLISHED)
        return finished, len(current) - finished + queued

    def forget_revoked(self, tps: Collection[object]) -> None:
        """After the partitions are committed and given up, a re-assignment starts clean."""
        self._revoked.difference_update(tps)

    async def close(self) -> None:
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _take_next(lane: _Lane) -> Job:
    """The lane's first urgent job, else its head: an urgent alert does not wait behind
    the routine ones queued for its chat (order holds within each priority)."""
    return _take_urgent(lane) or lane.jobs.popleft()


def _take_urgent(lane: _Lane) -> Job | None:
    """The lane's first urgent job, taken off the queue. ``urgent`` only says whether to
    look; a drain that dropped jobs may have left it too high."""
    if lane.urgent > 0:
        for i, job in enumerate(lane.jobs):
            if job.request.priority == "urgent":
                lane.urgent -= 1
                del lane.jobs[i]
                return job
        lane.urgent = 0
    return None


def _make_way(lane: _Lane) -> None:
    """An urgent request queued behind a routine one that is only waiting for its budget:
    the routine one steps back into the queue (waiting, it holds no claim and no slot),
    so the urgent one goes first instead of inheriting that wait."""
    job = lane.yielding
    if (
        job is not None
        and job is lane.current
        and job.request.priority != "urgent"
        and job.phase is Phase.WAITING
        and job.waiting_for == "rate_limit"
        and job.task is not None
    ):
        lane.stepped_back = job
        job.task.cancel()


def _done(lane: _Lane, job: Job) -> None:
    job.phase = Phase.PUBLISHED
    if job.published is not None:
        job.published.set()
    lane.current = None
