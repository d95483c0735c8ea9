"""The :class:`Simulator`: the four platforms and the control API on one local server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from . import _control, _feishu_auth, _feishu_ephemeral, _feishu_im, _mindoffice, _webhook
from ._model import SimulatorConfig
from ._state import State

#: Larger than any body a platform accepts, so oversize bodies get the platform's own
#: answer (the webhook's 9499) rather than aiohttp's 413.
MAX_BODY_BYTES = 4 * 1024 * 1024


class Simulator(State):
    """Feishu/Lark webhook, IM and ephemeral APIs, their token endpoint, and MindOffice.

    ``clock`` (monotonic seconds) drives every window, token expiry and idempotency
    memory: a test may pass a fake clock and advance it instead of sleeping.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, clock=clock, wall_clock=wall_clock)
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        for module in (
            _webhook,
            _feishu_auth,
            _feishu_im,
            _feishu_ephemeral,
            _mindoffice,
            _control,
        ):
            app.add_routes(module.routes(self))
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (``port=0``: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound[1]}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening; requests held by ``timeout_ratio`` are released first."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def accepted_by_idempotency(self) -> Counter[str]:
        """How often each idempotency key was accepted: every value is 1 for at-most-once."""
        return Counter(a.idempotency for a in self.accepted if a.idempotency is not None)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,
    ) -> None:
        """Poll ``predicate`` every 5 ms until it holds; ``TimeoutError`` says what was seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise TimeoutError(
                    f"simulator: {name} still false after {timeout:g} s; "
                    f"{len(self.accepted)} accepted, stats {self.stats.as_dict()}"
                )
            await asyncio.sleep(0.005)

    def reset(self) -> None:
        """Clear accepted messages, counters, faults, windows and idempotency memory.

        Credentials and issued tokens stay, so a worker holding a token keeps working.
        """
        self.clear()
