"""A lane's supersession bookkeeping holds only jobs still in the lane: a job that leaves
it, whichever way (dropped by a drain, merged into a digest, sent), leaves no entry."""

from __future__ import annotations

import asyncio
from typing import Any

from cardq.digest import Digests
from cardq.job import Job
from cardq.models import Result, Status
from cardq.scheduler import Scheduler
from cardq.supersede import Supersessions
from tests import helpers
from tests.test_digest import SETTINGS, card_request, job_of, message_transport
from tests.test_pipeline import HeldLimiter, make_pipeline


def state(rid: str, subject: str, offset: int, tp: str = "t0", **extra: Any) -> Job:
    return job_of({**card_request(rid, **extra), "subject_key": subject}, offset, 30, tp)


async def test_a_drain_leaves_no_entry_for_the_jobs_it_drops() -> None:
    held = HeldLimiter()
    pipeline, _ = make_pipeline(message_transport(), limiter=held)
    published: list[tuple[Job, Result | None]] = []

    async def publish(job: Job, result: Result | None) -> None:
        published.append((job, result))

    scheduler = Scheduler(pipeline, publish)
    scheduler.submit(job_of(card_request("head", digest_key=None), 0))  # partition t0
    await asyncio.wait_for(held.asked.wait(), 2)  # the head waits for its budget
    for i, subject in enumerate(("fp-a", "fp-a", "fp-b"), 1):  # fp-a's first is replaced
        scheduler.submit(state(f"s{i}", subject, i, tp="t1", digest_key=None))
    assert scheduler.subjects_tracked == 3
    await scheduler.drain({"t1"}, grace_s=1.0)
    assert scheduler.subjects_tracked == 0 and scheduler.lanes == 1  # the head still waits
    held.open.set()
    await helpers.until(lambda: len(published) == 1, "the head's result", timeout=5)
    await scheduler.close()
    await pipeline.aclose()
    assert [j.request.request_id for j, _ in published] == ["head"]


async def test_jobs_merged_into_a_digest_or_sent_leave_no_entry() -> None:
    held = HeldLimiter()
    pipeline, _ = make_pipeline(message_transport(), limiter=held)
    tracked_at: dict[str, int] = {}
    done = asyncio.Event()

    async def publish(job: Job, result: Result | None) -> None:
        assert result is not None and result.status is Status.DELIVERED, result
        tracked_at[job.request.request_id] = scheduler.subjects_tracked
        if len(tracked_at) == 5:
            done.set()

    scheduler = Scheduler(pipeline, publish)
    scheduler.digests = Digests(pipeline, SETTINGS)
    scheduler.submit(job_of(card_request("head"), 0, age_s=30))
    await asyncio.wait_for(held.asked.wait(), 2)  # a backlog builds behind the head
    scheduler.submit(state("a", "fp-a", 1))
    scheduler.submit(state("b", "fp-b", 2))
    scheduler.submit(state("c", "fp-c", 3))
    scheduler.submit(state("alone", "fp-z", 4, digest_key=None))  # sent on its own, last
    held.open.set()
    await asyncio.wait_for(done.wait(), 5)
    await scheduler.close()
    await pipeline.aclose()
    # a, b and c went as one digest: when their results are out only fp-z is tracked
    assert tracked_at["a"] == tracked_at["b"] == tracked_at["c"] == 1, tracked_at
    assert tracked_at["alone"] == 0, tracked_at


def test_a_head_marked_replaced_is_forgotten_when_it_leaves() -> None:
    """A head replaced while it waits may still have been sent (the cancellation came too
    late): the lane takes it when it finishes either way, and nothing stays behind."""
    subjects = Supersessions()
    head, newer = state("h", "fp", 0), state("n", "fp", 1)
    subjects.submitted(head)
    assert subjects.take(head) is None  # it leaves the queue to run
    head.waiting_for = "rate_limit"
    subjects.submitted(newer)
    assert subjects.replaces_head(head, newer) and len(subjects) == 2
    assert subjects.take(head) == "n" and len(subjects) == 1
    assert subjects.take(newer) is None and len(subjects) == 0
