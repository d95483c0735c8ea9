"""Sliding-window logs: the strictest reading of "N requests per T seconds".

A platform that says "5 per second" might count in fixed clock seconds or in any
one-second interval; a worker that is correct against the second reading is correct
against the first, so the simulator enforces the second: at most ``limit`` admitted
arrivals in any interval of ``seconds`` (an arrival exactly ``seconds`` ago has left).

Only *admitted* requests are logged. A refused request does not push the window further
out, otherwise a client that honours the answered wait time could still be refused.

One deque per (key, window), holding at most ``limit`` arrival times, so a check is
O(1) amortised. Checking and recording are separate because one send takes from several
scopes (the app and the chat): it is recorded in all of them or in none.
"""

from __future__ import annotations

from collections import deque

from ._model import Limits

_SWEEP_EVERY = 4096


class Windows:
    def __init__(self) -> None:
        self._logs: dict[str, list[deque[float]]] = {}
        self._records = 0
        self._longest = 0.0  # the longest window seen, scaled: older arrivals never matter

    def blocked(self, key: str, limits: Limits, scale: float, now: float) -> tuple[int, float]:
        """``(0, 0.0)`` when there is room; else ``(limit, wait_s)`` of the binding window.

        ``wait_s`` is how long until that window admits one more (the longest wait over
        all full windows).
        """
        logs = self._logs.get(key)
        if logs is None:
            return 0, 0.0
        hit_limit, wait = 0, 0.0
        for (limit, seconds), log in zip(limits, logs, strict=False):
            span = seconds * scale
            horizon = now - span
            while log and log[0] <= horizon:
                log.popleft()
            if len(log) >= limit:
                free_at = log[len(log) - limit] + span
                if free_at - now > wait or not hit_limit:
                    hit_limit, wait = limit, free_at - now
        return hit_limit, wait

    def record(self, key: str, limits: Limits, scale: float, now: float) -> None:
        logs = self._logs.get(key)
        if logs is None or len(logs) != len(limits):
            logs = [deque() for _ in limits]
            self._logs[key] = logs
            for _, seconds in limits:
                self._longest = max(self._longest, seconds * scale)
        for log in logs:
            log.append(now)
        self._records += 1
        if self._records % _SWEEP_EVERY == 0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget keys idle longer than any window, so a run over many chats stays flat."""
        horizon = now - self._longest
        stale = [
            k for k, logs in self._logs.items() if all(not q or q[-1] <= horizon for q in logs)
        ]
        for key in stale:
            del self._logs[key]

    def clear(self) -> None:
        self._logs.clear()
        self._longest = 0.0
