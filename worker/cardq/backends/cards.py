"""Documented Feishu/Lark card rules, checked before a card is sent.

Only what the platform documents as failing is refused: size, the form of the card
(JSON 1.0, JSON 2.0 or a template), the 2.0 element count, at most 5 tables, header
colours, and the components card JSON 2.0 removed (1.0 ignores what it does not support,
2.0 refuses it, and senders still carry 1.0 habits into 2.0 cards). Components we do not
know pass untouched: the platform adds new ones often.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ValidationError

CARD_MAX_BYTES = 30 * 1024
TEXT_MAX_BYTES = 150 * 1024
CARD_V2_MAX_ELEMENTS = 200
CARD_MAX_TABLES = 5
FEISHU_HEADER_COLOURS = frozenset(
    {
        "blue",
        "wathet",
        "turquoise",
        "green",
        "yellow",
        "orange",
        "red",
        "carmine",
        "violet",
        "purple",
        "indigo",
        "grey",
        "default",
    }
)

#: Tags card JSON 2.0 removed that real senders still put into 2.0 cards (platform facts §5),
#: with what to do instead. Anywhere in a 2.0 card: the platform refuses them at any depth.
CARD_V2_REMOVED_TAGS = {
    "action": "card JSON 2.0 removed the action module: put its buttons straight into "
    "body.elements",
}
#: Top-level properties card JSON 2.0 removed, likewise.
CARD_V2_REMOVED_PROPERTIES = {
    "i18n_elements": "card JSON 2.0 removed top-level i18n_elements: it has its own i18n",
}


def check_card(card: Any, field: str) -> None:
    if not isinstance(card, dict):
        raise ValidationError.content(field, "a card must be a JSON object")
    raw = orjson.dumps(card)
    size = len(raw)
    if size > CARD_MAX_BYTES:
        raise ValidationError.content(
            field, f"card is {size} bytes, over the platform's {CARD_MAX_BYTES}", "card_too_large"
        )
    if card.get("type") == "template":
        data = card.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("template_id"), str):
            raise ValidationError.content(
                f"{field}.data.template_id", "required for a template card"
            )
        return
    schema = card.get("schema")
    if schema is not None and schema != "2.0":
        raise ValidationError.content(
            f"{field}.schema", f'must be "2.0" when given, got {schema!r}'
        )
    if schema == "2.0":
        for name, reason in CARD_V2_REMOVED_PROPERTIES.items():
            if name in card:
                raise ValidationError.content(f"{field}.{name}", reason, "card_v2_removed")
        body = card.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("elements"), list):
            raise ValidationError.content(
                f"{field}.body.elements", "required (a list) in card JSON 2.0"
            )
        if "elements" in card:
            raise ValidationError.content(
                f"{field}.elements", "card JSON 2.0 puts elements under body"
            )
        count = count_components(body["elements"])
        if count > CARD_V2_MAX_ELEMENTS:
            raise ValidationError.content(
                f"{field}.body.elements",
                f"{count} components, over the {CARD_V2_MAX_ELEMENTS} card JSON 2.0 allows",
                "card_too_many_elements",
            )
        if any(f'"{tag}"'.encode() in raw for tag in CARD_V2_REMOVED_TAGS):
            _refuse_removed_tags(body["elements"], f"{field}.body.elements")
    else:
        if not any(k in card for k in ("elements", "i18n_elements")):
            raise ValidationError.content(
                f"{field}.elements", "card JSON 1.0 needs elements or i18n_elements"
            )
        for name in ("elements",):
            if name in card and not isinstance(card[name], list):
                raise ValidationError.content(f"{field}.{name}", "must be a list")
        if "i18n_elements" in card and not isinstance(card["i18n_elements"], dict):
            raise ValidationError.content(
                f"{field}.i18n_elements", "must be an object keyed by locale"
            )
    if b'"table"' in raw:  # walk the card only when it may hold a table
        tables = count_tables(card)
        if tables > CARD_MAX_TABLES:
            raise ValidationError.content(
                field,
                f"{tables} tables, over the {CARD_MAX_TABLES} a card may hold",
                "card_too_many_tables",
            )
    header = card.get("header")
    if isinstance(header, dict):
        colour = header.get("template")
        if colour is not None and colour not in FEISHU_HEADER_COLOURS:
            raise ValidationError.content(
                f"{field}.header.template",
                f"{colour!r} is not a Feishu header colour "
                f"({', '.join(sorted(FEISHU_HEADER_COLOURS))})",
            )


_TEXT_OBJECTS = frozenset({"plain_text", "lark_md"})


def _refuse_removed_tags(elements: list[Any], field: str) -> None:
    """The first removed tag in document order, named by its path, so the sender finds it."""
    stack: list[tuple[Any, str]] = [(elements, field)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            tag = node.get("tag")
            if isinstance(tag, str) and tag in CARD_V2_REMOVED_TAGS:
                raise ValidationError.content(
                    f"{path}.tag", CARD_V2_REMOVED_TAGS[tag], "card_v2_removed"
                )
            children = [(v, f"{path}.{k}") for k, v in node.items() if isinstance(v, dict | list)]
        elif isinstance(node, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))


def count_components(elements: list[Any]) -> int:
    """Every dict with a ``tag`` below ``elements``, containers' children included."""
    count = 0
    stack: list[Any] = list(elements)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "tag" in node and node["tag"] not in _TEXT_OBJECTS:
                count += 1
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(node)
    return count


def count_tables(node: Any) -> int:
    """Components with ``"tag": "table"`` anywhere below ``node``."""
    count = 0
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("tag") == "table":
                count += 1
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(item)
    return count


def check_text_size(content: Any, field: str, limit: int = TEXT_MAX_BYTES) -> None:
    size = len(orjson.dumps(content))
    if size > limit:
        raise ValidationError.content(
            field, f"{size} bytes, over the platform's {limit}", "content_too_large"
        )
