"""The tenant token endpoint and the ``Authorization`` check of every app endpoint (§3).

The token endpoint gets latency but no faults (faults are for sends): a test of the
worker's token handling uses ``revoke_tokens`` and short lifetimes instead.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from ._answers import Refusal, decode_object, json_response
from ._state import State

PATH = "/open-apis/auth/v3/tenant_access_token/internal"


def routes(state: State) -> list[web.RouteDef]:
    return [web.post(PATH, state.endpoint("feishu_token", partial(_token, state), faults=False))]


def _token(state: State, request: web.Request, raw: bytes) -> web.StreamResponse:
    body = decode_object(raw)
    if body is None:
        raise Refusal(9499, "Bad Request: body is not a JSON object")
    app_id = body.get("app_id")
    secret = body.get("app_secret")
    if isinstance(app_id, str):
        state.stats.token_requests[app_id] += 1
    if not isinstance(app_id, str) or app_id not in state.apps:
        raise Refusal(10003, "invalid param: app_id not found")
    expected = state.apps[app_id]
    if secret != expected:
        raise Refusal(10014, "app secret invalid")
    token, expire = state.tokens.issue(app_id, state.config.token_lifetime_s, state.clock())
    return json_response({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})


def tenant_app(state: State, request: web.Request) -> str:
    """The app id behind the request's tenant token, or the documented refusal.

    No header (or an empty token) is 99991661; a value that is not ``Bearer t-…`` is
    99991671 (malformed); a well-formed token that is unknown, expired or revoked is
    99991663. All three tell the worker to fetch a new token once.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not token:
        raise Refusal(99991661, "Missing access token for authorization")
    if scheme != "Bearer" or not token.startswith("t-"):
        raise Refusal(99991671, "Invalid access token format: expected Bearer t-…")
    app_id = state.tokens.app_for(token, state.clock())
    if app_id is None:
        raise Refusal(99991663, "Invalid access token for authorization")
    return app_id
