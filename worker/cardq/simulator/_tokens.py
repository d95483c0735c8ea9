"""Tenant access tokens as the Feishu/Lark token endpoint hands them out (facts §3).

The documented reuse rule, expressed as a fraction so short test lifetimes follow it too:
asking while the current token has at least a quarter of its life left (30 min of 2 h)
returns that same token with its *remaining* ``expire``; later, a new token is issued and
the old one stays valid until its own expiry. Revocation forgets every token at once.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

REUSE_FRACTION = 0.25


@dataclass(slots=True)
class _Issued:
    app_id: str
    expires_at: float
    lifetime: float


class TokenStore:
    def __init__(self) -> None:
        self._by_token: dict[str, _Issued] = {}
        self._current: dict[str, str] = {}  # app id -> its newest token

    def issue(self, app_id: str, lifetime: float, now: float) -> tuple[str, int]:
        """The token to answer with and its ``expire`` in whole seconds.

        ``expire`` is rounded down (a client trusting it never outlives the token) but at
        least 1, because the documented field is a positive integer; a sub-second test
        lifetime therefore looks like 1 s to the client and expires sooner.
        """
        token = self._current.get(app_id)
        issued = self._by_token.get(token) if token is not None else None
        if token is not None and issued is not None:
            left = issued.expires_at - now
            if left >= REUSE_FRACTION * issued.lifetime:
                return token, max(1, math.floor(left))
        token = "t-" + secrets.token_hex(20)
        self._by_token[token] = _Issued(app_id, now + lifetime, lifetime)
        self._current[app_id] = token
        self._prune(now)
        return token, max(1, math.floor(lifetime))

    def app_for(self, token: str, now: float) -> str | None:
        """The app a valid token belongs to; ``None`` if unknown, expired or revoked."""
        issued = self._by_token.get(token)
        if issued is None or issued.expires_at <= now:
            return None
        return issued.app_id

    def revoke_all(self) -> None:
        self._by_token.clear()
        self._current.clear()

    def _prune(self, now: float) -> None:
        expired = [t for t, issued in self._by_token.items() if issued.expires_at <= now]
        for token in expired:
            del self._by_token[token]
