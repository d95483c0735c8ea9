"""The configuration's keys: frozen dataclasses, one per section, with every default.

This file is the configuration reference (the README's table is generated from these fields
by a test, and the Helm chart's ``values.schema.json`` mirrors them). Loading, overrides and
checks are in ``config.py``; the typed build from YAML values in ``config_build.py``.
Nothing here imports the backends, so the backends can read their settings from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .secrets import Secret


class ConfigError(ValueError):
    """``key`` is the dotted key (``delivery.max_attempts``); ``source`` says where its
    value came from when that was not the YAML file (an environment variable)."""

    def __init__(self, key: str, reason: str, source: str | None = None) -> None:
        where = f"{key} (from {source})" if source else key
        super().__init__(f"configuration error at {where}: {reason}")
        self.key = key
        self.reason = reason
        self.source = source


@dataclass(frozen=True)
class SecretRef:
    """Where a credential comes from: an environment variable or a file.

    ``config.load`` reads every one once, with the environment it was given, and keeps the
    value here (or why it could not be read); nothing reads the environment or the file
    again, so a backend never touches ``os.environ`` and a test passes its credentials in
    a mapping instead of changing the process environment. A credential that could not be
    read fails only where it is used (:meth:`secret`), naming its key, so commands that do
    not send (``cardq validate``, ``replay``) run without the credentials at hand.
    """

    env: str | None = None
    file: str | None = None
    key: str = field(default="", compare=False)
    value: Secret | None = field(default=None, compare=False, repr=False)
    problem: str = field(default="not read: settings built without config.load", compare=False)

    def secret(self) -> Secret:
        if self.value is None:
            raise ConfigError(self.key or "(credential)", self.problem)
        return self.value


@dataclass(frozen=True)
class Topics:
    requests: str = "cardq.requests"
    results: str = "cardq.results"
    dead_letters: str = "cardq.dead-letters"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    client_id: str = "cardq"
    group_id: str = "cardq"
    #: Static membership: a stable id per pod (e.g. the StatefulSet or pod name) lets a
    #: restarted pod take its partitions back without a rebalance of the whole group.
    group_instance_id: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretRef | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 45_000
    #: How partitions are spread over the group's members. ``sticky`` keeps each member's
    #: partitions where it can across a rebalance (fewer moved destinations per deploy);
    #: ``range`` is Kafka's default. aiokafka has no cooperative protocol: every
    #: rebalance still revokes all partitions for a moment, whichever strategy.
    partition_assignment_strategy: Literal["range", "roundrobin", "sticky"] = "range"
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_partition_fetch_bytes: int = 4 * 1024 * 1024
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    topics: Topics = field(default_factory=Topics)


@dataclass(frozen=True)
class DeliverySettings:
    #: Sends on the wire at once, over all destinations.
    max_in_flight: int = 512
    #: Records held in memory (queued in lanes or in flight). Past it the fullest
    #: partitions are paused; they resume below ``resume_ratio`` of it.
    max_buffered_records: int = 20_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    resume_ratio: float = 0.5
    #: Records larger than this are rejected unread (``record_too_large``).
    max_record_bytes: int = 1024 * 1024
    max_attempts: int = 8
    #: A request older than this (from its ``created_at`` or the record timestamp) is not
    #: retried any more and ends as ``failed``.
    max_age_s: float = 900.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    #: How long a revoked partition or SIGTERM waits for in-flight sends before giving up.
    drain_grace_s: float = 20.0
    #: With the Redis store, a revoked partition's lanes go on sending until the group's
    #: next assignment says whether the partition stays (``rebalance.py``); off: drain.
    hold_through_rebalance: bool = True
    commit_interval_s: float = 1.0
    #: Each rate window is stretched by this fraction so that network jitter never lets
    #: the platform count one send too many in its window.
    limit_margin: float = 0.02


#: Feishu cards can be updated for 14 days after they were sent (platform docs).
SUBJECT_TTL_MAX_S = 14 * 86_400.0


@dataclass(frozen=True)
class IdempotencySettings:
    store: Literal["memory", "redis"] = "memory"
    ttl_s: float = 86_400.0
    #: The lease of a claim: a key is claimed only once its send's rate budget is granted,
    #: the lease is renewed every third of it while the send is on the wire, and a key
    #: claimed by a worker that died is free again at most this long after it died.
    claim_timeout_s: float = 10.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretRef | None = None
    #: Connections to Redis per worker, and idempotency-store calls at once: past it a
    #: call waits its turn, however long, instead of failing (``idempotency/redis.py``).
    redis_max_connections: int = 64
    #: Bound of every Redis connect and answer (not of the wait for a turn).
    redis_timeout_s: float = 5.0
    key_prefix: str = "cardq:idem:"
    #: With ``redis``, every pod takes the app budgets (and the budgets of chats that
    #: several bots share) from Redis under this prefix. Pools that share it share budgets,
    #: which is right for one app used by several deployments.
    budget_key_prefix: str = "cardq:budget:"
    #: A send on the wire holds a lease on its budgets; a live pod renews it, a dead pod's
    #: lease frees itself after this long.
    budget_lease_s: float = 5.0
    #: ``/readyz`` answers 503 once Redis has been unreachable this long; ``null``: never.
    unready_after_s: float | None = 30.0
    #: The in-memory store forgets the oldest keys past this many (bounded memory).
    memory_max_keys: int = 200_000
    #: How long the message id of a card sent for a ``subject_key`` is remembered (so a
    #: later state updates it): at most the platform's 14-day card update window.
    subject_ttl_s: float = 14 * 86_400.0


@dataclass(frozen=True)
class HttpSettings:
    timeout_s: float = 10.0
    max_connections: int = 512


@dataclass(frozen=True)
class ConsoleSettings:
    #: The live console at ``/console/`` on the observability port (read-only by itself).
    enabled: bool = True
    #: Pause and resume destinations and bots from the console; needs ``token``.
    actions: bool = False
    #: The bearer token the actions require: ``{env: NAME}`` or ``{file: PATH}`` (a Secret).
    token: SecretRef | None = None


@dataclass(frozen=True)
class ObservabilitySettings:
    #: Port for /metrics, /healthz, /readyz and the console; ``null`` turns the server off.
    port: int | None = 9464
    host: str = "0.0.0.0"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    console: ConsoleSettings = field(default_factory=ConsoleSettings)


@dataclass(frozen=True)
class WindowSetting:
    limit: int
    seconds: float


@dataclass(frozen=True)
class LimitOverrides:
    """Replace a backend's default windows; ``[]`` means no limit for that scope."""

    destination: tuple[WindowSetting, ...] | None = None
    app: tuple[WindowSetting, ...] | None = None


