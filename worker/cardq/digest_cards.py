"""Digest cards: many queued requests of one destination as one "N alerts" card.

Pure functions (no I/O), so the card a platform will get can be tested byte for byte.
Each merged request becomes one line: its title and, when it has one, its link. The
title is what a person saw first in the original (a card's header, a post's title, the
first line of a text); the link is the first ``http(s)`` address in it (a button's
``url``, a post's ``a`` node, a link in markdown). Nothing else of the original is kept:
a digest says *what* happened while the chat was flooded, the link says where to look.

The card is built for the platform the originals were going to: a Feishu card JSON 2.0
when any original was one (the chat's client evidently renders them), else JSON 1.0; a
MindOffice interactive card (seed 002: ``header.title`` and ``markdown`` elements). A
digest that would not fit the platform's size limit (webhook body 20 KB, cards 30 KB;
MindOffice documents none, so its cards are held to the same 30 KB) is split into several
cards rather than truncated: nobody loses an alert to the size limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .models import SendRequest

#: Bytes a card may take on each backend, less room for the envelope around it (the
#: webhook's ``msg_type``/``timestamp``/``sign``, the IM API's JSON-string escaping of
#: quotes and non-ASCII, which the markdown below keeps rare).
CARD_BUDGET = {
    "feishu_webhook": 20 * 1024 - 1024,
    "feishu_message": 30 * 1024 - 2048,
    "feishu_ephemeral": 30 * 1024 - 1024,
    "mindoffice_group": 30 * 1024 - 2048,
}
TITLE_MAX = 120
PER_CARD = 150
LINK_MAX = 1000
_URL = re.compile(r"https?://[^\s\"'<>()\[\]]+")
#: Characters that would turn a title into markdown or a MindOffice mention.
_MARKUP = re.compile(r"[\[\]()<>*_`~#|\\]")
_SPACE = re.compile(r"\s+")
#: A mention in a title is kept as the name it shows (``@name``), never as markup.
_MENTION = re.compile(r"<at\b[^>]*>(.*?)</at>")


@dataclass(frozen=True, slots=True)
class Item:
    title: str
    link: str | None


@dataclass(frozen=True, slots=True)
class DigestCard:
    """One card of a digest: what to send, and how many of the digest's items it holds
    (in order: the first card holds items ``[0, size)``, the next the following ones)."""

    msg_type: str
    content: dict[str, Any]
    size: int


def item_of(request: SendRequest) -> Item:
    title = _MENTION.sub(r"@\1", _title(request.msg_type, request.content) or "")
    title = _SPACE.sub(" ", _MARKUP.sub(" ", title)).strip()[:TITLE_MAX] or request.request_id
    link = _first_link(request.content)
    return Item(title, link[:LINK_MAX] if link else None)


def build_cards(backend: str, key: str, originals: Sequence[SendRequest]) -> list[DigestCard]:
    """The cards that carry ``originals`` (all of one destination), in order."""
    items = [item_of(request) for request in originals]
    v2 = any(_is_v2(r) for r in originals)
    budget = CARD_BUDGET.get(backend, CARD_BUDGET["feishu_message"])
    ranges = list(_ranges(backend, key, items, v2, budget))
    parts = len(ranges)
    return [
        DigestCard("interactive", _card(backend, key, items[a:b], v2, (i + 1, parts)), b - a)
        for i, (a, b) in enumerate(ranges)
    ]


def _ranges(
    backend: str, key: str, items: Sequence[Item], v2: bool, budget: int
) -> Iterator[tuple[int, int]]:
    """Greedy: as many items per card as fit the budget (measured with room for a
    "part i/n" heading), at most ``PER_CARD`` (card JSON 2.0 allows 200 components, and
    this puts one per item). An item too big alone still gets a card of its own: its
    title and link are bounded, so that card stays far below every limit."""
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and end - start < PER_CARD:
            bigger = _card(backend, key, items[start : end + 1], v2, (99, 99))
            if len(orjson.dumps(bigger)) > budget:
                break
            end += 1
        yield start, end
        start = end


def _card(
    backend: str,
    key: str,
    items: Sequence[Item],
    v2: bool,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    count = f"{len(items)} alert" if len(items) == 1 else f"{len(items)} alerts"
    heading = f"{count}: {_SPACE.sub(' ', _MARKUP.sub(' ', key)).strip()[:100]}"
    if part is not None and part[1] > 1:
        heading += f" (part {part[0]}/{part[1]})"
    lines = [_line(item) for item in items]
    note = "Sent as one digest while this chat was behind its rate limit."
    if backend == "mindoffice_group":
        return {
            "header": {"title": {"content": heading}, "template": "orange"},
            "elements": [
                {"tag": "markdown", "content": "\n".join(lines)},
                {"tag": "markdown", "content": note},
            ],
        }
    header = {"title": {"tag": "plain_text", "content": heading}, "template": "orange"}
    if v2:
        elements = [{"tag": "markdown", "content": line} for line in lines]
        elements.append({"tag": "markdown", "content": f"<font color='grey'>{note}</font>"})
        return {
            "schema": "2.0",
            "config": {"update_multi": True},
            "header": header,
            "body": {"elements": elements},
        }
    return {
        "config": {"wide_screen_mode": True, "update_multi": True},
        "header": header,
        "elements": [
            {"tag": "markdown", "content": "\n".join(lines)},
            {"tag": "note", "elements": [{"tag": "plain_text", "content": note}]},
        ],
    }


def _line(item: Item) -> str:
    if item.link is None:
        return f"- {item.title}"
    link = item.link.replace(" ", "%20").replace(")", "%29")
    return f"- [{item.title}]({link})"


def _is_v2(request: SendRequest) -> bool:
    content = request.content
    return isinstance(content, dict) and content.get("schema") == "2.0"


def _title(msg_type: str | None, content: Any) -> str | None:
    if not isinstance(content, dict):  # MindOffice rich_text: a list of paragraph nodes
        return _first_text(content)
    header = content.get("header")
    if isinstance(header, dict):
        title = header.get("title")
        if isinstance(title, dict) and isinstance(title.get("content"), str):
            return str(title["content"])
        if isinstance(title, str):
            return title
    if msg_type == "post":
        locales = content.get("post", content)
        if isinstance(locales, dict):
            for locale in locales.values():
                title = locale.get("title") if isinstance(locale, dict) else None
                if isinstance(title, str) and title:
                    return title
    text = content.get("text")
    if isinstance(text, str):
        return text.strip().split("\n", 1)[0]
    return _first_text(content)


def _first_text(node: Any) -> str | None:
    """The first human text in a card or rich text: a ``content`` or ``text`` string."""
    if isinstance(node, dict):
        for name in ("content", "text"):
            value = node.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip().split("\n", 1)[0]
        for value in node.values():
            found = _first_text(value)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _first_text(value)
            if found:
                return found
    return None


def _first_link(node: Any) -> str | None:
    """The first http(s) address: a ``url``/``href`` field, or one inside a string."""
    if isinstance(node, dict):
        for name in ("url", "href", "pc_url", "default_url"):
            value = node.get(name)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                return value
        values: Any = node.values()
    elif isinstance(node, list):
        values = node
    elif isinstance(node, str):
        found = _URL.search(node)
        return found.group(0) if found else None
    else:
        return None
    for value in values:
        link = _first_link(value)
        if link:
            return link
    return None
