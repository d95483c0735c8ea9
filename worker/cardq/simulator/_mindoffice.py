"""MindOffice robot group message (facts §6, seeds 001 and 002).

Headers are matched case-insensitively (seed 001's curl sends ``APP-ID``). Everything
past the success shape is undocumented and chosen here so the adapter's reading works:
bad credentials are HTTP 200 ``{"code": 401, "msg": "unauthorized"}``, a bad request is
HTTP 200 code 400, throttling (only when limits are configured) is HTTP 429, a fault is
HTTP 500. ``x-request-id`` answers a repeat with the first message id for
``mindoffice_dedupe_s`` (60 s by default).
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from ._answers import Refusal, decode_object
from ._mindoffice_content import bad_request, content
from ._state import State

BACKEND = "mindoffice_group"
PATH = "/open-platform/api/robot/group/send/card_message"


def routes(state: State) -> list[web.RouteDef]:
    return [web.post(PATH, state.endpoint(BACKEND, partial(_send, state)))]


def _send(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    headers = request.headers
    app_id = headers.get("app-id")
    secret = headers.get("app-secret")
    if not app_id or secret is None or state.robots.get(app_id) != secret:
        raise Refusal(401, "unauthorized", 200)
    body = decode_object(raw)
    if body is None:
        raise bad_request("body must be a JSON object")
    group_id = body.get("group_id")
    if not isinstance(group_id, str) or not group_id:
        raise bad_request("group_id is required")
    config = state.config
    state.take(
        (f"mo:{group_id}", config.mindoffice_limits, state.mindoffice_throttle),
        (f"moapp:{app_id}", config.mindoffice_app_limits, state.mindoffice_throttle),
    )
    decoded = content(body.get("msg_type"), body.get("content"))
    request_id = headers.get("x-request-id") or None
    now = state.clock()
    if request_id is not None:
        first = state.request_ids.get(f"{app_id}/{request_id}", now)
        if first is not None:
            state.stats.duplicates[BACKEND] += 1
            return state.ack(BACKEND, _answer(first))
    message_id = state.new_id()
    state.accept(
        BACKEND, "send", f"group:{group_id}", request_id, body, message_id, decoded, app_id
    )
    if request_id is not None:
        key = f"{app_id}/{request_id}"
        state.request_ids.put(key, message_id, config.mindoffice_dedupe_s, now)
    return state.ack(BACKEND, _answer(message_id))


def _answer(message_id: str) -> dict[str, object]:
    return {"code": 200, "msg": "OK", "data": {"message_id": message_id}}
