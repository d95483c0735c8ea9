"""A typed producer client for service teams: builders per backend, and a producer.

Why typed builders rather than dicts: a wrong field name, a ``msg_type`` the backend does
not have, or content of the wrong shape is then a type error in the service team's editor
(mypy, pyright) instead of a ``rejected`` result minutes later. Every builder also runs the
worker's own validation (``cardq.validation``) at once, so what the types cannot say (sizes,
a JSON 2.0 card's component count, mention syntax) fails in the producing service with the
same field path and reason the worker would report.

    from cardq.client import CardqProducer, message_send

    request = message_send(
        "ops-app", receive_id_type="chat_id", receive_id="oc_5ad5…",
        msg_type="text", content={"text": "deployed"},
    )
    async with CardqProducer("kafka:9092") as producer:
        await producer.send(request)          # keyed by request.destination
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict, Unpack, overload

import orjson
from aiokafka import AIOKafkaProducer

from . import validation

__all__ = [
    "Card",
    "CardqProducer",
    "Common",
    "Image",
    "MindCard",
    "Post",
    "Request",
    "ShareChat",
    "Text",
    "Trace",
    "ephemeral_delete",
    "ephemeral_send",
    "message_reply",
    "message_send",
    "message_update",
    "mindoffice_send",
    "webhook_send",
]

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


class MindCard(TypedDict):
    elements: Sequence[Mapping[str, Any]]
    header: NotRequired[Mapping[str, Any]]
    config: NotRequired[Mapping[str, Any]]


ReceiveIdType = Literal["open_id", "union_id", "user_id", "email", "chat_id"]
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


def _build(
    backend: str,
    bot: str,
    operation: str,
    target: Mapping[str, Any] | None,
    msg_type: str | None,
    content: Any,
    common: Common,
) -> Request:
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
    if "idempotency_key" in common:
        payload["idempotency_key"] = common["idempotency_key"]
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


# ----------------------------------------------------------------------------- feishu_webhook


@overload
def webhook_send(
    bot: str, msg_type: Literal["text"], content: Text, **common: Unpack[Common]
) -> Request: ...
@overload
def webhook_send(
    bot: str, msg_type: Literal["post"], content: Post, **common: Unpack[Common]
) -> Request: ...
@overload
def webhook_send(
    bot: str, msg_type: Literal["image"], content: Image, **common: Unpack[Common]
) -> Request: ...
@overload
def webhook_send(
    bot: str, msg_type: Literal["share_chat"], content: ShareChat, **common: Unpack[Common]
) -> Request: ...
@overload
def webhook_send(
    bot: str, msg_type: Literal["interactive"], content: Card, **common: Unpack[Common]
) -> Request: ...
def webhook_send(bot: str, msg_type: str, content: Any, **common: Unpack[Common]) -> Request:
    """A custom bot webhook message; the webhook's own group is the destination."""
    return _build("feishu_webhook", bot, "send", None, msg_type, content, common)


# ----------------------------------------------------------------------------- feishu_message


@overload
def message_send(
    bot: str,
    *,
    receive_id_type: ReceiveIdType,
    receive_id: str,
    msg_type: Literal["text"],
    content: Text,
    **common: Unpack[Common],
) -> Request: ...
@overload
def message_send(
    bot: str,
    *,
    receive_id_type: ReceiveIdType,
    receive_id: str,
    msg_type: Literal["post"],
    content: Post,
    **common: Unpack[Common],
) -> Request: ...
@overload
def message_send(
    bot: str,
    *,
    receive_id_type: ReceiveIdType,
    receive_id: str,
    msg_type: Literal["image"],
    content: Image,
    **common: Unpack[Common],
) -> Request: ...
@overload
def message_send(
    bot: str,
    *,
    receive_id_type: ReceiveIdType,
    receive_id: str,
    msg_type: Literal["interactive"],
    content: Card,
    **common: Unpack[Common],
) -> Request: ...
@overload
def message_send(
    bot: str,
    *,
    receive_id_type: ReceiveIdType,
    receive_id: str,
    msg_type: ImFileType,
    content: Mapping[str, str],
    **common: Unpack[Common],
) -> Request: ...
def message_send(
    bot: str,
    *,
    receive_id_type: ReceiveIdType,
    receive_id: str,
    msg_type: str,
    content: Any,
    **common: Unpack[Common],
) -> Request:
    """An IM API message to a user or chat (``receive_id_type`` says which id it is)."""
    target = {"receive_id_type": receive_id_type, "receive_id": receive_id}
    return _build("feishu_message", bot, "send", target, msg_type, content, common)


