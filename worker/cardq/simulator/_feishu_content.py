"""What Feishu/Lark accepts as message content and cards (facts §1, §2, §4, §5).

Only documented rules refuse a message: the content string, the fields each
``msg_type`` needs, a post's paragraphs, the three card forms, 200 components in a 2.0
card, 5 tables, the components card JSON 2.0 removed, and the sizes. Unknown components
pass, as on the platform, which adds new ones often.
Header colours and the 5-level nesting rule are *not* enforced: the pages list them but
do not say the platform refuses a card that breaks them.
"""

from __future__ import annotations

from typing import Any

import orjson

from ._answers import Refusal

CARD_MAX_BYTES = 30 * 1024
TEXT_MAX_BYTES = 150 * 1024
CARD_V2_MAX_COMPONENTS = 200
CARD_MAX_TABLES = 5
UUID_MAX = 50

IM_MSG_TYPES = frozenset(
    {
        "text",
        "post",
        "image",
        "file",
        "audio",
        "media",
        "sticker",
        "interactive",
        "share_chat",
        "share_user",
    }
)
#: The one field each simple msg_type's content must hold (IM API).
IM_KEY_FIELD = {
    "image": "image_key",
    "file": "file_key",
    "audio": "file_key",
    "media": "file_key",
    "sticker": "file_key",
    "share_chat": "chat_id",
    "share_user": "user_id",
}
RECEIVE_ID_TYPES = frozenset({"open_id", "union_id", "user_id", "email", "chat_id"})
_TEXT_OBJECTS = frozenset({"plain_text", "lark_md"})
#: What card JSON 2.0 no longer supports and senders still write (facts §5): the platform
#: answers 230099 with ``ext=ErrCode: 200861`` naming the tag or property.
V2_REMOVED_TAGS = frozenset({"action"})
V2_REMOVED_PROPERTIES = frozenset({"i18n_elements"})
V2_UNSUPPORTED = "ext=ErrCode: 200861, cards of schema V2 no longer support this capability"


def card_problem(card: Any, raw: str | None = None) -> str | None:
    """Why the platform would refuse ``card``, or ``None``.

    ``raw`` is the card's JSON text when at hand: a 1.0 card whose text does not mention
    ``"table"`` is not walked at all (the hot path of a benchmark).
    """
    if not isinstance(card, dict):
        return "a card must be a JSON object"
    if card.get("type") == "template":
        data = card.get("data")
        template_id = data.get("template_id") if isinstance(data, dict) else None
        if not isinstance(template_id, str) or not template_id:
            return "a template card needs data.template_id"
        return None
    schema = card.get("schema")
    if schema is not None:
        if schema != "2.0":
            return f"unknown card schema {schema!r}"
        for name in V2_REMOVED_PROPERTIES:
            if name in card:
                return f"{V2_UNSUPPORTED}; ErrorValue: unsupported property {name}"
        body = card.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("elements"), list):
            return "card JSON 2.0 needs body.elements (a list)"
        if "elements" in card:
            return "card JSON 2.0 puts elements under body, not at the top level"
        components, tables, removed = _count(body["elements"])
        if removed is not None:
            return f"{V2_UNSUPPORTED}; ErrorValue: unsupported tag {removed}"
        if components > CARD_V2_MAX_COMPONENTS:
            return f"{components} components, over the {CARD_V2_MAX_COMPONENTS} of card JSON 2.0"
    else:
        elements = card.get("elements")
        i18n = card.get("i18n_elements")
        if elements is None and i18n is None:
            return "card JSON 1.0 needs elements or i18n_elements"
        if elements is not None and not isinstance(elements, list):
            return "elements must be a list"
        if i18n is not None and not isinstance(i18n, dict):
            return "i18n_elements must be an object keyed by locale"
        tables = 0 if raw is not None and '"table"' not in raw else _count(card)[1]
    if tables > CARD_MAX_TABLES:
        return f"{tables} tables, over the {CARD_MAX_TABLES} a card may hold"
    return None


