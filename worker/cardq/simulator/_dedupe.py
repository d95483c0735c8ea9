"""The platforms' server-side idempotency: a key answers with the first message id.

Feishu's ``uuid`` allows one successful send per hour; MindOffice's ``x-request-id`` is
idempotent "for a short time". Only successful sends are remembered, so a send that was
refused can be retried with the same key. Entries expire in insertion order, which is
also time order, so pruning is a pop from the left.
"""

from __future__ import annotations

from collections import deque


class Dedupe:
    def __init__(self) -> None:
        self._ids: dict[str, tuple[str, float]] = {}
        self._order: deque[tuple[float, str]] = deque()

    def get(self, key: str, now: float) -> str | None:
        found = self._ids.get(key)
        if found is None:
            return None
        message_id, expires_at = found
        if expires_at <= now:
            return None
        return message_id

    def put(self, key: str, message_id: str, window_s: float, now: float) -> None:
        self._prune(now)
        expires_at = now + window_s
        self._ids[key] = (message_id, expires_at)
        self._order.append((expires_at, key))

    def _prune(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            expires_at, key = order.popleft()
            found = self._ids.get(key)
            if found is not None and found[1] == expires_at:
                del self._ids[key]

    def clear(self) -> None:
        self._ids.clear()
        self._order.clear()
