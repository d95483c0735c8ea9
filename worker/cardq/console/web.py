"""The console's HTTP surface, mounted under ``/console/`` on the observability port.

* ``GET /console/`` and ``/console/static/…``: a static page and its script, served from
  the package (no build step, nothing fetched from elsewhere: the CSP says so too).
* ``GET /console/api/state``: the JSON the page polls (``?top=N`` rows per table).
* ``POST /console/api/pause`` and ``/console/api/resume`` with ``{"kind": "destination" |
  "bot", "name": …, "reach": "pod" | "pool"}``: only with ``observability.console.actions``
  and the bearer token (``Authorization: Bearer …``). Off: 403; a wrong token: 401.

The token travels in a header the page sets from what the operator typed, never in a
cookie, so another site cannot make a browser send it (no CSRF).
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Any

import orjson
import structlog
from aiohttp import web

from .pauses import Kind, Reach
from .state import TOP, Console

log = structlog.get_logger("cardq.console")

STATIC = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAX_NAME = 1024


def application(console: Console) -> web.Application:
    """A sub-application to mount at ``/console/`` (starts and stops the pool follower)."""
    app = web.Application()
    handlers = _Handlers(console)
    app.router.add_get("/", handlers.page)
    app.router.add_get("/static/{name}", handlers.static)
    app.router.add_get("/api/state", handlers.state)
    app.router.add_post("/api/pause", handlers.pause)
    app.router.add_post("/api/resume", handlers.resume)

    async def follow_pool(_: web.Application) -> Any:
        pool = console.pool_pauses
        if pool is not None:
            # Before the consumer starts: a restarted pod holds what the pool paused at once.
            try:
                await pool.refresh()
            except Exception as exc:
                log.warning("pool_pauses_unreadable", key=pool.key, error=type(exc).__name__)
            pool.start()
        yield
        if console.pool_pauses is not None:
            await console.pool_pauses.stop()

    app.cleanup_ctx.append(follow_pool)
    return app


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class _Handlers:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def page(self, _: web.Request) -> web.Response:
        return web.Response(
            body=_asset("index.html"),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"},
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=STATIC[name], charset="utf-8")

    async def state(self, request: web.Request) -> web.Response:
        try:
            top = int(request.query.get("top", TOP))
        except ValueError:
            return _json({"error": "top must be an integer"}, 400)
        return _json(self.console.state(max(1, min(top, 500))))

    async def pause(self, request: web.Request) -> web.Response:
        return await self._act(request, pause=True)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._act(request, pause=False)

    async def _act(self, request: web.Request, *, pause: bool) -> web.Response:
        console = self.console
        if console.token is None:
            return _json({"error": "console actions are off (observability.console.actions)"}, 403)
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {console.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.Response(
                body=orjson.dumps({"error": "a valid bearer token is required"}),
                status=401,
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="cardq console"'},
            )
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            return _json({"error": "the body must be JSON"}, 400)
        problem = _check(body, console)
        if problem is not None:
            return _json({"error": problem}, 400)
        kind: Kind = body["kind"]
        name: str = body["name"]
        reach: Reach = body.get("reach", "pod")
        by = request.remote or ""
        if reach == "pool":
            pool = console.pool_pauses
            if pool is None:
                return _json({"error": "pool-wide pauses need idempotency.store redis"}, 409)
            try:
                if pause:
                    await pool.pause(kind, name, by)
                changed = True if pause else await pool.resume(kind, name)
            except Exception as exc:
                return _json({"error": f"Redis: {type(exc).__name__}"}, 503)
        elif pause:
            console.pauses.pause(kind, name, by)
            changed = True
        else:
            changed = console.pauses.resume(kind, name)
        log.info(
            "console_pause" if pause else "console_resume",
            kind=kind,
            name=name,
            reach=reach,
            remote=by,
            changed=changed,
        )
        return _json({"ok": True, "changed": changed, "pauses": _pauses(console)})


def _pauses(console: Console) -> list[dict[str, object]]:
    return [p.as_dict() for p in console.pauses.all()]


def _check(body: Any, console: Console) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    kind, name, reach = body.get("kind"), body.get("name"), body.get("reach", "pod")
    if kind not in ("destination", "bot"):
        return "kind must be destination or bot"
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        return f"name must be a non-empty string of at most {MAX_NAME} characters"
    if kind == "bot" and name not in console.bots:
        return f"unknown bot {name!r} (configured: {', '.join(console.bots) or 'none'})"
    if reach not in ("pod", "pool"):
        return "reach must be pod or pool"
    return None
