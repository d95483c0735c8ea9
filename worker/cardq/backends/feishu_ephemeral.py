"""Feishu/Lark ephemeral card: visible to one member of a group (``backend-facts.md`` §4).

``POST /open-apis/ephemeral/v1/send`` with the card as an *object*; ``delete`` by message
id, where 18051 ("already deleted") counts as success. 40 QPS per group.
"""

from __future__ import annotations

from typing import ClassVar

from ..models import Delivery, SendRequest
from ..ratelimit import Window
from .base import Description, OperationSpec
from .cards import check_card
from .feishu_app import FeishuApp, app_description

GROUP_LIMITS = (Window(40, 1.0),)
USER_FIELDS = ("open_id", "user_id", "email")  # the platform's order of precedence
ALREADY_DELETED = 18051


class FeishuEphemeral(FeishuApp):
    description: ClassVar[Description] = app_description(
        "feishu_ephemeral",
        {
            "send": OperationSpec(
                msg_types=frozenset({"interactive"}), required=("chat_id",), one_of=USER_FIELDS
            ),
            "delete": OperationSpec(msg_types=frozenset(), required=("message_id",)),
        },
        GROUP_LIMITS,
    )
    scope_family: ClassVar[str] = "feishu-ephemeral"
    chat_field: ClassVar[str] = "chat_id"  # delete names a message instead

    @staticmethod
    def check(request: SendRequest) -> None:
        if request.operation == "send":
            check_card(request.content, "content")

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        target = request.target
        if request.operation == "delete":
            return f"message:{target['message_id']}"
        user = next(f"{name}:{target[name]}" for name in USER_FIELDS if name in target)
        return f"chat:{target['chat_id']}/{user}"

    async def send(self, request: SendRequest) -> Delivery:
        target = request.target
        if request.operation == "delete":
            delivery = await self._call(
                "POST",
                "/open-apis/ephemeral/v1/delete",
                {"message_id": target["message_id"]},
                ok_codes=frozenset({ALREADY_DELETED}),
            )
            return Delivery(message_id=target["message_id"], platform_code=delivery.platform_code)
        body = {name: target[name] for name in ("chat_id", *USER_FIELDS) if name in target}
        body["msg_type"] = "interactive"
        body["card"] = request.content
        return await self._call("POST", "/open-apis/ephemeral/v1/send", body)
