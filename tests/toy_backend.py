"""A whole platform in one module: what a contributor writes to add a backend.

A "toy" chat service takes ``POST {base}/rooms/{room}/messages`` with a bearer key and
answers ``{"ok": true, "id": …}``, or ``{"ok": false, "error": …}`` with HTTP 400 for a
refusal and 5xx when busy. Everything else (the backend list, the credential checks, the
operations validation accepts) comes from :attr:`Toy.description`.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

import orjson

from cardq.backends.base import Description, OperationSpec
from cardq.backends.context import BackendContext
from cardq.backends.transport import JSON_HEADERS, HttpRequest
from cardq.errors import Rejected, Unavailable, ValidationError
from cardq.models import Delivery, SendRequest
from cardq.ratelimit import RateScope, Window
from cardq.settings import BotSettings

TEXT_MAX = 200


class Toy:
    description: ClassVar[Description] = Description(
        kind="toy",
        operations={"send": OperationSpec(msg_types=frozenset({"text"}), required=("room",))},
        credentials=("key",),
        default_windows=(Window(10, 1.0),),
    )

    def __init__(self, settings: BotSettings, ctx: BackendContext) -> None:
        self.bot = settings.name
        self._ctx = ctx
        self._base = (settings.base_url or "https://toy.invalid").rstrip("/")
        self._key = settings.credentials["key"].secret()
        self._timeout = settings.timeout_s or ctx.timeout_s
        self._windows = self.description.destination_windows(settings)

    @staticmethod
    def check(request: SendRequest) -> None:
        text = request.content.get("text")
        if len(text) > TEXT_MAX:
            raise ValidationError.content("content.text", f"over {TEXT_MAX} characters")

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        return f"room:{request.target['room']}"

    def rate_scopes(self, request: SendRequest) -> tuple[RateScope, ...]:
        key = f"toy/{request.target['room']}"
        return (RateScope(key=key, kind="destination", windows=self._windows),)

    async def send(self, request: SendRequest) -> Delivery:
        url = f"{self._base}/rooms/{quote(request.target['room'], safe='')}/messages"
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {self._key.reveal()}"}
        body = orjson.dumps({"text": request.content["text"], "id": request.idempotency_key})
        response = await self._ctx.transport.handle(
            HttpRequest("POST", url, body, headers, self._timeout)
        )
        data = response.json()
        if isinstance(data, dict) and data.get("ok") is True:
            return Delivery(message_id=str(data["id"]))
        if response.status >= 500:
            raise Unavailable(f"toy answered HTTP {response.status}", http_status=response.status)
        error = data.get("error") if isinstance(data, dict) else None
        raise Rejected(f"refused by toy ({error})", http_status=response.status)
