"""A newer state of a subject replaces an older one still queued in its lane (issue 13,
item 2; ``lifecycle.py`` has the rest of the alert lifecycle).

Apart from ``lifecycle.py`` because it builds results through the pipeline, which uses
``lifecycle.py``: one module each way keeps the imports free of cycles.
"""

from __future__ import annotations

from .job import Job
from .models import Result, Status
from .pipeline import Pipeline


class Supersessions:
    """Per lane: the newest queued *send* of each subject, so the next one replaces it.

    Queued jobs are replaced, and the lane's head only while it waits for its first rate
    budget (:meth:`replaces_head`): once a send was attempted the platform may have taken
    it (an answer lost after delivery), so it runs to its end. A recall ends the chain: a
    send queued after a recall must not replace the send before it, or the recall would
    find no card to delete.
    """

    __slots__ = ("_latest", "_replaced")

    def __init__(self) -> None:
        self._latest: dict[str, Job] = {}
        self._replaced: dict[Job, str] = {}  # replaced job -> the newer request's id

    def submitted(self, job: Job) -> None:
        """Note a job queued in the lane; the older queued send of its subject is replaced."""
        subject = job.request.subject_key
        if subject is None:
            return
        if job.request.operation != "send":
            self._latest.pop(subject, None)
            return
        older = self._latest.get(subject)
        self._latest[subject] = job
        if older is not None:
            self._replaced[older] = job.request.request_id

    def replaces_head(self, head: Job, newer: Job) -> bool:
        """Whether ``newer`` (just queued) replaces the lane's head, which has not been
        sent: same subject, both sends, no attempt yet, waiting for its rate budget (a
        wait the pipeline can leave at any moment without holding a slot or a claim)."""
        subject = newer.request.subject_key
        if (
            subject is None
            or head.request.subject_key != subject
            or head.request.operation != "send"
            or newer.request.operation != "send"
            or head.attempts
            or head.waiting_for != "rate_limit"
        ):
            return False
        self._replaced[head] = newer.request.request_id
        return True

    def take(self, job: Job) -> str | None:
        """The job leaves the queue: the request id that replaced it, or ``None`` (then it
        runs, and nothing may replace it any more)."""
        subject = job.request.subject_key
        if subject is None:
            return None
        if self._latest.get(subject) is job:
            del self._latest[subject]
        return self._replaced.pop(job, None)

    def __len__(self) -> int:
        """Entries held: every one belongs to a job still in the lane (queued or running),
        because the lane calls :meth:`take` for each job that leaves it, whichever way it leaves
        (sent, superseded, merged into a digest, dropped by a drain)."""
        return len(self._latest) + len(self._replaced)


def superseded(pipeline: Pipeline, job: Job, newer: str) -> Result:
    """The result of a state that was never sent because ``newer`` replaced it."""
    result = pipeline.result(job, Status.SUPERSEDED)
    result.superseded_by = newer
    return result
