"""What every builder shares: the content shapes, the fields every request may carry, and
:func:`build`, which checks a request with the worker's own validation before it leaves.

Why the check happens here and not in the producer: a builder's caller learns of a wrong
size or a bad mention at the line that made the request, with the field path the worker
would report, instead of from a ``rejected`` result minutes later.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from .. import validation

# ----------------------------------------------------------------------------- content shapes

Card = Mapping[str, Any]
"""A card: JSON 1.0, JSON 2.0 (``{"schema": "2.0", "body": {...}}``) or a template."""


class Text(TypedDict):
    text: str


class Post(TypedDict):
    # Per locale (``zh_cn``, ``en_us``, …): ``{"title": …, "content": [[…]]}``.
    post: Mapping[str, Mapping[str, Any]]


class Image(TypedDict):
    image_key: str


class ShareChat(TypedDict):
    share_chat_id: str


RichText = Sequence[Mapping[str, Any]]
"""MindOffice ``rich_text``: a list of paragraph nodes."""


class MindCard(TypedDict):
    elements: Sequence[Mapping[str, Any]]
    header: NotRequired[Mapping[str, Any]]
    config: NotRequired[Mapping[str, Any]]


ReceiveIdType = Literal["open_id", "union_id", "user_id", "email", "chat_id"]
Priority = Literal["urgent", "normal", "low"]
ImFileType = Literal["file", "audio", "media", "sticker", "share_chat", "share_user"]


class Trace(TypedDict, total=False):
    traceparent: str
    tracestate: str


class Common(TypedDict, total=False):
    """Fields every request may carry; ``request_id`` defaults to a new UUID."""

    request_id: str
    idempotency_key: str
    expires_at: datetime
    created_at: datetime
    trace: Trace
    #: Your key for what the message is about (an alert fingerprint): later states update
    #: the card sent for it (README, "Incident storms"). Only with send and recall.
    subject_key: str
    #: ``urgent``, ``normal`` (the default) or ``low`` (README, "Incident storms").
    priority: Priority
    #: Alerts that share it may go as one digest card while their chat is behind.
    digest_key: str


# ----------------------------------------------------------------------------- the request


@dataclass(frozen=True, slots=True)
class Request:
    """A request the worker's validation accepted; ``destination`` is its Kafka key."""

    payload: Mapping[str, Any]
    destination: str

    @property
    def request_id(self) -> str:
        return str(self.payload["request_id"])

    def to_json(self) -> bytes:
        return orjson.dumps(self.payload)


def build(
    backend: str,
    bot: str,
    operation: str,
    target: Mapping[str, Any] | None,
    msg_type: str | None,
    content: Any,
    common: Common,
) -> Request:
    """The request's JSON, checked by :func:`cardq.validation.from_dict` as the worker will."""
    payload: dict[str, Any] = {
        "version": 1,
        "request_id": common.get("request_id") or str(uuid.uuid4()),
        "backend": backend,
        "bot": bot,
        "operation": operation,
    }
    if target is not None:
        payload["target"] = dict(target)
    if msg_type is not None:
        payload["msg_type"] = msg_type
        payload["content"] = content
    for key in ("idempotency_key", "priority", "digest_key", "subject_key"):
        if key in common:
            payload[key] = common[key]
    for name in ("expires_at", "created_at"):
        when = common.get(name)
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise validation.ValidationError(name, "needs a timezone (RFC 3339 has an offset)")
            payload[name] = when.isoformat().replace("+00:00", "Z")
    if "trace" in common:
        payload["trace"] = dict(common["trace"])
    # Round-trip through JSON so what is checked is exactly what will be produced.
    payload = orjson.loads(orjson.dumps(payload))
    checked = validation.from_dict(payload)
    return Request(payload=payload, destination=checked.destination)
