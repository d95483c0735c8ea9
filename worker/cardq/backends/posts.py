"""The shape of a Feishu/Lark rich-text ``post``, checked before it is sent.

A post is an object keyed by locale, each locale ``{"title", "content"}`` where ``content``
is a list of paragraphs and each paragraph a list of nodes (platform facts §5). Writing the
nodes as one flat list is a common mistake the platform refuses; catching it here gives the
producer the path to the bad value instead of a platform error code. Node tags are not
checked: unknown ones pass, as unknown card components do.
"""

from __future__ import annotations

from typing import Any

from ..errors import ValidationError


def check_post(locales: Any, field: str) -> None:
    """``locales`` is the object keyed by locale found at ``field``."""
    if not isinstance(locales, dict) or not locales:
        raise ValidationError.content(
            field, "a post is an object keyed by locale (zh_cn, en_us, …)"
        )
    for locale, post in locales.items():
        where = f"{field}.{locale}"
        if not isinstance(post, dict):
            raise ValidationError.content(where, "must be an object with title and content")
        if "content" in post:
            _check_paragraphs(post["content"], f"{where}.content")


def _check_paragraphs(paragraphs: Any, field: str) -> None:
    if not isinstance(paragraphs, list):
        raise ValidationError.content(field, "must be a list of paragraphs, each a list of nodes")
    if paragraphs and all(isinstance(p, dict) for p in paragraphs):
        raise ValidationError.content(
            field,
            "is a flat list of nodes, not a list of paragraphs: wrap each line's nodes in a "
            'list, [[{"tag": "text", …}, …], …]',
        )
    for i, paragraph in enumerate(paragraphs):
        if not isinstance(paragraph, list):
            raise ValidationError.content(
                f"{field}[{i}]",
                'must be a paragraph: a list of nodes, [{"tag": "text", …}, …]',
            )
        for j, node in enumerate(paragraph):
            if not isinstance(node, dict):
                raise ValidationError.content(
                    f"{field}[{i}][{j}]", 'must be a node: an object such as {"tag": "text", …}'
                )
