"""Feishu/Lark ephemeral cards: visible to one member of a group (facts §4, seed 004).

The card is an *object* here, not a string. 40 sends per second per group (answered like
the IM API's target limit, 230020: the page does not say which code) plus the app's
budget, which it shares with the IM API. Deleting an unknown or deleted card is 18051.
"""

from __future__ import annotations

from functools import partial

import orjson
from aiohttp import web

from ._answers import Refusal, decode_object
from ._feishu_auth import tenant_app
from ._feishu_content import CARD_MAX_BYTES, card_problem, card_refusal
from ._state import State

BACKEND = "feishu_ephemeral"
SEND = "/open-apis/ephemeral/v1/send"
DELETE = "/open-apis/ephemeral/v1/delete"
USER_FIELDS = ("open_id", "user_id", "email")
ALREADY_DELETED = 18051


def routes(state: State) -> list[web.RouteDef]:
    return [
        web.post(SEND, state.endpoint(BACKEND, partial(_send, state))),
        web.post(DELETE, state.endpoint(BACKEND, partial(_delete, state))),
    ]


def _send(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    app = tenant_app(state, request)
    body = decode_object(raw)
    if body is None:
        raise Refusal(9499, "Bad Request: body is not a JSON object")
    chat_id = body.get("chat_id")
    if not isinstance(chat_id, str) or not chat_id:
        raise Refusal(230001, "invalid param: chat_id is required")
    config = state.config
    state.take(
        (f"app:{app}", config.app_limits, state.app_throttle),
        (f"eph:{chat_id}", config.ephemeral_group_limits, state.target_throttle),
    )
    if not any(isinstance(body.get(name), str) and body[name] for name in USER_FIELDS):
        raise Refusal(230001, "invalid param: one of open_id, user_id, email is required")
    if body.get("msg_type") != "interactive":
        raise Refusal(230001, 'invalid param: msg_type must be "interactive"')
    card = body.get("card")
    if not isinstance(card, dict):
        raise Refusal(230001, "invalid param: card must be a JSON object (not a string)")
    problem = card_problem(card)
    if problem is not None:
        raise card_refusal(problem)
    if len(raw) > CARD_MAX_BYTES and len(orjson.dumps(card)) > CARD_MAX_BYTES:
        raise Refusal(230025, f"The card is over the {CARD_MAX_BYTES // 1024} KB limit")
    message_id = state.new_id("om_")
    state.ephemeral[message_id] = app
    state.accept(BACKEND, "send", f"chat:{chat_id}", None, body, message_id, card, app)
    return state.ack(BACKEND, {"code": 0, "msg": "ok", "data": {"message_id": message_id}})


def _delete(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    app = tenant_app(state, request)
    body = decode_object(raw)
    if body is None:
        raise Refusal(9499, "Bad Request: body is not a JSON object")
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise Refusal(230001, "invalid param: message_id is required")
    state.take((f"app:{app}", state.config.app_limits, state.app_throttle))
    if state.ephemeral.pop(message_id, None) is None:
        raise Refusal(ALREADY_DELETED, "the message has already been deleted or does not exist")
    state.accept(BACKEND, "delete", f"message:{message_id}", None, body, message_id, None, app)
    return state.ack(BACKEND, {"code": 0, "msg": "ok", "data": {}})
