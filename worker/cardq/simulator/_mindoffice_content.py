"""What the MindOffice robot accepts as message content (facts §6, seeds 001 and 002).

MindOffice documents shapes, not error codes: a refusal here is HTTP 200 with
``{"code": 400, "msg": ...}`` (any non-200 code is a failure, the page says), an
invented but documented-as-such answer. Decoding is lenient about raw control characters
inside strings because seed 001's own interactive example carries a raw newline in its
content string and the platform accepts it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from ._answers import Refusal

MSG_TYPES = frozenset({"text", "markdown", "rich_text", "interactive"})
#: Each button type and the field it needs (seed 002).
BUTTON_NEEDS = {"view": "url", "click": "event"}


def bad_request(msg: str) -> Refusal:
    return Refusal(400, msg, 200)


def loads_lenient(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text, strict=False)


def content(msg_type: Any, raw: Any) -> Any:
    """Check ``msg_type`` and the ``content`` string; return the decoded content."""
    if not isinstance(msg_type, str) or msg_type not in MSG_TYPES:
        raise bad_request(f"msg_type must be one of {', '.join(sorted(MSG_TYPES))}")
    if not isinstance(raw, str):
        raise bad_request("content must be a JSON-encoded string")
    try:
        decoded = loads_lenient(raw)
    except ValueError:
        raise bad_request("content is not valid JSON") from None
    if msg_type in ("text", "markdown"):
        if not isinstance(decoded, dict) or not isinstance(decoded.get("text"), str):
            raise bad_request(f'{msg_type} content must be {{"text": "..."}}')
    elif msg_type == "rich_text":
        if not isinstance(decoded, list):
            raise bad_request("rich_text content must be a list of paragraph nodes")
    else:
        problem = card_problem(decoded)
        if problem is not None:
            raise bad_request(problem)
    return decoded


def card_problem(card: Any) -> str | None:
    if not isinstance(card, dict):
        return "an interactive card must be a JSON object"
    elements = card.get("elements")
    if not isinstance(elements, list):
        return "an interactive card needs elements (a list)"
    for i, element in enumerate(elements):
        if not isinstance(element, dict) or element.get("tag") != "action":
            continue
        buttons = element.get("action")
        if not isinstance(buttons, list):
            return f"elements[{i}].action must be a list of buttons"
        for j, button in enumerate(buttons):
            if not isinstance(button, dict) or button.get("tag") != "button":
                continue
            kind = button.get("type")
            needs = BUTTON_NEEDS.get(kind) if isinstance(kind, str) else None
            if needs is None:
                return f"elements[{i}].action[{j}].type must be view or click"
            if not button.get(needs):
                return f"elements[{i}].action[{j}].{needs} is required for a {kind} button"
    return None
