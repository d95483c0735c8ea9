"""Feishu/Lark IM API: send, reply, update a card, recall a message (facts §2, seed 003).

Each request takes from the app's window (gateway answer: HTTP 429, 99991400) and from
its target's (HTTP 400, 230020): the receive id for a send, shared by every app as the
platform documents for groups; the message id for a reply or an update.

A reply to a message this simulator never sent is accepted: it cannot know messages sent
before it started. An update is stricter, as documented: the message must exist, be
the same app's, be a shared card (``update_multi``), and the new card must be shared too,
not recalled (230011) nor older than 14 days (230031). A recall (``DELETE``) takes the
app's window; only the sending app may recall its message, and a recalled or unknown
message answers as an update to it would (230011, 230110). The tenant's recall time limit
is set by its administrator and not documented: the simulator has none.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from aiohttp import web

from ._answers import Refusal, decode_object
from ._feishu_auth import tenant_app
from ._feishu_content import (
    RECEIVE_ID_TYPES,
    card_refusal,
    check_uuid,
    im_content,
    is_shared,
)
from ._model import ImMessage
from ._state import CARD, NOT_CARD, SHARED_CARD, State

BACKEND = "feishu_message"
SEND = "/open-apis/im/v1/messages"
REPLY = "/open-apis/im/v1/messages/{message_id}/reply"
UPDATE = "/open-apis/im/v1/messages/{message_id}"


def routes(state: State) -> list[web.RouteDef]:
    return [
        web.post(SEND, state.endpoint(BACKEND, partial(_send, state))),
        web.post(REPLY, state.endpoint(BACKEND, partial(_reply, state))),
        web.patch(UPDATE, state.endpoint(BACKEND, partial(_update, state))),
        web.delete(UPDATE, state.endpoint(BACKEND, partial(_recall, state))),
    ]


def _body(raw: bytes) -> dict[str, Any]:
    body = decode_object(raw)
    if body is None:
        raise Refusal(9499, "Bad Request: body is not a JSON object")
    return body


def _send(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    app = tenant_app(state, request)
    body = _body(raw)
    id_type = request.query.get("receive_id_type")
    if id_type not in RECEIVE_ID_TYPES:
        raise Refusal(
            230001,
            "invalid param: receive_id_type must be one of " + ", ".join(sorted(RECEIVE_ID_TYPES)),
        )
    receive_id = body.get("receive_id")
    if not isinstance(receive_id, str) or not receive_id:
        raise Refusal(230001, "invalid param: receive_id is required")
    config = state.config
    state.take(
        (f"app:{app}", config.app_limits, state.app_throttle),
        (f"im:{receive_id}", config.im_target_limits, state.target_throttle),
    )
    return _deliver(
        state,
        app,
        "send",
        f"{id_type}:{receive_id}",
        body,
        chat_id=receive_id if id_type == "chat_id" else None,
    )


def _reply(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    app = tenant_app(state, request)
    body = _body(raw)
    parent = request.match_info["message_id"]
    config = state.config
    state.take(
        (f"app:{app}", config.app_limits, state.app_throttle),
        (f"msg:{parent}", config.im_target_limits, state.target_throttle),
    )
    in_thread = body.get("reply_in_thread")
    if in_thread is not None and not isinstance(in_thread, bool):
        raise Refusal(230001, "invalid param: reply_in_thread must be a boolean")
    return _deliver(state, app, "reply", f"message:{parent}", body, parent_id=parent)


def _deliver(
    state: State,
    app: str,
    operation: str,
    destination: str,
    body: dict[str, Any],
    *,
    chat_id: str | None = None,
    parent_id: str | None = None,
) -> web.StreamResponse:
    msg_type = body.get("msg_type")
    content = im_content(msg_type, body.get("content"))
    uuid = check_uuid(body.get("uuid"))
    now = state.clock()
    if uuid is not None:
        first = state.uuids.get(f"{app}/{uuid}", now)
        if first is not None:
            state.stats.duplicates[BACKEND] += 1
            return state.ack(BACKEND, _answer(first, msg_type, app, chat_id, parent_id))
    message_id = state.new_id("om_")
    kind = NOT_CARD
    if msg_type == "interactive":
        kind = SHARED_CARD if is_shared(content) else CARD
    state.messages[message_id] = ImMessage(app, kind, destination, now, content)
    state.accept(BACKEND, operation, destination, uuid, body, message_id, content, app)
    if uuid is not None:
        state.uuids.put(f"{app}/{uuid}", message_id, state.config.uuid_dedupe_s, now)
    return state.ack(BACKEND, _answer(message_id, msg_type, app, chat_id, parent_id))


def _answer(
    message_id: str, msg_type: Any, app: str, chat_id: str | None, parent_id: str | None
) -> dict[str, Any]:
    """The documented success shape; a subset of the platform's message object."""
    now_ms = str(int(time.time() * 1000))
    data: dict[str, Any] = {
        "message_id": message_id,
        "msg_type": msg_type,
        "create_time": now_ms,
        "update_time": now_ms,
        "deleted": False,
        "updated": False,
        "sender": {"id": app, "id_type": "app_id", "sender_type": "app"},
    }
    if chat_id is not None:
        data["chat_id"] = chat_id
    if parent_id is not None:
        data["parent_id"] = data["root_id"] = parent_id
    return {"code": 0, "msg": "success", "data": data}


def _update(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    app = tenant_app(state, request)
    body = _body(raw)
    message_id = request.match_info["message_id"]
    config = state.config
    state.take(
        (f"app:{app}", config.app_limits, state.app_throttle),
        (f"msg:{message_id}", config.im_target_limits, state.target_throttle),
    )
    found = _own_message(state, app, message_id, "update")
    kind = found.kind
    if state.clock() - found.sent_at > config.card_update_window_s:
        raise Refusal(230031, "The message is too old to be updated (more than 14 days)")
    if kind == NOT_CARD:
        raise Refusal(230001, "invalid param: only interactive messages can be updated")
    if kind == CARD:
        raise card_refusal("the card is not shared: the sent card needs config.update_multi true")
    content = im_content("interactive", body.get("content"))
    if not is_shared(content):
        raise card_refusal("the new card must also declare config.update_multi true")
    found.content = content
    state.accept(BACKEND, "update", f"message:{message_id}", None, body, message_id, content, app)
    return state.ack(BACKEND, {"code": 0, "msg": "success", "data": {}})


def _recall(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    app = tenant_app(state, request)
    message_id = request.match_info["message_id"]
    state.take((f"app:{app}", state.config.app_limits, state.app_throttle))
    found = _own_message(state, app, message_id, "recall")
    found.recalled = True
    state.accept(BACKEND, "recall", f"message:{message_id}", None, {}, message_id, None, app)
    return state.ack(BACKEND, {"code": 0, "msg": "success", "data": {}})


def _own_message(state: State, app: str, message_id: str, action: str) -> ImMessage:
    found = state.messages.get(message_id)
    if found is None:
        raise Refusal(230110, "Action unavailable as the message has been deleted or is unknown")
    if found.recalled:
        raise Refusal(230011, "The message has been recalled")
    if found.app != app:
        # Documented ("the caller must be the message's sender"); the code is not: 230027.
        raise Refusal(230027, f"Lack of necessary permissions: only the sending app may {action}")
    return found
