"""Feishu/Lark custom bot webhook (facts §1, seed 000).

Checked in the platform's order as far as it shows: the token, the body (≤ 20 KB, JSON),
the signature and its clock skew, then the rate windows (per token), then the message
shape and the keyword list. Errors come with HTTP 200 and a body ``code``, except the
9499 "bad request" for a body that is too large or not JSON (HTTP 400).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from ._answers import Refusal, decode_object
from ._feishu_content import card_problem, post_problem
from ._state import State

PATH = "/open-apis/bot/v2/hook/{token}"
BACKEND = "feishu_webhook"
BODY_MAX_BYTES = 20 * 1024
MAX_SKEW_S = 3600
#: msg_type -> the key its ``content`` object must hold (``interactive`` uses ``card``).
CONTENT_KEYS = {"text": "text", "post": "post", "image": "image_key", "share_chat": "share_chat_id"}
SUCCESS: dict[str, Any] = {
    "code": 0,
    "msg": "success",
    "data": {},
    "StatusCode": 0,
    "StatusMessage": "success",
}
_DATA: dict[str, Any] = {"data": {}}


def routes(state: State) -> list[web.RouteDef]:
    return [web.post(PATH, state.endpoint(BACKEND, partial(_send, state)))]


def sign(secret: str, timestamp: str) -> str:
    """The documented signature: HMAC-SHA256 keyed by ``"{timestamp}\\n{secret}"`` over b""."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def _error(code: int, msg: str) -> Refusal:
    return Refusal(code, msg, 200, extra=_DATA)


def _send(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    token = request.match_info["token"]
    bot = state.webhooks.get(token)
    if bot is None:
        raise _error(19001, "param invalid: incoming webhook access token invalid")
    if len(raw) > BODY_MAX_BYTES:
        raise Refusal(9499, f"Bad Request: body over {BODY_MAX_BYTES} bytes", 400, extra=_DATA)
    body = decode_object(raw)
    if body is None:
        raise Refusal(9499, "Bad Request: body is not a JSON object", 400, extra=_DATA)
    if bot.secret is not None:
        _check_signature(state, bot.secret, body)
    state.take((f"wh:{token}", state.config.webhook_limits, state.webhook_throttle))
    content = _message(body)
    if bot.keywords:
        text = orjson.dumps(content).decode()
        if not any(word in text for word in bot.keywords):
            raise _error(19024, "Key Words Not Found")
    state.accept(BACKEND, "send", f"webhook:{token}", None, body, None, content, token)
    return state.ack(BACKEND, SUCCESS)


def _check_signature(state: State, secret: str, body: dict[str, Any]) -> None:
    timestamp = body.get("timestamp")
    given = body.get("sign")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)
    mismatch = "sign match fail or timestamp is not within one hour from current time"
    if not isinstance(timestamp, str) or not timestamp.isdigit() or not isinstance(given, str):
        raise _error(19021, mismatch)
    if abs(state.wall_clock() - int(timestamp)) > MAX_SKEW_S:
        raise _error(19021, mismatch)
    if not hmac.compare_digest(sign(secret, timestamp), given):
        raise _error(19021, mismatch)


def _message(body: dict[str, Any]) -> Any:
    """Check ``msg_type`` and its content; return the content (the card, decoded)."""
    msg_type = body.get("msg_type")
    if msg_type == "interactive":
        card = body.get("card")
        if isinstance(card, str):  # seed 000 sends the card as a JSON string
            try:
                card = orjson.loads(card)
            except orjson.JSONDecodeError:
                raise _error(19002, "params error: card is not valid JSON") from None
        problem = card_problem(card)
        if problem is not None:
            raise _error(19002, f"params error: {problem}")
        return card
    key = CONTENT_KEYS.get(msg_type) if isinstance(msg_type, str) else None
    if key is None:
        raise _error(19002, f"params error: unknown msg_type {msg_type!r}")
    content = body.get("content")
    value = content.get(key) if isinstance(content, dict) else None
    if msg_type == "post":
        if not isinstance(value, dict) or not value:
            raise _error(19002, "params error: post needs content.post keyed by locale")
        problem = post_problem(value)
        if problem is not None:
            raise _error(19002, f"params error: {problem}")
    elif not isinstance(value, str):
        raise _error(19002, f"params error: {msg_type} needs content.{key}")
    return content