@overload
def message_reply(
    bot: str,
    *,
    message_id: str,
    msg_type: Literal["text"],
    content: Text,
    reply_in_thread: bool = False,
    **common: Unpack[Common],
) -> Request: ...
@overload
def message_reply(
    bot: str,
    *,
    message_id: str,
    msg_type: Literal["interactive"],
    content: Card,
    reply_in_thread: bool = False,
    **common: Unpack[Common],
) -> Request: ...
@overload
def message_reply(
    bot: str,
    *,
    message_id: str,
    msg_type: Literal["post"],
    content: Post,
    reply_in_thread: bool = False,
    **common: Unpack[Common],
) -> Request: ...
def message_reply(
    bot: str,
    *,
    message_id: str,
    msg_type: str,
    content: Any,
    reply_in_thread: bool = False,
    **common: Unpack[Common],
) -> Request:
    """A reply to ``message_id`` (the ``message_id`` of an earlier ``delivered`` result)."""
    target: dict[str, Any] = {"message_id": message_id}
    if reply_in_thread:
        target["reply_in_thread"] = True
    return _build("feishu_message", bot, "reply", target, msg_type, content, common)


def message_update(bot: str, *, message_id: str, card: Card, **common: Unpack[Common]) -> Request:
    """Replace the card of an earlier message (a JSON 1.0 card needs ``update_multi``)."""
    target = {"message_id": message_id}
    return _build("feishu_message", bot, "update", target, "interactive", card, common)


# ----------------------------------------------------------------------------- feishu_ephemeral


@overload
def ephemeral_send(
    bot: str, *, chat_id: str, open_id: str, card: Card, **common: Unpack[Common]
) -> Request: ...
@overload
def ephemeral_send(
    bot: str, *, chat_id: str, user_id: str, card: Card, **common: Unpack[Common]
) -> Request: ...
@overload
def ephemeral_send(
    bot: str, *, chat_id: str, email: str, card: Card, **common: Unpack[Common]
) -> Request: ...
def ephemeral_send(
    bot: str,
    *,
    chat_id: str,
    card: Card,
    open_id: str | None = None,
    user_id: str | None = None,
    email: str | None = None,
    **common: Unpack[Common],
) -> Request:
    """A card only one member of the group sees (name them by exactly one id)."""
    users = {"open_id": open_id, "user_id": user_id, "email": email}
    target = {"chat_id": chat_id, **{k: v for k, v in users.items() if v is not None}}
    return _build("feishu_ephemeral", bot, "send", target, "interactive", card, common)


def ephemeral_delete(bot: str, *, message_id: str, **common: Unpack[Common]) -> Request:
    target = {"message_id": message_id}
    return _build("feishu_ephemeral", bot, "delete", target, None, None, common)


# ----------------------------------------------------------------------------- mindoffice_group


@overload
def mindoffice_send(
    bot: str,
    *,
    group_id: str,
    msg_type: Literal["text", "markdown"],
    content: Text,
    **common: Unpack[Common],
) -> Request: ...
@overload
def mindoffice_send(
    bot: str,
    *,
    group_id: str,
    msg_type: Literal["rich_text"],
    content: Sequence[Mapping[str, Any]],
    **common: Unpack[Common],
) -> Request: ...
@overload
def mindoffice_send(
    bot: str,
    *,
    group_id: str,
    msg_type: Literal["interactive"],
    content: MindCard,
    **common: Unpack[Common],
) -> Request: ...
def mindoffice_send(
    bot: str, *, group_id: str, msg_type: str, content: Any, **common: Unpack[Common]
) -> Request:
    """A MindOffice robot group message; mention as ``<at user_id="ID">name</at>``."""
    target = {"group_id": group_id}
    return _build("mindoffice_group", bot, "send", target, msg_type, content, common)


# ----------------------------------------------------------------------------- producing


class CardqProducer:
    """An aiokafka producer that sends :class:`Request` objects keyed by their destination.

    ``acks="all"``: a request the broker has not fully replicated is not reported as sent.
    Extra keyword arguments go to ``AIOKafkaProducer`` (security, compression, …).
    """

    def __init__(
        self, bootstrap_servers: str, *, topic: str = "cardq.requests", **options: Any
    ) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, **{"acks": "all", **options}
        )

    async def __aenter__(self) -> CardqProducer:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send(self, request: Request) -> tuple[int, int]:
        """Produce and wait for the broker; return (partition, offset)."""
        meta = await self._producer.send_and_wait(
            self.topic, request.to_json(), key=request.destination.encode()
        )
        return int(meta.partition), int(meta.offset)
