"""How the simulated platforms answer: JSON bodies, and the one exception for refusals.

Handlers raise :class:`Refusal` for any platform error; the endpoint wrapper turns it
into a response and counts it, so the success path builds exactly one response and no
exception is raised per accepted message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"


class Refusal(Exception):
    """A platform error answer: HTTP ``status`` with ``{"code": code, "msg": msg}``.

    ``throttle`` marks rate-limit answers (counted apart from other refusals);
    ``extra`` adds top-level fields (the webhook's legacy ``StatusCode``).
    """

    def __init__(
        self,
        code: int,
        msg: str,
        status: int = 400,
        *,
        headers: Mapping[str, str] | None = None,
        throttle: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers
        self.throttle = throttle
        self.extra = extra

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.extra:
            body.update(self.extra)
        return json_response(body, self.status, self.headers)


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, headers=headers, content_type=JSON, charset="utf-8"
    )


def raw_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON, charset="utf-8")


def decode_object(raw: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object, or ``None`` when it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
