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

The parts: ``request`` (content shapes, the checked :class:`Request`), one module of
builders per platform (``feishu``, ``mindoffice``), and ``producer``.
"""

from __future__ import annotations

from .feishu import (
    ChatTarget,
    ReplyTarget,
    ephemeral_delete,
    ephemeral_send,
    message_recall,
    message_reply,
    message_send,
    message_update,
    webhook_send,
)
from .mindoffice import GroupTarget, mindoffice_send
from .producer import CardqProducer
from .request import (
    Card,
    Common,
    Image,
    MindCard,
    Post,
    Priority,
    Request,
    RichText,
    ShareChat,
    Text,
    Trace,
)

__all__ = [
    "Card",
    "CardqProducer",
    "ChatTarget",
    "Common",
    "GroupTarget",
    "Image",
    "MindCard",
    "Post",
    "Priority",
    "ReplyTarget",
    "Request",
    "RichText",
    "ShareChat",
    "Text",
    "Trace",
    "ephemeral_delete",
    "ephemeral_send",
    "message_recall",
    "message_reply",
    "message_send",
    "message_update",
    "mindoffice_send",
    "webhook_send",
]
