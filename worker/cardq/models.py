"""The contract's types: send request, result and dead letter (``schemas/*.v1.json``, and
``*.v2.json`` for the results of requests that use the alert lifecycle or digest fields).

These are plain frozen dataclasses so that the hot path pays for no validation framework:
``validation.py`` builds a :class:`SendRequest` from bytes exactly once, and everything
after it trusts the type. Results and dead letters are encoded with orjson in one call.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import ErrorKind as ErrorKind  # the results' error kinds

CONTRACT_VERSION = 1
#: Results (and dead letters) of requests that carry ``subject_key`` or ``digest_key``: v2
#: adds a status and fields that ``result.v1.json`` forbids, so a v1 consumer never sees
#: them unless its producers opted in by sending the new fields.
RESULT_V2 = 2

#: A request's ``priority``, most urgent first (the order lanes take the app budget in).
PRIORITIES = ("urgent", "normal", "low")


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"
    EXPIRED = "expired"
    #: A newer state with the same ``subject_key`` replaced it before it was sent (v2 only).
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: ErrorKind
    code: str
    message: str
    field: str | None = None
    platform_code: int | None = None
    platform_subcode: int | None = None
    platform_msg: str | None = None
    retryable: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "code": self.code,
            "message": self.message,
            "field": self.field,
            "platform_code": self.platform_code,
            "platform_subcode": self.platform_subcode,
            "platform_msg": self.platform_msg,
            "retryable": self.retryable,
        }


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request was read from: enough for an operator to find the original record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class SendRequest:
    request_id: str
    idempotency_key: str
    backend: str
    bot: str
    operation: str
    target: dict[str, Any]
    msg_type: str | None
    content: Any  # decoded JSON (object, array or string payload as the platform needs)
    expires_at: datetime | None = None
    created_at: datetime | None = None
    trace: dict[str, str] | None = None
    # The destination key (backend/bot/target) is derived once by validation.
    destination: str = ""
    #: The producer's own key for what the message is about (an alert fingerprint): a
    #: later request with the same key updates or recalls the card (``lifecycle.py``).
    subject_key: str | None = None
    #: ``urgent``, ``normal`` or ``low``: the order lanes take an app budget in
    #: (``priority.py``); low is the first to be merged into a digest.
    priority: str = "normal"
    #: Queued requests of one destination that share it may be sent as one digest card
    #: while the destination is behind its budget (``digest.py``).
    digest_key: str | None = None

    @property
    def result_version(self) -> int:
        """The contract version of this request's result: 2 only when it opted in."""
        opted_in = self.subject_key is not None or self.digest_key is not None
        return RESULT_V2 if opted_in else CONTRACT_VERSION


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a backend returns on success."""

    message_id: str | None
    platform_code: int | None = None


@dataclass(slots=True)
class Result:
    status: Status
    source: Source
    worker_id: str
    received_at: datetime
    finished_at: datetime
    request_id: str | None = None
    idempotency_key: str | None = None
    backend: str | None = None
    bot: str | None = None
    operation: str | None = None
    destination: str | None = None
    message_id: str | None = None
    attempts: int = 0
    error: ErrorInfo | None = None
    first_attempt_at: datetime | None = None
    original_request_id: str | None = None
    trace: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: 1, or 2 for a request that carried ``subject_key``/``digest_key``: v2 adds the
    #: fields below (``schemas/result.v2.json``); a v1 result never carries them.
    version: int = CONTRACT_VERSION
    subject_key: str | None = None
    #: For ``superseded``: the request id of the newer state that replaced this one.
    superseded_by: str | None = None
    #: The digest card this request was merged into: ``{"key", "message_id", "size"}``.
    digest: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = self._v1_dict()
        if self.version >= RESULT_V2:
            data["version"] = self.version
            data["subject_key"] = self.subject_key
            data["superseded_by"] = self.superseded_by
            data["digest"] = self.digest
        return data

    def _v1_dict(self) -> dict[str, Any]:
        return {
            "version": CONTRACT_VERSION,
            "request_id": self.request_id,
            "idempotency_key": self.idempotency_key,
            "status": self.status.value,
            "backend": self.backend,
            "bot": self.bot,
            "operation": self.operation,
            "destination": self.destination,
            "message_id": self.message_id,
            "original_request_id": self.original_request_id,
            "attempts": self.attempts,
            "error": self.error.as_dict() if self.error else None,
            "received_at": _iso(self.received_at),
            "first_attempt_at": _iso(self.first_attempt_at) if self.first_attempt_at else None,
            "finished_at": _iso(self.finished_at),
            "worker_id": self.worker_id,
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
            },
            "trace": self.trace,
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.as_dict())

    @property
    def needs_dead_letter(self) -> bool:
        return self.status in (Status.REJECTED, Status.FAILED)


#: Past this many bytes a dead letter carries a digest and a prefix of the original instead of
#: all of it, so that it still fits a broker's default ``message.max.bytes`` (1 MB).
DEAD_LETTER_ORIGINAL_MAX = 512 * 1024


def encode_dead_letter(original: bytes, result: Result) -> bytes:
    """The dead-letter record: the original bytes (base64), the result and the source."""
    truncated = len(original) > DEAD_LETTER_ORIGINAL_MAX
    kept = original[:DEAD_LETTER_ORIGINAL_MAX] if truncated else original
    src = result.source
    return orjson.dumps(
        {
            # The envelope is unchanged; v2 says that ``result`` is a v2 result.
            "version": result.version,
            "original": {
                "value_b64": base64.b64encode(kept).decode("ascii"),
                "key_b64": base64.b64encode(src.key).decode("ascii") if src.key else None,
                "size": len(original),
                "truncated": truncated,
                "sha256": hashlib.sha256(original).hexdigest(),
            },
            "result": result.as_dict(),
            "source": {
                "topic": src.topic,
                "partition": src.partition,
                "offset": src.offset,
                "timestamp_ms": src.timestamp_ms,
            },
        }
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