def _count(node: Any) -> tuple[int, int, str | None]:
    """Components (dicts with a ``tag`` that is not a text object) and tables below node,
    and a tag card JSON 2.0 removed if one is there (one walk for all three)."""
    components = tables = 0
    removed: str | None = None
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            tag = item.get("tag")
            if tag is not None and tag not in _TEXT_OBJECTS:
                components += 1
                if tag == "table":
                    tables += 1
                elif tag in V2_REMOVED_TAGS:
                    removed = tag
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(item)
    return components, tables, removed


def post_problem(locales: Any) -> str | None:
    """Why the platform would refuse a post's locales object, or ``None``: each locale's
    ``content`` is a list of paragraphs, each a list of nodes (facts §5)."""
    if not isinstance(locales, dict) or not locales:
        return "post content is an object keyed by locale"
    for locale, post in locales.items():
        if not isinstance(post, dict):
            return f"post {locale} must be an object with title and content"
        paragraphs = post.get("content", [])
        if not isinstance(paragraphs, list):
            return f"post {locale} content must be a list of paragraphs"
        for paragraph in paragraphs:
            if not isinstance(paragraph, list):
                return f"post {locale} content must be a list of paragraphs, each a list of nodes"
            if not all(isinstance(node, dict) for node in paragraph):
                return f"post {locale} paragraph nodes must be objects"
    return None


def is_shared(card: dict[str, Any]) -> bool:
    """Whether the card may be updated: ``config.update_multi`` (default true in 2.0).

    A template's config is not visible in the request: not documented, treated as shared.
    """
    if card.get("type") == "template":
        return True
    config = card.get("config")
    flag = config.get("update_multi") if isinstance(config, dict) else None
    if card.get("schema") == "2.0":
        return flag is not False
    return flag is True


def utf8_size_over(text: str, limit: int) -> bool:
    """``len(text.encode()) > limit`` without encoding when the length alone decides."""
    n = len(text)
    if n > limit:
        return True
    if 4 * n <= limit:
        return False
    return len(text.encode()) > limit


def card_refusal(reason: str) -> Refusal:
    """230099; a reason that carries the platform's sub-code (``ext=ErrCode: N``) keeps it
    where the platform puts it, so a client can read the sub-code."""
    if reason.startswith("ext="):
        return Refusal(230099, f"Failed to create card content, {reason}")
    return Refusal(230099, f"Failed to create card content, ErrMsg: {reason}")


def im_content(msg_type: Any, content: Any) -> Any:
    """Check an IM ``msg_type`` + ``content`` string pair; return the decoded content."""
    if not isinstance(msg_type, str) or msg_type not in IM_MSG_TYPES:
        raise Refusal(230001, f"invalid param: unknown msg_type {msg_type!r}")
    if not isinstance(content, str):
        raise Refusal(230001, "invalid param: content must be a JSON-encoded string")
    limit = TEXT_MAX_BYTES if msg_type == "text" else CARD_MAX_BYTES
    if msg_type in ("text", "post", "interactive") and utf8_size_over(content, limit):
        raise Refusal(230025, f"The message content is over the {limit // 1024} KB limit")
    try:
        decoded = orjson.loads(content)
    except orjson.JSONDecodeError:
        if msg_type == "interactive":
            raise Refusal(
                230099, "Failed to create card content, ext=ErrCode: 200621, card json parse error"
            ) from None
        raise Refusal(230001, "invalid param: content is not valid JSON") from None
    if msg_type == "interactive":
        problem = card_problem(decoded, content)
        if problem is not None:
            raise card_refusal(problem)
    elif msg_type == "text":
        if not isinstance(decoded, dict) or not isinstance(decoded.get("text"), str):
            raise Refusal(230001, 'invalid param: text content needs {"text": "..."}')
    elif msg_type == "post":
        problem = post_problem(decoded)
        if problem is not None:
            raise Refusal(230001, f"invalid param: {problem}")
    else:
        key = IM_KEY_FIELD[msg_type]
        if not isinstance(decoded, dict) or not isinstance(decoded.get(key), str):
            raise Refusal(230001, f"invalid param: {msg_type} content needs {key}")
    return decoded


def check_uuid(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > UUID_MAX:
        raise Refusal(230001, f"invalid param: uuid must be a string of 1 to {UUID_MAX} characters")
    return value
