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
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import orjson

from ..errors import Unavailable

#: The header every JSON call sends.
JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One call a backend makes: what a transport sends, what a mock handler is shown."""

    method: str
    # Left out of repr: the URL may hold a webhook token, the headers a bearer token.
    url: str = field(repr=False)
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    timeout: float

    def json(self) -> object:
        """The decoded body (tests read what a backend sent with it)."""
        return orjson.loads(self.body)


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
    """One method, as httpx's ``AsyncBaseTransport``: a request in, a response out, a
    network failure raised as :class:`Unavailable` (never a URL in its message)."""

    async def handle(self, request: HttpRequest) -> Response: ...


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

    async def handle(self, request: HttpRequest) -> Response:
        session = self._get_session()
        timeout = request.timeout
        limit = self._timeouts.get(timeout)
        if limit is None:  # one per distinct value, not one per request
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=limit,
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


Handler = Callable[[HttpRequest], Awaitable[Response] | Response]


class MockTransport:
    """Answers with ``handler(request)`` instead of the network, as httpx's
    ``MockTransport``: unit tests script the platform in one function and read
    :attr:`requests` to see what was sent. A handler may be sync or async, and may raise
    (an :class:`Unavailable` stands for a network failure)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[HttpRequest] = []

    async def handle(self, request: HttpRequest) -> Response:
        self.requests.append(request)
        answer = self.handler(request)
        if asyncio.iscoroutine(answer) or isinstance(answer, Awaitable):
            answer = await answer
        assert isinstance(answer, Response)
        return answer

    async def aclose(self) -> None:
        """Nothing to close; here so a test can use it where the worker closes its transport."""
