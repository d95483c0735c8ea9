"""One HTTP port for Kubernetes, Prometheus and people: /metrics, /healthz, /readyz and
the live console under /console/ (``console/web.py``).

``/healthz`` answers when the event loop answers (a stuck loop fails the liveness probe);
``/readyz`` is 200 only after the consumer joined its group, while it is not draining and,
with the Redis store, while Redis has not been unreachable for longer than
``idempotency.unready_after_s`` (``store_health.py``): a pod that cannot claim cannot send.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import Metrics


class HealthServer:
    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        console: web.Application | None = None,
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._console = console
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._console is not None:
            app.router.add_get("/console", self._to_console)
            app.add_subapp("/console/", self._console)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics_handler(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _to_console(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/console/")

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)
