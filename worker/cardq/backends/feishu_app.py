"""What the two Feishu/Lark app backends (IM messages, ephemeral cards) share.

Both authenticate with the app's tenant token, share the app's 50/s and 1000/min budget,
and speak the same error codes. A call here fetches the token, sends, classifies, and on a
refused token drops exactly that token so the pipeline's one immediate retry fetches anew.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from ..config import BotSettings, resolve_secret
from ..models import Delivery
from . import feishu_errors
from .base import AuthExpired, BackendContext, RateScope, Window

FEISHU = "https://open.feishu.cn"
APP_LIMITS = (Window(50, 1.0), Window(1000, 60.0))


class FeishuApp:
    """The shared half of an app backend; subclasses add the endpoints."""

    kind: ClassVar[str] = "feishu_app"

    def __init__(self, settings: BotSettings, ctx: BackendContext) -> None:
        self.bot = settings.name
        assert settings.app_id is not None  # config._check guarantees it
        self.app_id = settings.app_id
        self._ctx = ctx
        self._base = (settings.base_url or FEISHU).rstrip("/")
        self._timeout = settings.timeout_s or ctx.timeout_s
        secret = resolve_secret(
            settings.credentials["app_secret"], f"bots.{self.bot}.credentials.app_secret"
        )
        self._tokens = ctx.tokens.manager(self._base, self.app_id, secret, self._timeout)
        app = settings.limits.app
        self._app_scope = RateScope(
            key=f"feishu-app/{self._base}/{self.app_id}",
            kind="app",
            windows=APP_LIMITS if app is None else tuple(Window(w.limit, w.seconds) for w in app),
            pooled=True,
        )
        self._destination_windows = (
            None
            if settings.limits.destination is None
            else tuple(Window(w.limit, w.seconds) for w in settings.limits.destination)
        )

    def _scopes(self, key: str, default: tuple[Window, ...]) -> tuple[RateScope, ...]:
        windows = default if self._destination_windows is None else self._destination_windows
        # Keyed by chat (or message), not by bot: every bot in the chat shares it.
        return (
            RateScope(key=key, kind="destination", windows=windows, pooled=True),
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
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": f"Bearer {token}",
        }
        response = await self._ctx.transport.request(
            method,
            self._base + path,
            body=orjson.dumps(body),
            headers=headers,
            timeout=self._timeout,
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

    async def aclose(self) -> None:
        return None
