"""Alert lifecycle by key: one card per subject, updated in place, replaced while queued,
recalled on request (issue 13, item 2).

A producer names what a message is about with ``subject_key`` (an alert fingerprint), never
the platform's message id: it cannot know that id before the first result, and a storm
is exactly when it cannot wait for it. cardq keeps the mapping instead:

* the first request for a subject sends a card; the platform's message id is remembered
  in the idempotency store (memory or Redis, so every worker of a pool finds it) under
  ``destination + subject_key`` for ``idempotency.subject_ttl_s`` (≤ 14 days, the
  platform's card update window);
* a later request for the subject updates that card where the backend can
  (:data:`UPDATABLE`: Feishu IM ``PATCH``); where it cannot (a webhook returns no id,
  MindOffice documents no update) it sends a new card. A card the platform no longer lets
  us update (recalled, deleted, older than 14 days) is replaced by a new one;
* a newer state queued behind an older one of the same subject replaces it before it is
  sent (``supersede.py``, used by the scheduler's lanes): in a storm a group sees
  the latest state sooner, and the platform is asked for one send instead of many;
* ``operation: recall`` deletes the card where the platform allows it.

Requests of one subject share one destination and so one lane, whose FIFO order is what
makes "latest" well defined without any clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
import structlog

from .errors import Rejected, Unavailable
from .models import Delivery, SendRequest

if TYPE_CHECKING:
    from .backends.base import Backend
    from .idempotency import IdempotencyStore

log = structlog.get_logger("cardq.lifecycle")

#: Backends that can change a card they sent, by message id.
UPDATABLE = frozenset({"feishu_message"})

#: Why a backend has no ``recall``: the ``rejected`` result says so, naming ``operation``.
NO_RECALL: Mapping[str, str] = {
    "feishu_webhook": "a custom bot webhook returns no message id and has no delete API; "
    "send a later state with the same subject_key instead",
    "mindoffice_group": "MindOffice documents no recall or delete endpoint for robot "
    "messages; send a later state with the same subject_key instead",
    "feishu_ephemeral": "ephemeral cards are deleted by message id: use operation delete "
    "with the message_id of the send's result",
}

#: The platform answers for a card that can no longer be updated: recalled (230011), too
#: old (230031, past 14 days), deleted (230110). The subject gets a new card instead.
CARD_GONE = frozenset({230011, 230031, 230110})

#: Operations a ``subject_key`` may come with.
SUBJECT_OPERATIONS = frozenset({"send", "recall"})


def subject_store_key(request: SendRequest) -> str:
    """Per backend, bot and destination: the same fingerprint in two chats is two cards.
    A JSON pair, so no receiver id and key can together spell another pair's key."""
    return orjson.dumps([request.destination, request.subject_key]).decode()


def subject_problem(request: SendRequest) -> tuple[str, str] | None:
    """``(field, reason)`` when ``subject_key`` and ``operation`` do not go together."""
    if request.operation == "recall" and request.subject_key is None:
        return "subject_key", "required for operation recall (it names the card to recall)"
    if request.subject_key is not None and request.operation not in SUBJECT_OPERATIONS:
        return "subject_key", f"only used with operation send or recall, not {request.operation}"
    return None


class Lifecycle:
    """Sends a subject's states through a backend: send, update in place, or delete."""

    def __init__(self, store: IdempotencyStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s

    async def send(self, backend: Backend, request: SendRequest) -> Delivery:
        if request.subject_key is None:
            return await backend.send(request)
        key = subject_store_key(request)
        if request.operation == "recall":
            return await self._recall(backend, request, key)
        if request.backend not in UPDATABLE:
            return await backend.send(request)  # nothing to update later: nothing to keep
        if request.msg_type == "interactive":
            updated = await self._update(backend, request, key)
            if updated is not None:
                # Not remembered again: the 14-day window runs from the card's send.
                return updated
        delivery = await backend.send(request)  # a new card, or not a card at all
        if delivery.message_id is not None:
            await self._remember(key, delivery.message_id)
        return delivery

    async def _update(self, backend: Backend, request: SendRequest, key: str) -> Delivery | None:
        """The subject's card updated, or ``None`` when a new one must be sent."""
        message_id = await self._lookup(key)
        if message_id is None:
            return None
        update = dataclasses.replace(request, operation="update", target={"message_id": message_id})
        try:
            return await backend.send(update)
        except Rejected as exc:
            if exc.platform_code not in CARD_GONE:
                raise
            log.info("subject_card_gone", destination=request.destination, code=exc.platform_code)
        await self._forget(key)
        return None

    async def _recall(self, backend: Backend, request: SendRequest, key: str) -> Delivery:
        message_id = await self._lookup(key)
        if message_id is None:
            raise Rejected(
                "subject_key: no card is remembered for it here (never sent, already "
                "recalled, or older than idempotency.subject_ttl_s)",
                code="subject_unknown",
            )
        target = {"message_id": message_id}
        delivery = await backend.send(dataclasses.replace(request, target=target))
        await self._forget(key)
        return delivery

    async def _lookup(self, key: str) -> str | None:
        try:
            return await self._store.subject(key)
        except Exception as exc:
            # Without the mapping a second card could be sent: retry, as for a claim.
            raise Unavailable(f"idempotency store: {type(exc).__name__}") from exc

    async def _remember(self, key: str, message_id: str) -> None:
        try:
            await self._store.remember_subject(key, message_id, self._ttl_s)
        except Exception as exc:  # delivered all the same; the next state sends a new card
            log.warning("subject_not_remembered", error=type(exc).__name__)

    async def _forget(self, key: str) -> None:
        try:
            await self._store.forget_subject(key)
        except Exception as exc:
            log.warning("subject_not_forgotten", error=type(exc).__name__)


__all__ = [
    "CARD_GONE",
    "NO_RECALL",
    "UPDATABLE",
    "Lifecycle",
    "subject_problem",
    "subject_store_key",
]
