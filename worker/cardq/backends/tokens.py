"""Feishu/Lark ``tenant_access_token``: one cached token per app, fetched single-flight.

A burst of 500 sends through one app makes one token request: the first caller fetches,
the others await the same future. The token is refreshed ``refresh_margin`` before
``expire`` runs out (the official SDK uses 10 minutes; the margin shrinks for the short
lifetimes the simulator issues). On 99991661/3/4/71 the pipeline calls :meth:`invalidate`
with the refused token, so only the first of many concurrent failures triggers a fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..errors import CredentialsRefused, Rejected, Unavailable
from ..secrets import Secret, remember
from . import feishu_errors
from .transport import JSON_HEADERS, HttpRequest, Transport

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"


@dataclass(slots=True)
class _Cached:
    token: str
    refresh_at: float


class TokenManager:
    def __init__(
        self,
        *,
        base_url: str,
        app_id: str,
        app_secret: Secret,
        transport: Transport,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.app_id = app_id
        self._url = base_url.rstrip("/") + TOKEN_PATH
        self._secret = app_secret
        self._transport = transport
        self._timeout = timeout_s
        self._clock = clock
        self._on_fetch = on_fetch
        self._cached: _Cached | None = None
        self._inflight: asyncio.Future[str] | None = None
        self.fetches = 0

    async def get(self) -> str:
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, fut: asyncio.Future[str]) -> None:
        self._inflight = None
        if not fut.cancelled():
            fut.exception()  # mark retrieved: every waiter already got it

    def invalidate(self, token: str) -> None:
        """Drop ``token`` if it is still the cached one (a later fetch may have replaced it)."""
        if self._cached is not None and self._cached.token == token:
            self._cached = None

    async def _fetch(self) -> str:
        self.fetches += 1
        if self._on_fetch is not None:
            self._on_fetch(self.app_id)
        body = orjson.dumps({"app_id": self.app_id, "app_secret": self._secret.reveal()})
        response = await self._transport.handle(
            HttpRequest("POST", self._url, body, JSON_HEADERS, self._timeout)
        )
        data = response.json()
        error = feishu_errors.classify(response.status, response.headers, data)
        if isinstance(error, Rejected):
            # 10003 unknown app, 10014 wrong secret…: retrying cannot help.
            raise CredentialsRefused(
                f"token endpoint refused app {self.app_id} (code {error.platform_code})",
                platform_code=error.platform_code,
                platform_msg=error.platform_msg,
                http_status=response.status,
            )
        if error is not None:  # throttled or unavailable: the pipeline retries
            raise error
        assert isinstance(data, dict)
        token = data.get("tenant_access_token")
        expire = data.get("expire")
        if not isinstance(token, str) or not isinstance(expire, int | float):
            raise Unavailable("token endpoint answered without a token", code="token_unavailable")
        remember(token, ttl_s=float(expire))  # useless to anyone once expired
        margin = min(600.0, float(expire) * 0.1)
        self._cached = _Cached(token, self._clock() + float(expire) - margin)
        return token


class TokenPool:
    """One :class:`TokenManager` per (host, app id), shared by every bot of that app."""

    def __init__(
        self, transport: Transport, *, on_fetch: Callable[[str], None] | None = None
    ) -> None:
        self._transport = transport
        self._on_fetch = on_fetch
        self._managers: dict[tuple[str, str], TokenManager] = {}

    def manager(
        self, base_url: str, app_id: str, app_secret: Secret, timeout_s: float
    ) -> TokenManager:
        key = (base_url.rstrip("/"), app_id)
        found = self._managers.get(key)
        if found is None:
            found = TokenManager(
                base_url=base_url,
                app_id=app_id,
                app_secret=app_secret,
                transport=self._transport,
                timeout_s=timeout_s,
                on_fetch=self._on_fetch,
            )
            self._managers[key] = found
        return found
