"""A record becomes a request, or a ``rejected`` result saying which field is wrong.

One decoding for everything that reads a request: the worker loop, ``cardq validate`` and
``cardq send`` (which check a file before producing it), so a request the tools accept is
one the worker accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import orjson

from . import validation
from .config import Settings
from .keycheck import KeyCheck
from .models import (
    RESULT_V2,
    ErrorInfo,
    ErrorKind,
    Result,
    SendRequest,
    Source,
    Status,
    utcnow,
)


def bot_backends(settings: Settings) -> dict[str, str]:
    """Each configured bot's backend: what a request's ``bot`` and ``backend`` must match."""
    return {name: bot.backend for name, bot in settings.bots.items()}


def parse(
    raw: bytes | None,
    *,
    bots: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
) -> SendRequest:
    """The request in ``raw``; raises :class:`validation.ValidationError` naming the field.
    ``bots`` (bot -> backend): also check the bot is configured for the request's backend."""
    if raw is None:
        raise validation.ValidationError("$", "the record has no value", "invalid_json")
    request = validation.decode(raw, max_bytes=max_bytes)
    if bots is not None:
        validation.check_bot(request, bots.get(request.bot))
    return request


def check(raw: bytes | None, settings: Settings | None) -> SendRequest:
    """The request as a worker with ``settings`` would read it (its bots, its record size
    limit); without settings, the contract alone (``cardq validate`` with no ``--config``)."""
    if settings is None:
        return parse(raw)
    return parse(raw, bots=bot_backends(settings), max_bytes=settings.delivery.max_record_bytes)


def rejection(
    source: Source,
    raw: bytes,
    error: validation.ValidationError,
    *,
    worker_id: str,
    received_at: datetime,
) -> Result:
    result = Result(
        status=Status.REJECTED,
        source=source,
        worker_id=worker_id,
        received_at=received_at,
        finished_at=utcnow(),
        error=ErrorInfo(ErrorKind.INVALID, error.code, error.reason, field=error.field),
    )
    _fill_known_fields(result, raw)
    return result


class Intake:
    """The worker's intake: parse against the configured bots, check the Kafka key."""

    def __init__(self, settings: Settings, key_check: KeyCheck) -> None:
        self._bots = bot_backends(settings)
        self._max_bytes = settings.delivery.max_record_bytes
        self._worker_id = settings.worker_id
        self._key_check = key_check

    def take(self, source: Source, value: bytes | None) -> SendRequest | Result:
        """The request, or the ``rejected`` result to publish for the record."""
        received = utcnow()
        try:
            request = parse(value, bots=self._bots, max_bytes=self._max_bytes)
        except validation.ValidationError as exc:
            return rejection(
                source, value or b"", exc, worker_id=self._worker_id, received_at=received
            )
        self._key_check.check(source.key, request, source.partition, source.offset)
        return request


def _fill_known_fields(result: Result, raw: bytes) -> None:
    """A rejected record still reports what could be read of it (request id, bot…)."""
    try:
        data = orjson.loads(raw)
    except Exception:
        return
    if not isinstance(data, dict):
        return
    for name in ("request_id", "idempotency_key", "backend", "bot", "operation"):
        value = data.get(name)
        if isinstance(value, str) and len(value) <= 256:
            setattr(result, name, value)
    if result.idempotency_key is None:
        result.idempotency_key = result.request_id
    subject = data.get("subject_key")
    if subject is not None or data.get("digest_key") is not None:
        result.version = RESULT_V2  # it opted in to v2 results, even if it is refused
        result.subject_key = subject if isinstance(subject, str) and len(subject) <= 256 else None
