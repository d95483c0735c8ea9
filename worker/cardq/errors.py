"""Every exception a request can end in, in one leaf module (it imports nothing of cardq).

Backends *classify* what a platform answered; they never decide to retry. The pipeline
reads the class of the error (and ``retry_after``) and decides::

    ValidationError               the request breaks the contract or a documented platform
                                  rule; raised before anything is sent (``field`` names it)
    DeliveryError                 anything that stopped one send attempt
    ├── Rejected                  never retry: bad card, bot not in group, no permission…
    │   └── CredentialsRefused    the token endpoint refused the app id or secret
    ├── Throttled                 retry after ``retry_after`` (the platform's reset time);
    │                             ``scope`` says whether the destination or the whole app
    │                             must cool down
    ├── Unavailable               retry with backoff: HTTP 5xx, timeout, connection error,
    │                             the platform's "internal error, try later" codes
    ├── AuthExpired               the token was refused: drop it, fetch a new one, retry once
    └── Internal                  never retry: a backend raised something that is no
                                  delivery error (a bug); the pipeline wraps it (``outcome.py``)

Every delivery error carries the platform's own code and message so the result can report
them. Messages never contain URLs, tokens or signatures: errors are translated at the
transport boundary (``backends/transport.py``) where the URL is known and dropped.

Why a leaf: the backends, the transport, the token cache, validation and the pipeline all
raise or read these. With the tree here none of them imports another for its errors, so the
package has no import cycle, not even one hidden behind ``TYPE_CHECKING``.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Literal


class ErrorKind(enum.StrEnum):
    """Why a request did not end as delivered; one value per branch of the error tree."""

    INVALID = "invalid"  # our own validation refused it before any send
    REJECTED = "rejected"  # the platform refused it and will refuse it again
    THROTTLED = "throttled"  # the platform asked us to slow down (retries ran out)
    UNAVAILABLE = "unavailable"  # 5xx, timeout, connection error (retries ran out)
    AUTH = "auth"  # credentials were refused even after a fresh token
    EXPIRED = "expired"  # expires_at or the maximum age passed before delivery
    INTERNAL = "internal"  # a bug in the worker or a backend (not retried; see outcome.py)


class ValidationError(ValueError):
    """A request the worker refuses before sending: it breaks the contract
    (``schemas/send-request.v1.json``) or a rule the platform documents as failing.

    ``field`` is a dotted path into the request (``target.receive_id``,
    ``content.header.template``), or ``$`` for the record as a whole.
    """

    def __init__(self, field: str, reason: str, code: str = "invalid_field") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code

    @classmethod
    def content(cls, field: str, reason: str, code: str = "invalid_content") -> ValidationError:
        """A rule of the platform the content breaks (``Backend.check``), as opposed to the
        contract's shape: results report it as ``invalid_content`` unless more precise."""
        return cls(field, reason, code)


class DeliveryError(Exception):
    kind: ClassVar[ErrorKind] = ErrorKind.UNAVAILABLE
    retryable: ClassVar[bool] = True
    default_code: ClassVar[str] = "delivery_error"

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        platform_code: int | None = None,
        platform_subcode: int | None = None,
        platform_msg: str | None = None,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.platform_code = platform_code
        self.platform_subcode = platform_subcode
        self.platform_msg = platform_msg
        self.retry_after = retry_after
        self.http_status = http_status


class Rejected(DeliveryError):
    kind = ErrorKind.REJECTED
    retryable = False
    default_code = "platform_rejected"


class CredentialsRefused(Rejected):
    """A configuration problem (wrong app secret), not a passing one: retrying cannot help
    until the secret is fixed, so the request fails at once with error kind ``auth``."""

    kind = ErrorKind.AUTH
    default_code = "credentials_refused"


class Throttled(DeliveryError):
    kind = ErrorKind.THROTTLED
    default_code = "platform_throttled"

    def __init__(
        self, message: str, *, scope: Literal["destination", "app"] = "destination", **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.scope = scope


class Unavailable(DeliveryError):
    kind = ErrorKind.UNAVAILABLE
    default_code = "platform_unavailable"


class AuthExpired(DeliveryError):
    kind = ErrorKind.AUTH
    default_code = "auth_expired"


class Internal(DeliveryError):
    """A backend raised something that is not a delivery error: a bug. Retrying runs the
    same code into the same bug, so the request fails at once (``outcome.py``)."""

    kind = ErrorKind.INTERNAL
    retryable = False
    default_code = "internal_error"
