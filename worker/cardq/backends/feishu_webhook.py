"""Feishu/Lark custom bot webhook (``backend-facts.md`` §1, seed 000).

``POST {base}/open-apis/bot/v2/hook/{token}``; a card goes in a top-level ``card`` object,
everything else in ``content``. Optional signing adds ``timestamp`` and ``sign``. The
platform answers rate limiting with HTTP 200 or 400, so success is decided on the body
``code`` alone. It returns no message id and offers no idempotency key: see the README.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import ClassVar

import orjson

from ..errors import ValidationError
from ..models import Delivery, SendRequest
from ..ratelimit import RateScope, Window
from ..secrets import SIGNATURE_TTL_S, remember
from ..settings import BotSettings
from . import feishu_errors
from .base import Description, OperationSpec
from .cards import check_card
from .context import BackendContext
from .posts import check_post
from .transport import JSON_HEADERS, HttpRequest

FEISHU = "https://open.feishu.cn"
BODY_MAX_BYTES = 20 * 1024
#: room for the ``timestamp`` and ``sign`` fields added at send time
_SIGN_ROOM = 80
DEFAULT_LIMITS = (Window(5, 1.0), Window(100, 60.0))
#: How long one signature is sent again before a new one is made (see ``_signature``).
SIGNATURE_REUSE_S = 30


def sign(secret: str, timestamp: int) -> str:
    """The documented signature: HMAC-SHA256 keyed by ``"{timestamp}\\n{secret}"`` over b""."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def body_for(request: SendRequest) -> dict[str, object]:
    if request.msg_type == "interactive":
        return {"msg_type": "interactive", "card": request.content}
    return {"msg_type": request.msg_type, "content": request.content}


class FeishuWebhook:
    description: ClassVar[Description] = Description(
        kind="feishu_webhook",
        operations={
            "send": OperationSpec(
                msg_types=frozenset({"text", "post", "image", "share_chat", "interactive"})
            ),
        },
        credentials=("token",),
        optional_credentials=("secret",),
        default_windows=DEFAULT_LIMITS,
    )

    def __init__(
        self, settings: BotSettings, ctx: BackendContext, clock: Callable[[], float] = time.time
    ) -> None:
        self.bot = settings.name
        self._ctx = ctx
        self._clock = clock
        self._signed: tuple[int, str] | None = None
        token = settings.credentials["token"].secret()
        secret_ref = settings.credentials.get("secret")
        self._secret = secret_ref.secret().reveal() if secret_ref else None
        base = (settings.base_url or FEISHU).rstrip("/")
        self._url = f"{base}/open-apis/bot/v2/hook/{token.reveal()}"
        self._timeout = settings.timeout_s or ctx.timeout_s
        self._scopes = (
            RateScope(
                key=f"{self.description.kind}/{self.bot}",
                kind="bot",
                windows=self.description.destination_windows(settings),
            ),
        )

    @staticmethod
    def check(request: SendRequest) -> None:
        content = request.content
        if request.msg_type == "interactive":
            check_card(content, "content")
        elif request.msg_type == "post":
            post = content.get("post") if isinstance(content, dict) else None
            if not isinstance(post, dict) or not post:
                raise ValidationError.content("content.post", "required: an object keyed by locale")
            check_post(post, "content.post")
        elif request.msg_type == "image":
            if not isinstance(content, dict) or not isinstance(content.get("image_key"), str):
                raise ValidationError.content("content.image_key", "required for msg_type image")
        elif request.msg_type == "share_chat" and (
            not isinstance(content, dict) or not isinstance(content.get("share_chat_id"), str)
        ):
            raise ValidationError.content(
                "content.share_chat_id", "required for msg_type share_chat"
            )
        size = len(orjson.dumps(body_for(request))) + _SIGN_ROOM
        if size > BODY_MAX_BYTES:
            raise ValidationError.content(
                "content",
                f"webhook body would be {size} bytes, over the platform's {BODY_MAX_BYTES}",
                "body_too_large",
            )

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        return "webhook"

    def rate_scopes(self, request: SendRequest) -> tuple[RateScope, ...]:
        return self._scopes

    async def send(self, request: SendRequest) -> Delivery:
        body = body_for(request)
        if self._secret is not None:
            timestamp, signature = self._signature(self._secret)
            body["timestamp"] = str(timestamp)
            body["sign"] = signature
        response = await self._ctx.transport.handle(
            HttpRequest("POST", self._url, orjson.dumps(body), JSON_HEADERS, self._timeout)
        )
        error = feishu_errors.classify(response.status, response.headers, response.json())
        if error is not None:
            raise error
        return Delivery(message_id=None, platform_code=0)

    def _signature(self, secret: str) -> tuple[int, str]:
        """The signature of a timestamp at most ``SIGNATURE_REUSE_S`` old: the platform
        takes any timestamp within the hour, and every new signature is a value the log
        scrubber must remember for an hour. Signing every second, one busy bot kept 3,900
        of them (~2.5 MB); reusing each for 30 s keeps 130."""
        now = int(self._clock())
        signed = self._signed
        if signed is None or not 0 <= now - signed[0] < SIGNATURE_REUSE_S:
            signed = (now, sign(secret, now))
            remember(signed[1], ttl_s=SIGNATURE_TTL_S)
            self._signed = signed
        return signed
