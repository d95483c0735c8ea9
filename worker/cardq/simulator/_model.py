"""The simulator's public data: its configuration, what it accepted, its counters, its faults.

Everything here is a plain mutable object on purpose: tests change a field between two
sends (``sim.faults.error_ratio = 1.0``, ``sim.config.enforce_limits = False``) and the
next request sees it, with no reconfiguration step to forget.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: ``(limit, seconds)``: at most ``limit`` arrivals in any ``seconds``-long interval.
Limits = tuple[tuple[int, float], ...]

BACKENDS = ("feishu_webhook", "feishu_message", "feishu_ephemeral", "mindoffice_group")


@dataclass
class SimulatorConfig:
    """How strict and how fast the simulated platforms are (``backend-facts.md``).

    Every window length is multiplied by ``time_scale`` so a test can exercise a
    one-minute limit in a fraction of a second; the 1 h ``uuid`` and the MindOffice
    request-id windows are *not* scaled (they are idempotency, not pacing).
    """

    enforce_limits: bool = True
    time_scale: float = 1.0
    token_lifetime_s: float = 7200.0
    webhook_limits: Limits = ((5, 1.0), (100, 60.0))
    im_target_limits: Limits = ((5, 1.0),)
    app_limits: Limits = ((50, 1.0), (1000, 60.0))
    ephemeral_group_limits: Limits = ((40, 1.0),)
    #: MindOffice documents no limits: none unless configured, per group and per robot.
    mindoffice_limits: Limits = ()
    mindoffice_app_limits: Limits = ()
    latency_s: float = 0.0
    #: The webhook has been seen throttling both ways (facts §1): pick one, or alternate.
    webhook_throttle_answer: Literal["11232", "9499", "alternate"] = "11232"
    #: ``uuid``: one successful send per uuid per hour (facts §2).
    uuid_dedupe_s: float = 3600.0
    #: ``x-request-id`` is idempotent "for a short time": not documented, 60 s here.
    mindoffice_dedupe_s: float = 60.0
    #: A card can be updated for 14 days after it was sent (230031 after). Not scaled.
    card_update_window_s: float = 14 * 86_400.0
    #: Keep every accepted message in :attr:`Simulator.accepted`. Long benchmarks that only
    #: need the counters can turn it off to keep memory flat.
    record_accepted: bool = True


@dataclass
class Accepted:
    """One message the platform accepted, in order of acceptance.

    ``body`` is the request body exactly as decoded; ``content_decoded`` is its content
    string (or the webhook's string ``card``) decoded, so assertions need not parse twice.
    """

    backend: str
    operation: str
    destination: str
    idempotency: str | None
    body: dict[str, Any]
    message_id: str | None
    at: float
    content_decoded: Any = None
    #: The Feishu app id, MindOffice robot id, or webhook token that sent it.
    sender: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "operation": self.operation,
            "destination": self.destination,
            "idempotency": self.idempotency,
            "body": self.body,
            "content_decoded": self.content_decoded,
            "message_id": self.message_id,
            "sender": self.sender,
            "at": self.at,
        }


@dataclass
class ImMessage:
    """One IM message as the chat shows it now: its latest content, or recalled."""

    app: str
    #: ``NOT_CARD``, ``CARD`` or ``SHARED_CARD`` (``_state.py``): what an update may do.
    kind: int
    destination: str  # ``chat_id:oc_…`` for a send, ``message:om_…`` for a reply
    sent_at: float
    content: Any
    recalled: bool = False


@dataclass
class Stats:
    """Counters a benchmark or a test reads instead of scanning :attr:`accepted`."""

    requests_total: int = 0
    server_errors: int = 0
    timeouts: int = 0
    token_requests: Counter[str] = field(default_factory=Counter)
    throttle_answers: Counter[str] = field(default_factory=Counter)
    rejected: Counter[int] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    #: Sends answered from the idempotency memory (uuid / x-request-id), per backend.
    duplicates: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """In place, so a reference a test holds stays live."""
        self.requests_total = self.server_errors = self.timeouts = 0
        for counter in (
            self.token_requests,
            self.throttle_answers,
            self.rejected,
            self.accepted,
            self.duplicates,
        ):
            counter.clear()

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "server_errors": self.server_errors,
            "timeouts": self.timeouts,
            "token_requests": dict(self.token_requests),
            "throttle_answers": dict(self.throttle_answers),
            "rejected": {str(code): n for code, n in self.rejected.items()},
            "accepted": dict(self.accepted),
            "accepted_total": sum(self.accepted.values()),
            "duplicates": dict(self.duplicates),
        }


_FAULT_FIELDS = {
    "latency_s": float,
    "error_ratio": float,
    "timeout_ratio": float,
    "ack_loss_ratio": float,
    "hang_s": float,
    "throttle_until": float,
}


@dataclass
class Faults:
    """Misbehaviour injected into every *send* endpoint (not the token endpoint, not /_sim).

    Checked in this order on each send: ``latency_s`` (added to the config's), then
    ``timeout_ratio`` (hold the request ``hang_s`` so the client gives up; nothing is
    delivered), ``error_ratio`` (HTTP 500, nothing delivered), ``throttle_until``
    (monotonic time; the backend's own throttle answer until then). ``ack_loss_ratio``
    delivers the message and *then* answers HTTP 500: the case idempotency exists for.
    Setting ``seed`` reseeds the random source, so a faulty run can be replayed.
    """

    latency_s: float = 0.0
    error_ratio: float = 0.0
    timeout_ratio: float = 0.0
    ack_loss_ratio: float = 0.0
    hang_s: float = 30.0
    throttle_until: float = 0.0
    seed: int | None = None
    rng: random.Random = field(init=False, repr=False, compare=False)
    _revoke: Callable[[], None] | None = field(default=None, init=False, repr=False, compare=False)
    _clock: Callable[[], float] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "seed":
            super().__setattr__("rng", random.Random(value))

    def attach(self, revoke: Callable[[], None], clock: Callable[[], float]) -> None:
        """Wired by the :class:`Simulator` that owns these faults."""
        self._revoke = revoke
        self._clock = clock

    def revoke_tokens(self) -> None:
        """Every tenant token issued so far becomes invalid (answers 99991663)."""
        if self._revoke is not None:
            self._revoke()

    def throttle_for(self, seconds: float) -> None:
        assert self._clock is not None, "Faults not attached to a Simulator"
        self.throttle_until = self._clock() + seconds

    def reset(self) -> None:
        self.latency_s = self.error_ratio = self.timeout_ratio = self.ack_loss_ratio = 0.0
        self.hang_s = 30.0
        self.throttle_until = 0.0
        self.seed = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in _FAULT_FIELDS}
        data["seed"] = self.seed
        return data

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a control-API document; raise ``ValueError`` naming a bad field.

        Besides the fields: ``throttle_for_s`` (throttle from now on, so a client in
        another process need not share our clock) and ``revoke_tokens: true``.
        """
        known = [*_FAULT_FIELDS, "seed", "throttle_for_s", "revoke_tokens"]
        unknown = [name for name in data if name not in known]
        if unknown:  # checked first, so a document with a typo changes nothing
            raise ValueError(f"unknown fault {unknown[0]!r} (known: {', '.join(known)})")
        for name, value in data.items():
            if name in _FAULT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number")
                setattr(self, name, float(value))
            elif name == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError("seed must be an integer or null")
                self.seed = value
            elif name == "throttle_for_s":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError("throttle_for_s must be a number")
                self.throttle_for(float(value))
            elif name == "revoke_tokens" and value is True:
                self.revoke_tokens()
