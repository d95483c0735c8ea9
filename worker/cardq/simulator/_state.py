"""Everything the simulated platforms remember, and the steps every endpoint shares.

The per-request path is deliberately plain: one body read, dict lookups, deque appends,
one orjson encode for the answer; no logging, no exception on success. The pieces every
endpoint needs live here: the fault gate, taking from rate windows (all scopes or none),
recording an accepted message, and the platforms' throttle and busy answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ._answers import Refusal, json_response, raw_response
from ._dedupe import Dedupe
from ._model import Accepted, Faults, ImMessage, Limits, SimulatorConfig, Stats
from ._tokens import TokenStore
from ._windows import Windows

Process = Callable[[web.Request, bytes], web.StreamResponse]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: ``(key, windows, answer)``: a budget a request takes from, and how to refuse when empty.
Scope = tuple[str, Limits, Callable[[int, float], Refusal]]

FEISHU_BUSY = b'{"code":5000,"msg":"internal error"}'
MINDOFFICE_BUSY = b'{"code":500,"msg":"internal error"}'

# What an IM message can still become (``messages``): only shared cards can be updated.
NOT_CARD, CARD, SHARED_CARD = 0, 1, 2


@dataclass(frozen=True, slots=True)
class WebhookBot:
    secret: str | None
    keywords: tuple[str, ...]


class State:
    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        #: Drives every window, expiry and ``Accepted.at``; a test may pass a fake one.
        self.clock = clock
        #: Only for the webhook's signed timestamp, which is wall-clock seconds.
        self.wall_clock = wall_clock
        self.tokens = TokenStore()
        self.faults = Faults()
        self.faults.attach(self.tokens.revoke_all, clock)
        self.stats = Stats()
        self.accepted: list[Accepted] = []
        self.windows = Windows()
        self.uuids = Dedupe()
        self.request_ids = Dedupe()
        self.webhooks: dict[str, WebhookBot] = {}
        self.apps: dict[str, str] = {}
        self.robots: dict[str, str] = {}
        #: IM message id -> the message as the chat shows it (in the order sent)
        self.messages: dict[str, ImMessage] = {}
        #: live ephemeral card id -> sending app
        self.ephemeral: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._id_prefix = os.urandom(8).hex()
        self._seq = 0
        self._webhook_flip = False

    # ------------------------------------------------------------------ credentials

    def add_webhook(
        self, token: str, secret: str | None = None, keywords: Sequence[str] = ()
    ) -> None:
        """A custom bot: its webhook token, optional signing secret and keyword list."""
        self.webhooks[token] = WebhookBot(secret or None, tuple(keywords))

    def add_app(self, app_id: str, app_secret: str) -> None:
        """A Feishu/Lark app: the token endpoint, the IM API and ephemeral cards."""
        self.apps[app_id] = app_secret

    def add_mindoffice_robot(self, app_id: str, app_secret: str) -> None:
        self.robots[app_id] = app_secret

    # ------------------------------------------------------------------ identities

    def new_id(self, prefix: str = "") -> str:
        """Unique across simulator runs (random prefix) yet cheap (a counter)."""
        self._seq += 1
        return f"{prefix}{self._id_prefix}{self._seq:016x}"

    # ------------------------------------------------------------------ endpoints

    def endpoint(self, backend: str, process: Process, *, faults: bool = True) -> Handler:
        """Wrap a synchronous ``process(request, body)``: latency, faults, refusals, counts."""

        async def handle(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.requests_total += 1
            raw = await request.read()
            delay = self.config.latency_s + (self.faults.latency_s if faults else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            if faults:
                early = await self._fault(backend)
                if early is not None:
                    return early
            try:
                return process(request, raw)
            except Refusal as refusal:
                if refusal.throttle:
                    stats.throttle_answers[backend] += 1
                else:
                    stats.rejected[refusal.code] += 1
                return refusal.response()

        return handle

    async def _fault(self, backend: str) -> web.StreamResponse | None:
        f = self.faults
        if f.timeout_ratio > 0 and f.rng.random() < f.timeout_ratio:
            self.stats.timeouts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), f.hang_s)
            return raw_response(self._busy(backend), 504)
        if f.error_ratio > 0 and f.rng.random() < f.error_ratio:
            self.stats.server_errors += 1
            return raw_response(self._busy(backend), 500)
        if f.throttle_until > 0:
            now = self.clock()
            if now < f.throttle_until:
                self.stats.throttle_answers[backend] += 1
                return self._throttle_for(backend)(0, f.throttle_until - now).response()
        return None

    def ack(self, backend: str, body: dict[str, Any]) -> web.Response:
        """The success answer, unless ``ack_loss_ratio`` drops it after delivery."""
        f = self.faults
        if f.ack_loss_ratio > 0 and f.rng.random() < f.ack_loss_ratio:
            self.stats.server_errors += 1
            return raw_response(self._busy(backend), 500)
        return json_response(body)

    @staticmethod
    def _busy(backend: str) -> bytes:
        return MINDOFFICE_BUSY if backend == "mindoffice_group" else FEISHU_BUSY

    # ------------------------------------------------------------------ rate windows

    def take(self, *scopes: Scope) -> None:
        """Take one arrival from every scope, or raise the first full scope's answer."""
        config = self.config
        if not config.enforce_limits:
            return
        now = self.clock()
        scale = config.time_scale
        windows = self.windows
        for key, limits, answer in scopes:
            if limits:
                limit, wait = windows.blocked(key, limits, scale, now)
                if limit:
                    raise answer(limit, wait)
        for key, limits, _ in scopes:
            if limits:
                windows.record(key, limits, scale, now)

    def _throttle_for(self, backend: str) -> Callable[[int, float], Refusal]:
        if backend == "feishu_webhook":
            return self.webhook_throttle
        if backend == "mindoffice_group":
            return self.mindoffice_throttle
        return self.app_throttle

    def webhook_throttle(self, limit: int, wait: float) -> Refusal:
        """HTTP 200 code 11232, or HTTP 400 code 9499 "too many request" (facts §1)."""
        answer = self.config.webhook_throttle_answer
        if answer == "alternate":
            self._webhook_flip = not self._webhook_flip
            answer = "11232" if self._webhook_flip else "9499"
        if answer == "9499":
            return Refusal(9499, "too many request", 400, throttle=True, extra={"data": {}})
        return Refusal(11232, "frequency limited", 200, throttle=True, extra={"data": {}})

    def app_throttle(self, limit: int, wait: float) -> Refusal:
        """The gateway's app-level answer: HTTP 429, 99991400, and when to come back."""
        if not limit:
            first = self.config.app_limits[:1]
            limit = first[0][0] if first else 0
        headers = {
            "x-ogw-ratelimit-limit": str(limit),
            "x-ogw-ratelimit-reset": self.reset_header(wait),
        }
        return Refusal(
            99991400, "request trigger frequency limit", 429, headers=headers, throttle=True
        )

    @staticmethod
    def target_throttle(limit: int, wait: float) -> Refusal:
        """The IM API's per-chat / per-user / per-message answer (facts §2)."""
        return Refusal(
            230020,
            "This operation triggers the frequency limit, please try again later.",
            400,
            throttle=True,
        )

    @staticmethod
    def mindoffice_throttle(limit: int, wait: float) -> Refusal:
        """Not documented: HTTP 429, which the adapter reads as "slow down"."""
        return Refusal(429, "too many requests", 429, throttle=True)

    def reset_header(self, wait: float) -> str:
        """``x-ogw-ratelimit-reset``: whole seconds (at least 1) like the real gateway;
        with a ``time_scale`` below 1, the exact scaled wait in seconds (three decimals),
        because a rounded-up second would be many scaled windows long."""
        if self.config.time_scale >= 1.0:
            return str(max(1, math.ceil(wait)))
        return f"{max(wait, 0.001):.3f}"

    # ------------------------------------------------------------------ acceptance

    def accept(
        self,
        backend: str,
        operation: str,
        destination: str,
        idempotency: str | None,
        body: dict[str, Any],
        message_id: str | None,
        content: Any,
        sender: str,
    ) -> None:
        self.stats.accepted[backend] += 1
        if self.config.record_accepted:
            self.accepted.append(
                Accepted(
                    backend,
                    operation,
                    destination,
                    idempotency,
                    body,
                    message_id,
                    self.clock(),
                    content,
                    sender,
                )
            )

    def chat(self, destination: str) -> list[tuple[str, Any]]:
        """What an IM chat shows now (``chat_id:oc_…``): (message id, latest content) of
        each message not recalled, oldest first."""
        return [
            (message_id, message.content)
            for message_id, message in self.messages.items()
            if message.destination == destination and not message.recalled
        ]

    def clear(self) -> None:
        """Forget messages, windows, counters and faults; keep credentials and tokens."""
        self.accepted.clear()
        self.stats.reset()
        self.faults.reset()
        self.windows.clear()
        self.uuids.clear()
        self.request_ids.clear()
        self.messages.clear()
        self.ephemeral.clear()
        self._webhook_flip = False
