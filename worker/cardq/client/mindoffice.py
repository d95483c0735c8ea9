"""The builder for MindOffice robot groups (``mindoffice_group``)."""

from __future__ import annotations

from typing import Any, Literal, Unpack, overload

from .request import Common, MindCard, Request, RichText, Text, build


class GroupTarget(Common):
    """The MindOffice group, with the fields every request may carry."""

    group_id: str


@overload
def mindoffice_send(
    bot: str, *, msg_type: Literal["text", "markdown"], content: Text, **to: Unpack[GroupTarget]
) -> Request: ...
@overload
def mindoffice_send(
    bot: str, *, msg_type: Literal["rich_text"], content: RichText, **to: Unpack[GroupTarget]
) -> Request: ...
@overload
def mindoffice_send(
    bot: str, *, msg_type: Literal["interactive"], content: MindCard, **to: Unpack[GroupTarget]
) -> Request: ...
def mindoffice_send(bot: str, *, msg_type: str, content: Any, **to: Unpack[GroupTarget]) -> Request:
    """A MindOffice robot group message; mention as ``<at user_id="ID">name</at>``."""
    target = {"group_id": to["group_id"]}
    return build("mindoffice_group", bot, "send", target, msg_type, content, to)
