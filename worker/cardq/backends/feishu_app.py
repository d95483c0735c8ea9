"""What the two Feishu/Lark app backends (IM messages, ephemeral cards) share.

Both authenticate with the app's tenant token, share the app's 50/s and 1000/min budget,
and speak the same error codes. A call here fetches the token, sends, classifies, and on a
refused token drops exactly that token so the pipeline's one immediate retry fetches anew.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from ..errors import AuthExpired
from ..models import Delivery, SendRequest
from ..ratelimit import RateScope, Window
from ..settings import BotSettings
from . import feishu_errors
from .base import Description, OperationSpec
from .context import BackendContext
from .transport import JSON_HEADERS, HttpRequest

FEISHU = "https://open.feishu.cn"
APP_LIMITS = (Window(50, 1.0), Window(1000, 60.0))


def app_description(
    kind: str, operations: Mapping[str, OperationSpec], default_windows: tuple[Window, ...]
) -> Description:
    """An app backend's description: the app secret, an ``app_id``, the app's budget."""
    return Description(
        kind=kind,
        operations=operations,
        credentials=("app_secret",),
        has_app=True,
        default_windows=default_windows,
        app_windows=APP_LIMITS,
    )


class FeishuApp:
    """The shared half of an app backend; subclasses add the endpoints."""

    description: ClassVar[Description]
    #: The first part of every destination budget's key (``feishu-im``).
    scope_family: ClassVar[str]
    #: The target field naming the chat; a request without it targets a message.
    chat_field: ClassVar[str]

    def __init__(self, settings: BotSettings, ctx: BackendContext) -> None:
        self.bot = settings.name
        assert settings.app_id is not None  # config._check guarantees it
        self.app_id = settings.app_id
        self._ctx = ctx
        self._base = (settings.base_url or FEISHU).rstrip("/")
        self._timeout = settings.timeout_s or ctx.timeout_s
        secret = settings.credentials["app_secret"].secret()
        self._tokens = ctx.tokens.manager(self._base, self.app_id, secret, self._timeout)
        self._app_scope = RateScope(
            key=f"feishu-app/{self._base}/{self.app_id}",
            kind="app",
            windows=self.description.app_windows_for(settings),
            pooled=True,
        )
        self._destination_windows = self.description.destination_windows(settings)

    def rate_scopes(self, request: SendRequest) -> tuple[RateScope, ...]:
        # Keyed by chat (or message), not by bot: every bot in the chat shares it.
        target = request.target
        if self.chat_field in target:
            key = f"{self.scope_family}/{self._base}/{target[self.chat_field]}"
        else:
            key = f"{self.scope_family}/{self._base}/message/{target['message_id']}"
        return (
            RateScope(key=key, kind="destination", windows=self._destination_windows, pooled=True),
            self._app_scope,
        )

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        *,
        ok_codes: frozenset[int] = frozenset(),
    ) -> Delivery:
        token = await self._tokens.get()
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {token}"}
        response = await self._ctx.transport.handle(
            HttpRequest(method, self._base + path, orjson.dumps(body), headers, self._timeout)
        )
        data = response.json()
        if isinstance(data, dict) and data.get("code") in ok_codes:
            return Delivery(message_id=None, platform_code=data.get("code"))
        error = feishu_errors.classify(response.status, response.headers, data)
        if error is not None:
            if isinstance(error, AuthExpired):
                self._tokens.invalidate(token)
            raise error
        assert isinstance(data, dict)
        payload = data.get("data")
        message_id = payload.get("message_id") if isinstance(payload, dict) else None
        return Delivery(
            message_id=message_id if isinstance(message_id, str) else None, platform_code=0
        )
