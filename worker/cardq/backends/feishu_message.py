"""Feishu/Lark IM API: send, reply, update a card, recall (``backend-facts.md`` §2, seed 003).

``recall`` names the card by the producer's ``subject_key`` and the chat it went to;
``lifecycle.py`` resolves that to the message id it remembered, and this backend then
gets the request with ``target.message_id`` and deletes the message
(``DELETE /open-apis/im/v1/messages/{message_id}``: a bot may recall its own messages
within the recall window the tenant's administrator sets).

``content`` is sent as a JSON-encoded string. The platform's ``uuid`` (≤ 50 characters,
one successful send per uuid per hour) is set from the idempotency key, so a resend after
a crash is dropped by the platform itself.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from ..errors import ValidationError
from ..models import Delivery, SendRequest
from ..ratelimit import Window
from .base import Description, OperationSpec
from .cards import CARD_MAX_BYTES, check_card, check_text_size
from .feishu_app import FeishuApp, app_description
from .posts import check_post

RECEIVE_ID_TYPES = ("open_id", "union_id", "user_id", "email", "chat_id")
MSG_TYPES = frozenset(
    {
        "text",
        "post",
        "image",
        "file",
        "audio",
        "media",
        "sticker",
        "interactive",
        "share_chat",
        "share_user",
    }
)
TARGET_LIMITS = (Window(5, 1.0),)
UUID_MAX = 50
#: A recall of a message already recalled (230011) or deleted (230110) has nothing left to
#: do: the card is gone, which is what was asked.
GONE = frozenset({230011, 230110})


def platform_uuid(idempotency_key: str) -> str:
    """The key itself when it fits the platform's 50 characters, else a stable digest."""
    if len(idempotency_key) <= UUID_MAX:
        return idempotency_key
    return "cq-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


def _content_string(content: Any) -> str:
    return orjson.dumps(content).decode()


class FeishuMessage(FeishuApp):
    description: ClassVar[Description] = app_description(
        "feishu_message",
        {
            "send": OperationSpec(
                msg_types=MSG_TYPES,
                required=("receive_id_type", "receive_id"),
                enums={"receive_id_type": RECEIVE_ID_TYPES},
            ),
            "reply": OperationSpec(
                msg_types=MSG_TYPES, required=("message_id",), bools=("reply_in_thread",)
            ),
            "update": OperationSpec(msg_types=frozenset({"interactive"}), required=("message_id",)),
            # Named like the send (so it shares the send's lane and budget and comes after
            # it); the card itself is found by ``subject_key``.
            "recall": OperationSpec(
                msg_types=frozenset(),
                required=("receive_id_type", "receive_id"),
                enums={"receive_id_type": RECEIVE_ID_TYPES},
            ),
        },
        TARGET_LIMITS,
    )
    scope_family: ClassVar[str] = "feishu-im"
    chat_field: ClassVar[str] = "receive_id"  # reply and update name a message instead

    @staticmethod
    def check(request: SendRequest) -> None:
        content = request.content
        if request.msg_type == "interactive":
            check_card(content, "content")
            updatable = request.operation == "update" or request.subject_key is not None
            if updatable and content.get("type") != "template":
                config = content.get("config")
                update_multi = config.get("update_multi") if isinstance(config, dict) else None
                # JSON 1.0 cards must say so; in JSON 2.0 shared is the default.
                if update_multi is False or (update_multi is None and _is_v1_card(content)):
                    why = "later states of its subject_key update it" if request.subject_key else ""
                    raise ValidationError.content(
                        "content.config.update_multi",
                        "must be true: only shared cards (update_multi) can be updated"
                        + (f" ({why})" if why else ""),
                    )
        elif request.msg_type == "text":
            check_text_size(content, "content")
        elif request.msg_type == "post":
            check_post(content, "content")
            check_text_size(content, "content", CARD_MAX_BYTES)

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        if request.operation in ("send", "recall"):
            return f"{request.target['receive_id_type']}:{request.target['receive_id']}"
        return f"message:{request.target['message_id']}"

    async def send(self, request: SendRequest) -> Delivery:
        target = request.target
        content = _content_string(request.content)
        if request.operation == "send":
            path = f"/open-apis/im/v1/messages?receive_id_type={target['receive_id_type']}"
            body: dict[str, Any] = {
                "receive_id": target["receive_id"],
                "msg_type": request.msg_type,
                "content": content,
                "uuid": platform_uuid(request.idempotency_key),
            }
            return await self._call("POST", path, body)
        message_id = quote(target["message_id"], safe="")
        if request.operation == "recall":
            await self._call("DELETE", f"/open-apis/im/v1/messages/{message_id}", {}, ok_codes=GONE)
            return Delivery(message_id=target["message_id"], platform_code=0)
        if request.operation == "reply":
            body = {
                "msg_type": request.msg_type,
                "content": content,
                "uuid": platform_uuid(request.idempotency_key),
            }
            if "reply_in_thread" in target:
                body["reply_in_thread"] = target["reply_in_thread"]
            return await self._call("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)
        delivery = await self._call(
            "PATCH", f"/open-apis/im/v1/messages/{message_id}", {"content": content}
        )
        return Delivery(message_id=target["message_id"], platform_code=delivery.platform_code)


def _is_v1_card(card: Any) -> bool:
    return isinstance(card, dict) and card.get("schema") != "2.0" and card.get("type") != "template"
