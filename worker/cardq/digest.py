"""Digest under backlog: while a destination is behind, its queued alerts go as one card.

In an incident a group can be owed hundreds of cards while its budget sends five a
second, or a share of its app's fifty: paced one by one, the last alert of the storm
arrives minutes late, each card stale on arrival. When a lane is *behind*, the requests
queued in it that share a producer's ``digest_key`` are sent as one summary card instead
(``digest_cards.py``: each request's title and link), and each of them still gets its own
result, naming the digest's message id.

Behind means: the lane holds more requests than its destination's own budget sends
within ``digest.after_s``, or its oldest request has already waited that long (the
budget it shares with the rest of its app is the slow one). Low-priority requests are
tested against the shorter ``digest.low_after_s``, so they are the first to be merged;
urgent requests are never merged. A lane that is not behind is not touched: the test is
made when a request reaches the head of its lane, and costs nothing when the request
has no ``digest_key``.

Idempotency: a digest card is sent under a key of its own, derived from the keys of the
requests it carries (the same backlog read again after a crash makes the same key, so
the card is not sent twice), and once it is delivered every carried request's own key is
recorded as delivered by it. A request whose key is already known to the store (sent,
or being sent elsewhere) is not merged: it takes the ordinary path, which answers it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from .backends import REGISTRY
from .digest_cards import build_cards
from .errors import ValidationError
from .idempotency import ClaimState, DoneRecord
from .job import Job, source_id
from .lifecycle import subject_store_key
from .models import Result, SendRequest, Status, utcnow
from .pipeline import Pipeline
from .ratelimit import RateScope
from .settings import DigestSettings

log = structlog.get_logger("cardq.digest")


@dataclass(slots=True)
class DigestSend:
    """One digest card to send (``job``) and the requests it carries."""

    job: Job
    members: list[Job]
    key: str


def capacity(scopes: Sequence[RateScope], within_s: float) -> float:
    """How many sends the destination's own windows admit within ``within_s`` (the
    app's budget is shared with other lanes, so it promises this lane nothing)."""
    sends = math.inf
    for scope in scopes:
        if scope.kind == "app":
            continue
        for window in scope.windows:
            if window.limit > 0:
                sends = min(sends, window.limit * max(1.0, within_s / window.seconds))
    return sends


def mergeable(request: SendRequest) -> bool:
    """A plain send with a digest key (a reply, an update or a recall is about one
    message, never a line of a summary). A state of a subject may be merged while the
    subject has no card of its own yet (:meth:`Digests.plan` asks the store): in a storm
    that is most of them, and the digest line shows the state as well as a card would."""
    return (
        request.digest_key is not None
        and request.operation == "send"
        and request.msg_type is not None
        and request.priority != "urgent"
    )


def eligible(
    queued: int, oldest_wait_s: float, room: float, low_room: float, settings: DigestSettings
) -> frozenset[str]:
    """The priorities whose requests may be merged now (empty: the lane is not behind)."""
    behind = set()
    if queued > low_room or oldest_wait_s > settings.low_after_s:
        behind.add("low")
    if queued > room or oldest_wait_s > settings.after_s:
        behind.add("normal")
    return frozenset(behind)


def select(head: Job, queued: Sequence[Job], allowed: frozenset[str], most: int) -> list[Job]:
    """``head`` and the queued requests that may join its digest, in lane order."""
    req = head.request
    if not mergeable(req) or req.priority not in allowed:
        return [head]
    members = [head]
    for job in queued:
        if len(members) >= most:
            break
        other = job.request
        if (
            other.digest_key == req.digest_key
            and job.tp == head.tp
            and other.priority in allowed
            and mergeable(other)
        ):
            members.append(job)
    return members


def digest_key_for(members: Sequence[Job]) -> str:
    """The card's idempotency key: the same requests make the same key."""
    keys = "\n".join(sorted(job.request.idempotency_key for job in members))
    return "digest-" + hashlib.sha256(keys.encode()).hexdigest()[:32]


