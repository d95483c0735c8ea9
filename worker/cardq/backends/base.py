"""The ``Backend`` protocol, and the description every backend gives of itself once.

A platform is one module implementing :class:`Backend` and one line in
``backends/__init__.py``'s registry. Everything else is derived from its
:class:`Description`: the backend list of the contract and of the configuration, which
credentials a bot must name, whether it needs an ``app_id``, the default rate windows, the
operations and message types validation accepts. The errors it raises are in ``errors.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import ValidationError
from ..models import Delivery, SendRequest
from ..ratelimit import RateScope, Window
from ..settings import BotSettings
from .context import BackendContext


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


@dataclass(frozen=True, slots=True)
class Description:
    """What a backend says about itself, once; the registry derives the rest from it.

    ``default_windows`` apply per destination unless a bot's ``limits.destination``
    replaces them; ``app_windows`` likewise per app (``limits.app``).
    """

    kind: str
    operations: Mapping[str, OperationSpec]
    credentials: tuple[str, ...]
    optional_credentials: tuple[str, ...] = ()
    has_app: bool = False  # a bot names the platform app (``app_id``) it sends as
    default_windows: tuple[Window, ...] = ()
    app_windows: tuple[Window, ...] = ()

    @property
    def msg_types(self) -> frozenset[str]:
        return frozenset().union(*(spec.msg_types for spec in self.operations.values()))

    def destination_windows(self, bot: BotSettings) -> tuple[Window, ...]:
        configured = bot.limits.destination
        return self.default_windows if configured is None else Window.all(configured)

    def app_windows_for(self, bot: BotSettings) -> tuple[Window, ...]:
        configured = bot.limits.app
        return self.app_windows if configured is None else Window.all(configured)


class Backend(Protocol):
    """One configured bot or app on one platform. ``send`` does the I/O."""

    bot: str

    @property
    def description(self) -> Description: ...

    def rate_scopes(self, request: SendRequest) -> tuple[RateScope, ...]: ...

    async def send(self, request: SendRequest) -> Delivery: ...


class BackendType(Protocol):
    """A backend class, as the registry holds it: its description, its two pure checks
    (they run in ``cardq validate`` with no configuration) and its constructor."""

    @property
    def description(self) -> Description: ...

    @staticmethod
    def check(request: SendRequest) -> None:
        """Raise :class:`ValidationError` for what the platform documents as failing."""
        ...

    @staticmethod
    def destination_target(request: SendRequest) -> str:
        """The target part of the destination key (``chat:oc_1``), used for lanes."""
        ...

    def __call__(self, settings: BotSettings, ctx: BackendContext) -> Backend: ...


__all__ = [
    "Backend",
    "BackendContext",
    "BackendType",
    "Description",
    "OperationSpec",
    "ValidationError",
]
