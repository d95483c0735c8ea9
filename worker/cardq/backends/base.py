"""The ``Backend`` protocol and the one error tree every backend speaks.

Backends *classify* what a platform answered; they never decide to retry. The pipeline
reads the class of the error (and ``retry_after``) and decides::

    DeliveryError                 anything that stopped one send attempt
    ├── Rejected                  never retry: bad card, bot not in group, no permission…
    │   └── CredentialsRefused    the token endpoint refused the app id or secret
    ├── Throttled                 retry after ``retry_after`` (the platform's reset time);
    │                             ``scope`` says whether the destination or the whole app
    │                             must cool down
    ├── Unavailable               retry with backoff: HTTP 5xx, timeout, connection error,
    │                             the platform's "internal error, try later" codes
    └── AuthExpired               the token was refused: drop it, fetch a new one, retry once

Every error carries the platform's own code and message so the result can report them.
Messages never contain URLs, tokens or signatures: errors are translated at the transport
boundary (``transport.py``) where the URL is known and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..models import Delivery, ErrorKind, SendRequest

if TYPE_CHECKING:
    from .tokens import TokenPool
    from .transport import Transport


class DeliveryError(Exception):
    kind: ClassVar[ErrorKind] = ErrorKind.UNAVAILABLE
    retryable: ClassVar[bool] = True

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

    default_code: ClassVar[str] = "delivery_error"


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


class ContentError(ValueError):
    """A request that breaks a documented platform rule; raised before anything is sent.

    ``field`` is the dotted path inside the request (``content.header.template``).
    """

    def __init__(self, field: str, reason: str, code: str = "invalid_content") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` sends in any ``seconds``-long interval."""

    limit: int
    seconds: float


@dataclass(frozen=True, slots=True)
class RateScope:
    """One budget a send must take from. ``kind`` is a bounded label for metrics.

    ``pooled``: the budget spans destinations, which may sit on other partitions and so in
    other pods (an app, or a chat that every bot in it shares). A pool counts it in Redis
    (``ratelimit_redis.py``). A budget of one destination lives on one partition: the pod
    that owns it counts it alone, exactly, with no round trip.
    """

    key: str
    kind: Literal["destination", "app", "bot"]
    windows: tuple[Window, ...]
    pooled: bool = False


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """The request shape one operation of one backend accepts; validation reads it.

    ``msg_types`` is empty for operations that carry no message (``delete``).
    """

    msg_types: frozenset[str]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # at least one of these target fields
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    bools: tuple[str, ...] = ()  # target fields that are booleans rather than strings


class Backend(Protocol):
    """One configured bot or app on one platform.

    A platform is one module implementing this protocol plus one entry in
    ``backends/__init__.py``'s registry. ``check`` and ``destination`` are pure (they run in
    ``cardq validate`` with no configuration); ``send`` does the I/O.
    """

    kind: ClassVar[str]
    operations: ClassVar[Mapping[str, OperationSpec]]
    bot: str

    @staticmethod
    def check(request: SendRequest) -> None:
        """Raise :class:`ContentError` for what the platform documents as failing."""
        ...

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        """The target part of the destination key (``chat:oc_1``), used for lanes."""
        ...

    def rate_scopes(self, request: SendRequest) -> tuple[RateScope, ...]: ...

    async def send(self, request: SendRequest) -> Delivery: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class BackendContext:
    """What a backend gets from the worker when it is built for one bot."""

    transport: Transport
    timeout_s: float
    tokens: TokenPool  # one cached tenant token per Feishu/Lark app