class Digests:
    """What the scheduler asks when a request reaches the head of its lane."""

    def __init__(self, pipeline: Pipeline, settings: DigestSettings) -> None:
        self._pipeline = pipeline
        self._settings = settings

    def take(self, head: Job, queued: deque[Job]) -> list[Job]:
        """``[head]``, or ``head`` and the queued requests to merge with it, which are
        removed from ``queued``."""
        req = head.request
        if req.digest_key is None or not mergeable(req):
            return [head]
        s = self._settings
        scopes = self._pipeline.backends[req.bot].rate_scopes(req)
        waited = (utcnow() - head.received_at).total_seconds()
        allowed = eligible(
            1 + len(queued), waited, capacity(scopes, s.after_s), capacity(scopes, s.low_after_s), s
        )
        members = select(head, queued, allowed, s.max_items)
        if len(members) > 1:
            taken = {id(job) for job in members}
            kept = [job for job in queued if id(job) not in taken]
            queued.clear()
            queued.extend(kept)
        return members

    async def plan(self, members: list[Job]) -> tuple[list[Job], list[DigestSend]]:
        """(requests to send one by one, digest cards to send). A request the store
        already knows, or one past its ``expires_at``, goes alone (the ordinary path
        answers it at once)."""
        store = self._pipeline.store
        try:
            found = await asyncio.gather(
                *(store.lookup(j.request.idempotency_key) for j in members)
            )
            # A subject whose card exists is updated in place (lifecycle.py), not digested:
            # the digest would leave its card showing an older state.
            cards = await asyncio.gather(*(self._card_of(j.request) for j in members))
        except Exception as exc:  # the ordinary path rides out a store outage
            log.warning("digest_store_error", error=type(exc).__name__)
            return members, []
        now = utcnow()
        alone: list[Job] = []
        merged: list[Job] = []
        for job, claim, card_id in zip(members, found, cards, strict=True):
            expired = job.request.expires_at is not None and job.request.expires_at <= now
            fresh = claim.state is ClaimState.NEW and card_id is None
            (merged if fresh and not expired else alone).append(job)
        if len(merged) < 2:
            return members, []
        head = merged[0].request
        assert head.digest_key is not None
        sends: list[DigestSend] = []
        start = 0
        for card in build_cards(head.backend, head.digest_key, [j.request for j in merged]):
            carried = merged[start : start + card.size]
            start += card.size
            request = dataclasses.replace(
                head,
                request_id=digest_key_for(carried),
                idempotency_key=digest_key_for(carried),
                msg_type=card.msg_type,
                content=card.content,
                expires_at=min(
                    (j.request.expires_at for j in carried if j.request.expires_at), default=None
                ),
                created_at=None,
                trace=None,
                digest_key=None,
                subject_key=None,  # the digest is no subject's card: nothing updates it
            )
            try:
                REGISTRY[head.backend].check(request)
            except ValidationError as exc:  # a bug in the card builder: send them one by one
                log.error("digest_card_invalid", field=exc.field, reason=exc.reason)
                alone.extend(carried)
                continue
            first = carried[0]
            job = Job(
                request=request,
                source=first.source,
                raw=b"",
                received_at=min(j.received_at for j in carried),
                tp=first.tp,
                assignment=first.assignment,
            )
            sends.append(DigestSend(job, carried, head.digest_key))
        return alone, sends

    async def _card_of(self, request: SendRequest) -> str | None:
        if request.subject_key is None:
            return None
        return await self._pipeline.store.subject(subject_store_key(request))

    async def results(self, send: DigestSend, result: Result) -> list[tuple[Job, Result]]:
        """Each carried request's own result; a delivered digest is recorded under every
        carried request's key (a re-read request is then answered from the store)."""
        card = send.job
        delivered = result.status in (Status.DELIVERED, Status.DUPLICATE)
        if delivered:
            await self._record(send, result)
            m = self._pipeline.metrics
            m.child(m.digest_cards, card.request.backend, card.request.bot).inc()
            m.child(m.digest_merged, card.request.backend, card.request.bot).inc(len(send.members))
        answers = []
        for member in send.members:
            member.attempts = card.attempts
            member.throttles = card.throttles
            member.first_attempt_at = card.first_attempt_at
            own = self._pipeline.result(
                member,
                Status.DELIVERED if delivered else result.status,
                error=result.error,
                message_id=result.message_id,
            )
            own.digest = {
                "key": send.key,
                "message_id": result.message_id,
                "size": len(send.members),
            }
            answers.append((member, own))
        log.info(
            "digest_sent" if delivered else "digest_failed",
            destination=card.request.destination,
            digest_key=send.key,
            size=len(send.members),
            message_id=result.message_id,
        )
        return answers

    async def _record(self, send: DigestSend, result: Result) -> None:
        pipeline = self._pipeline
        finished = result.finished_at.isoformat()
        records = [
            (
                member.request.idempotency_key,
                DoneRecord(
                    member.request.request_id,
                    result.message_id,
                    finished,
                    source=source_id(member.source),
                ),
            )
            for member in send.members
        ]
        outcomes = await asyncio.gather(
            *(pipeline.store.finish(key, rec, pipeline.idem.ttl_s) for key, rec in records),
            return_exceptions=True,
        )
        lost = sum(1 for outcome in outcomes if isinstance(outcome, BaseException))
        if lost:
            # Delivered all the same; only a re-read could now merge them into a new card.
            log.error("digest_records_lost", digest_key=send.key, lost=lost)
