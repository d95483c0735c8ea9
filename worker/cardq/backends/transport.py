"""HTTP for the backends: one small interface, one real implementation, one mock.

Why aiohttp and not httpx underneath: on this project's machines httpx costs 1.2–2.7 ms of
CPU per request against a local server, aiohttp 0.15–0.2 ms (see README, "Dependencies").
At the throughput target (3,000 sends/s on two cores) that difference is the whole budget.
The choice stays behind :class:`Transport`, so backends never import either library.

This is also the one place where network errors become :class:`Unavailable`: the URL
(which holds the webhook token) is dropped here and never reaches a message or a log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from .base import Unavailable


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> object:
        """The decoded body, or ``None`` when it is not JSON (a proxy's HTML error page)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


class Transport(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Response: ...

    async def aclose(self) -> None: ...


JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


class AiohttpTransport:
    """A pooled aiohttp session shared by every backend of one worker."""

    def __init__(self, *, max_connections: int = 512) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, raise_for_status=False
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Response:
        session = self._get_session()
        limit = self._timeouts.get(timeout)
        if limit is None:  # one per distinct value, not one per request
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.request(
                method, url, data=body, headers=headers, timeout=limit
            ) as resp:
                data = await resp.read()
                return Response(resp.status, resp.headers, data)
        except TimeoutError:
            raise Unavailable(f"no answer within {timeout:g} s", code="timeout") from None
        except aiohttp.ClientError as exc:
            # str(exc) may contain the URL (and so the webhook token): keep only the type.
            raise Unavailable(
                f"connection error ({type(exc).__name__})", code="connection_error"
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Handler = Callable[[str, str, bytes, Mapping[str, str]], Awaitable[Response] | Response]


class MockTransport:
    """Calls ``handler(method, url, body, headers)`` instead of the network (unit tests)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, str, bytes, dict[str, str]]] = []

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Response:
        self.calls.append((method, url, body, dict(headers)))
        answer = self.handler(method, url, body, headers)
        if asyncio.iscoroutine(answer) or isinstance(answer, Awaitable):
            answer = await answer
        assert isinstance(answer, Response)
        return answer

    async def aclose(self) -> None:
        return None
