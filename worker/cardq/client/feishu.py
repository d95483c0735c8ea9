"""Builders for the three Feishu/Lark backends: the custom bot webhook, the IM API
(send, reply, update, recall) and ephemeral cards.

Each ``msg_type`` is an overload naming the content shape it takes, so a mismatch is a type
error; where a backend needs a target, its keywords are one ``TypedDict`` (with the fields
every request may carry), written once rather than in every overload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, Unpack, overload

from .request import (
    Card,
    Common,
    Image,
    ImFileType,
    Post,
    ReceiveIdType,
    Request,
    ShareChat,
    Text,
    build,
)

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
    return build("feishu_webhook", bot, "send", None, msg_type, content, common)


# ----------------------------------------------------------------------------- feishu_message


class ChatTarget(Common):
    """A user or chat, ``receive_id_type`` saying which id ``receive_id`` is."""

    receive_id_type: ReceiveIdType
    receive_id: str


class ReplyTarget(Common):
    """The ``message_id`` of an earlier ``delivered`` result, answered in a thread or not."""

    message_id: str
    reply_in_thread: NotRequired[bool]


@overload
def message_send(
    bot: str, *, msg_type: Literal["text"], content: Text, **to: Unpack[ChatTarget]
) -> Request: ...
@overload
def message_send(
    bot: str, *, msg_type: Literal["post"], content: Post, **to: Unpack[ChatTarget]
) -> Request: ...
@overload
def message_send(
    bot: str, *, msg_type: Literal["image"], content: Image, **to: Unpack[ChatTarget]
) -> Request: ...
@overload
def message_send(
    bot: str, *, msg_type: Literal["interactive"], content: Card, **to: Unpack[ChatTarget]
) -> Request: ...
@overload
def message_send(
    bot: str, *, msg_type: ImFileType, content: Mapping[str, str], **to: Unpack[ChatTarget]
) -> Request: ...
def message_send(bot: str, *, msg_type: str, content: Any, **to: Unpack[ChatTarget]) -> Request:
    """An IM API message to a user or chat (``receive_id_type`` says which id it is)."""
    target = {"receive_id_type": to["receive_id_type"], "receive_id": to["receive_id"]}
    return build("feishu_message", bot, "send", target, msg_type, content, to)


@overload
def message_reply(
    bot: str, *, msg_type: Literal["text"], content: Text, **to: Unpack[ReplyTarget]
) -> Request: ...
@overload
def message_reply(
    bot: str, *, msg_type: Literal["interactive"], content: Card, **to: Unpack[ReplyTarget]
) -> Request: ...
@overload
def message_reply(
    bot: str, *, msg_type: Literal["post"], content: Post, **to: Unpack[ReplyTarget]
) -> Request: ...
def message_reply(bot: str, *, msg_type: str, content: Any, **to: Unpack[ReplyTarget]) -> Request:
    """A reply to ``message_id`` (the ``message_id`` of an earlier ``delivered`` result)."""
    target: dict[str, Any] = {"message_id": to["message_id"]}
    if to.get("reply_in_thread"):
        target["reply_in_thread"] = True
    return build("feishu_message", bot, "reply", target, msg_type, content, to)


def message_recall(bot: str, **to: Unpack[ChatTarget]) -> Request:
    """Delete the card sent for ``subject_key`` (required) to this receiver (README,
    "Incident storms"); without it the worker's validation refuses the request here."""
    target = {"receive_id_type": to["receive_id_type"], "receive_id": to["receive_id"]}
    return build("feishu_message", bot, "recall", target, None, None, to)


def message_update(bot: str, *, message_id: str, card: Card, **common: Unpack[Common]) -> Request:
    """Replace the card of an earlier message (a JSON 1.0 card needs ``update_multi``)."""
    target = {"message_id": message_id}
    return build("feishu_message", bot, "update", target, "interactive", card, common)


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
    return build("feishu_ephemeral", bot, "send", target, "interactive", card, common)


def ephemeral_delete(bot: str, *, message_id: str, **common: Unpack[Common]) -> Request:
    target = {"message_id": message_id}
    return build("feishu_ephemeral", bot, "delete", target, None, None, common)