@dataclass(frozen=True)
class BotSettings:
    name: str
    #: A key of the backend registry (``backends/__init__.py``), checked at load.
    backend: str
    #: Defaults to the platform's public host (Feishu, or MindOffice). Set it for Lark
    #: (``https://open.larksuite.com``), a private deployment or the simulator.
    base_url: str | None = None
    #: The app id of a Feishu/Lark app or a MindOffice robot (not a secret).
    app_id: str | None = None
    #: ``token`` and ``secret`` (webhook), ``app_secret`` (apps): each ``{env:}`` or ``{file:}``.
    credentials: Mapping[str, SecretRef] = field(default_factory=dict)
    limits: LimitOverrides = field(default_factory=LimitOverrides)
    timeout_s: float | None = None
    #: Platform codes to retry although the backend would treat them as final. For
    #: MindOffice, which documents no error codes: its non-200 codes are final by default.
    retry_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class DigestSettings:
    """When a destination counts as behind its budget (README, "Incident storms")."""

    #: Off: requests with a ``digest_key`` are always sent one by one.
    enabled: bool = True
    #: Normal-priority requests are merged once their lane holds more than its own
    #: budget sends in this long, or its oldest request has waited this long.
    after_s: float = 10.0
    #: The same test for low-priority requests (the first to be digested): at most ``after_s``.
    low_after_s: float = 2.0
    #: At most this many requests in one digest (split into several cards by size).
    max_items: int = 200


@dataclass(frozen=True)
class PrioritySettings:
    #: While urgent and other requests wait for the same app budget, urgent ones take this
    #: share of its sends and the others the rest (so neither starves): between 0 and 1.
    urgent_share: float = 0.8


@dataclass(frozen=True)
class Settings:
    worker_id: str = ""
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    idempotency: IdempotencySettings = field(default_factory=IdempotencySettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    priority: PrioritySettings = field(default_factory=PrioritySettings)
    bots: Mapping[str, BotSettings] = field(default_factory=dict)
