"""The control API under ``/_sim/``: what benchmarks and subprocess tests use instead of
the in-process attributes. Never subject to faults, latency or limits.

``GET /_sim/accepted?since=N`` (each item carries its ``index``), ``GET /_sim/stats``,
``GET|POST /_sim/faults``, ``POST /_sim/reset``, ``POST /_sim/credentials``,
``GET /_sim/health``, ``GET /_sim/chat?destination=chat_id:oc_…`` (what an IM chat shows
now: each message not recalled, with its latest content).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from . import _credentials
from ._answers import json_response, raw_response
from ._state import State


def routes(state: State) -> list[web.RouteDef]:
    async def accepted(request: web.Request) -> web.StreamResponse:
        raw = request.query.get("since", "0")
        if not raw.isdigit():
            return _bad("since must be a non-negative integer")
        since = int(raw)
        items = []
        for index, item in enumerate(state.accepted[since:], start=since):
            data = item.as_dict()
            data["index"] = index
            items.append(data)
        return raw_response(orjson.dumps(items))

    async def stats(request: web.Request) -> web.StreamResponse:
        return json_response(state.stats.as_dict())

    async def get_faults(request: web.Request) -> web.StreamResponse:
        return json_response(state.faults.as_dict())

    async def set_faults(request: web.Request) -> web.StreamResponse:
        data = await _json(request)
        if not isinstance(data, dict):
            return _bad("send a JSON object of fault fields")
        try:
            state.faults.update(data)
        except ValueError as exc:
            return _bad(str(exc))
        return json_response(state.faults.as_dict())

    async def reset(request: web.Request) -> web.StreamResponse:
        state.clear()
        return json_response({"ok": True})

    async def credentials(request: web.Request) -> web.StreamResponse:
        try:
            _credentials.apply(state, await _json(request))
        except ValueError as exc:
            return _bad(str(exc))
        return json_response({"ok": True})

    async def chat(request: web.Request) -> web.StreamResponse:
        destination = request.query.get("destination")
        if not destination:
            return _bad("destination is required (chat_id:oc_… or another receive_id_type:id)")
        shown = state.chat(destination)
        items = [{"message_id": message_id, "content": content} for message_id, content in shown]
        return raw_response(orjson.dumps(items))

    async def health(request: web.Request) -> web.StreamResponse:
        return json_response({"ok": True})

    return [
        web.get("/_sim/accepted", accepted),
        web.get("/_sim/stats", stats),
        web.get("/_sim/faults", get_faults),
        web.post("/_sim/faults", set_faults),
        web.post("/_sim/reset", reset),
        web.post("/_sim/credentials", credentials),
        web.get("/_sim/health", health),
        web.get("/_sim/chat", chat),
    ]


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return None


def _bad(message: str) -> web.Response:
    return json_response({"error": message}, 400)
