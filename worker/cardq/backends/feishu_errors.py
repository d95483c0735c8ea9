"""Feishu/Lark answers → the error tree (``errors.py``), from the platform's published codes.

One table for the webhook, the IM API and the ephemeral API: the code spaces do not
overlap. Codes we do not know are *rejected* when the HTTP status is below 500 (the
platform answered deliberately) and *unavailable* from 500 up; the result carries the
platform's code either way, so an operator can add it here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import AuthExpired, DeliveryError, Rejected, Throttled, Unavailable

#: Asked to slow down. 11232 / 9499 "too many request" come from the webhook, 230020 from
#: the IM API, 99991400 from the gateway (with x-ogw-ratelimit-reset), 11233 per group.
THROTTLED = frozenset({11232, 11233, 230020, 99991400})
#: Try again later: the platform says the failure is its own and passing.
RETRY_LATER = frozenset({230049, 2200, 1500, 5000, 18121})
#: The tenant token is missing, expired or malformed: fetch a new one once.
TOKEN = frozenset({99991661, 99991663, 99991664, 99991671})
#: Never retry (the IM API's documented permanent errors, and the webhook's).
NEVER = frozenset(
    {
        230001,
        230002,
        230006,
        230013,
        230018,
        230022,
        230025,
        230027,
        230029,
        230034,
        230035,
        230053,
        230099,
        232009,
        99991401,
        99991403,
        230011,
        230031,
        230110,
        19001,
        19002,
        19021,
        19022,
        19024,
        19036,
    }
)
#: App-level throttles cool the whole app down, not one chat.
APP_SCOPE = frozenset({99991400})

_EXT = re.compile(r"ext=ErrCode:\s*(\d+)")


def retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("x-ogw-ratelimit-reset") or headers.get("X-Ogw-Ratelimit-Reset")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def classify(status: int, headers: Mapping[str, str], body: object) -> DeliveryError | None:
    """``None`` for success (``code == 0``); otherwise the error to raise."""
    if not isinstance(body, dict):
        if status >= 500 or status in (408, 429):
            cls: type[DeliveryError] = Throttled if status == 429 else Unavailable
            return cls(
                f"HTTP {status} without a JSON body",
                http_status=status,
                retry_after=retry_after(headers),
            )
        return Unavailable(f"HTTP {status} without a JSON body", http_status=status)
    code = body.get("code")
    if code is None:
        code = body.get("StatusCode")  # the webhook's legacy field
    msg = body.get("msg") or body.get("StatusMessage") or ""
    msg = str(msg)[:500]
    if code == 0 and status < 400:
        return None
    if not isinstance(code, int):
        if status >= 500:
            return Unavailable(f"HTTP {status}", http_status=status)
        return Rejected(f"HTTP {status} with no code in the body", http_status=status)
    sub = _EXT.search(msg)
    subcode = int(sub.group(1)) if sub else None

    def make(cls: type[DeliveryError], message: str) -> DeliveryError:
        return cls(
            message,
            platform_code=code,
            platform_msg=msg,
            platform_subcode=subcode,
            http_status=status,
            retry_after=retry_after(headers),
        )

    if code in THROTTLED or (code == 9499 and "too many" in msg.lower()):
        error = make(Throttled, f"throttled by the platform (code {code})")
        if code in APP_SCOPE:
            error.scope = "app"  # type: ignore[attr-defined]
        return error
    if code in TOKEN:
        return make(AuthExpired, f"tenant token refused (code {code})")
    if code in RETRY_LATER or status >= 500:
        return make(Unavailable, f"platform busy (code {code})")
    return make(Rejected, f"refused by the platform (code {code}: {msg})")
