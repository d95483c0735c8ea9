"""MindOffice robot group message (``backend-facts.md`` §6, seeds 001 and 002).

Headers ``app-id``, ``app-secret`` and ``x-request-id``; the request id is the idempotency
key, the same on every retry, so the platform can drop a resend. ``code`` 200 is success,
any other code a failure. Rate limits and error codes are not documented: no limit is
applied unless configured, 5xx/timeouts/429 are retried, other codes are final.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, ClassVar

import orjson

from ..errors import DeliveryError, Rejected, Throttled, Unavailable, ValidationError
from ..models import Delivery, SendRequest
from ..ratelimit import RateScope
from ..settings import BotSettings
from .base import Description, OperationSpec
from .context import BackendContext
from .transport import JSON_HEADERS, HttpRequest, Response

MINDOFFICE = "https://open.mindoffice.cn"
PATH = "/open-platform/api/robot/group/send/card_message"
HEADER_COLOURS = frozenset({"red", "green", "blue", "purple", "orange"})
BUTTON_TYPES = {"view": "url", "click": "event"}
#: ``<at user_id="ID">name</at>`` or with single quotes, exactly: no extra spaces.
_MENTION = re.compile(r"""<at user_id=(["'])[^"'\s<>]+\1>[^<]*</at>""")
_MENTION_START = re.compile(r"<at[\s>]")


def check_mentions(text: str, field: str) -> None:
    well_formed = {m.start() for m in _MENTION.finditer(text)}
    for found in _MENTION_START.finditer(text):
        if found.start() not in well_formed:
            snippet = text[found.start() : found.start() + 40]
            raise ValidationError.content(
                field,
                f'malformed mention {snippet!r}: write <at user_id="ID">name</at> '
                "with no extra spaces",
                "invalid_mention",
            )


def check_card(card: dict[str, Any]) -> None:
    elements = card.get("elements")
    if not isinstance(elements, list):
        raise ValidationError.content("content.elements", "required (a list) in a MindOffice card")
    header = card.get("header")
    if isinstance(header, dict):
        colour = header.get("template")
        if colour is not None and colour not in HEADER_COLOURS:
            raise ValidationError.content(
                "content.header.template",
                f"{colour!r} is not a MindOffice header colour "
                f"({', '.join(sorted(HEADER_COLOURS))})",
            )
    for i, element in enumerate(elements):
        if not isinstance(element, dict):
            continue
        where = f"content.elements[{i}]"
        if element.get("tag") == "markdown" and isinstance(element.get("content"), str):
            check_mentions(element["content"], f"{where}.content")
        actions = element.get("action")
        if element.get("tag") == "action" and isinstance(actions, list):
            for j, button in enumerate(actions):
                if not isinstance(button, dict) or button.get("tag") != "button":
                    continue
                kind = button.get("type")
                needs = BUTTON_TYPES.get(kind) if isinstance(kind, str) else None
                if needs is None:
                    raise ValidationError.content(
                        f"{where}.action[{j}].type", f"must be view or click, got {kind!r}"
                    )
                if not button.get(needs):
                    raise ValidationError.content(
                        f"{where}.action[{j}].{needs}", f"required for a {kind} button"
                    )


def classify(response: Response, retry_codes: Collection[int] = ()) -> Delivery:
    """MindOffice's answer → a :class:`Delivery`, or the error to raise.

    ``code`` 200 (number or string) with HTTP below 400 is success. The platform documents
    no other code, so: HTTP 429 is a throttle, 5xx or a body that is not JSON is passing
    (``Unavailable``), and every other code is final (``Rejected``) unless the operator
    listed it in the bot's ``retry_codes``.
    """
    data = response.json()
    code = data.get("code") if isinstance(data, dict) else None
    if response.status < 400 and code in (200, "200"):
        assert isinstance(data, dict)
        payload = data.get("data")
        message_id = payload.get("message_id") if isinstance(payload, dict) else None
        return Delivery(message_id=str(message_id) if message_id else None, platform_code=200)
    msg = str(data.get("msg", ""))[:500] if isinstance(data, dict) else ""
    platform_code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    cls: type[DeliveryError] = Rejected
    message = f"refused by MindOffice (code {code}: {msg})"
    if response.status == 429:
        cls, message = Throttled, f"throttled by MindOffice (HTTP {response.status})"
    elif response.status >= 500 or data is None:
        cls, message = Unavailable, f"MindOffice answered HTTP {response.status}"
    elif platform_code in retry_codes:
        cls, message = Unavailable, f"MindOffice code {code} (configured as retryable)"
    raise cls(message, platform_code=platform_code, platform_msg=msg, http_status=response.status)


class MindOfficeGroup:
    description: ClassVar[Description] = Description(
        kind="mindoffice_group",
        operations={
            "send": OperationSpec(
                msg_types=frozenset({"text", "markdown", "rich_text", "interactive"}),
                required=("group_id",),
            ),
        },
        credentials=("app_secret",),
        has_app=True,
    )

    def __init__(self, settings: BotSettings, ctx: BackendContext) -> None:
        self.bot = settings.name
        self._ctx = ctx
        self._url = (settings.base_url or MINDOFFICE).rstrip("/") + PATH
        self._timeout = settings.timeout_s or ctx.timeout_s
        self._retry_codes = frozenset(settings.retry_codes)
        assert settings.app_id is not None
        secret = settings.credentials["app_secret"].secret()
        self._headers = {
            **JSON_HEADERS,
            "app-id": settings.app_id,
            "app-secret": secret.reveal(),
        }
        self._windows = self.description.destination_windows(settings)
        app_windows = self.description.app_windows_for(settings)
        self._app_scope = (
            ()
            if not app_windows
            else (
                RateScope(
                    key=f"mindoffice-app/{settings.app_id}",
                    kind="app",
                    windows=app_windows,
                    pooled=True,
                ),
            )
        )

    @staticmethod
    def check(request: SendRequest) -> None:
        content = request.content
        if request.msg_type in ("text", "markdown"):
            check_mentions(content["text"], "content.text")
        elif request.msg_type == "rich_text":
            if not isinstance(content, list):
                raise ValidationError.content(
                    "content", "rich_text content is a list of paragraph nodes"
                )
        elif request.msg_type == "interactive":
            check_card(content)

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        return f"group:{request.target['group_id']}"

    def rate_scopes(self, request: SendRequest) -> tuple[RateScope, ...]:
        if not self._windows:
            return self._app_scope
        key = f"mindoffice/{request.target['group_id']}"
        # Keyed by group, not by robot: every robot in the group shares it.
        scope = RateScope(key=key, kind="destination", windows=self._windows, pooled=True)
        return (scope, *self._app_scope)

    async def send(self, request: SendRequest) -> Delivery:
        body = {
            "group_id": request.target["group_id"],
            "msg_type": request.msg_type,
            "content": orjson.dumps(request.content).decode(),
        }
        headers = {**self._headers, "x-request-id": request.idempotency_key}
        response = await self._ctx.transport.handle(
            HttpRequest("POST", self._url, orjson.dumps(body), headers, self._timeout)
        )
        return classify(response, self._retry_codes)
