"""Settings: one YAML file, then ``CARDQ_*`` environment overrides, then frozen dataclasses.

Every default lives in the dataclasses below, so this file is the configuration
reference (the README's table is generated from the same fields by a test). Rules:

* Nested keys are overridden with a double underscore: ``CARDQ_KAFKA__BOOTSTRAP_SERVERS``,
  ``CARDQ_BOTS__OPS_ALERTS__BASE_URL``; values are read as YAML scalars (``true``, ``5``).
* Credentials are never read from the YAML itself: each is ``{env: NAME}`` or
  ``{file: /path}`` (a mounted Kubernetes Secret). A literal value is an error.
* A bad configuration raises :class:`ConfigError` naming the key, before anything starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .models import BACKENDS
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
    """Where a credential comes from: an environment variable or a file."""

    env: str | None = None
    file: str | None = None


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
    commit_interval_s: float = 1.0
    #: Each rate window is stretched by this fraction so that network jitter never lets
    #: the platform count one send too many in its window.
    limit_margin: float = 0.02


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
    #: Connections to Redis per worker (a blocking pool: past it a call waits for a free
    #: connection, up to ``redis_timeout_s``, instead of failing).
    redis_max_connections: int = 64
    #: Bound of every Redis call: connect, wait for a pooled connection, answer.
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
    backend: Literal["feishu_webhook", "feishu_message", "feishu_ephemeral", "mindoffice_group"]
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
class Settings:
    worker_id: str = ""
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    idempotency: IdempotencySettings = field(default_factory=IdempotencySettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    bots: Mapping[str, BotSettings] = field(default_factory=dict)


#: Which credentials each backend needs (required, optional).
CREDENTIALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "feishu_webhook": (("token",), ("secret",)),
    "feishu_message": (("app_secret",), ()),
    "feishu_ephemeral": (("app_secret",), ()),
    "mindoffice_group": (("app_secret",), ()),
}


# --------------------------------------------------------------------------- loading

_SECTIONS = frozenset(f.name for f in dataclasses.fields(Settings))


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (if any), apply ``CARDQ_*`` overrides, build and check."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the file ({exc.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML: {_yaml_problem(exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(str(path), "the top level must be a mapping of sections")
        data = loaded or {}
    return from_mapping(data, env)


def from_mapping(data: dict[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from an already-parsed mapping (plus ``CARDQ_*`` overrides)."""
    env = os.environ if env is None else env
    data = copy.deepcopy(data)
    from_env = _apply_env(data, env)
    bots = data.get("bots")
    if isinstance(bots, dict):
        for name, bot in bots.items():
            if isinstance(bot, dict):
                bot.setdefault("name", name)
    try:
        settings: Settings = _build(Settings, data, "")
        if not settings.worker_id:
            worker_id = f"{socket.gethostname()}-{os.getpid()}"
            settings = dataclasses.replace(settings, worker_id=worker_id)
        _check(settings)
    except ConfigError as exc:
        # A value from CARDQ_… is not in the file the user is reading: name the variable.
        variable = _variable_for(exc.key, from_env)
        if variable is None or exc.source is not None:
            raise
        raise ConfigError(exc.key, exc.reason, f"environment variable {variable}") from None
    return settings


def env_overrides(env: Mapping[str, str] | None = None) -> list[str]:
    """The ``CARDQ_*`` variables that override configuration keys (for ``--check``)."""
    env = os.environ if env is None else env
    return sorted(name for name in env if _override_parts(name) is not None)


def _override_parts(name: str) -> list[str] | None:
    if not name.startswith("CARDQ_"):
        return None
    parts = [p.lower() for p in name[len("CARDQ_") :].split("__")]
    if not all(parts) or parts[0] not in _SECTIONS:
        return None  # e.g. CARDQ_CONFIG, or a credential variable named CARDQ_…
    return parts


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Merge the overrides into ``data``; returns which dotted key each variable set."""
    applied: dict[str, str] = {}
    for name, raw in env.items():
        parts = _override_parts(name)
        if parts is None:
            continue
        node = data
        path = []
        for part in parts[:-1]:
            key = _match_key(node, part)
            path.append(key)
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        key = _match_key(node, parts[-1])
        path.append(key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                ".".join(path),
                f"not a YAML value: {_yaml_problem(exc)}",
                f"environment variable {name}",
            ) from None
        node[key] = value
        applied[".".join(path)] = name
    return applied


def _variable_for(key: str, from_env: Mapping[str, str]) -> str | None:
    """The variable that set ``key`` or a key above it (``bots.x`` covers ``bots.x.app_id``)."""
    for path, variable in from_env.items():
        if key == path or key.startswith((path + ".", path + "[")):
            return variable
    return None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message without its ``in "<unicode string>"`` marks: line, column, problem."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else str(problem)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {text}"
    return text


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean X?)`` for a likely misspelling, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _match_key(node: Mapping[str, Any], part: str) -> str:
    """Env names are upper-case with ``_`` for ``-``: find the existing key they mean."""
    for key in node:
        if str(key).lower().replace("-", "_") == part:
            return str(key)
    return part


#: Numeric keys and the smallest value each may take: (key path, minimum, minimum allowed?).
#: Zero or a negative number here is never a deliberate setting but a typo, and some would
#: misbehave quietly (a zero timeout fails every send; a zero window sends everything at once).
_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    ("kafka.session_timeout_ms", 1, True),
    ("kafka.heartbeat_interval_ms", 1, True),
    ("kafka.max_poll_interval_ms", 1, True),
    ("kafka.max_partition_fetch_bytes", 1, True),
    ("delivery.max_in_flight", 1, True),
    ("delivery.max_buffered_records", 1, True),
    ("delivery.max_buffered_bytes", 1, True),
    ("delivery.max_attempts", 1, True),
    ("delivery.max_record_bytes", 1, True),
    ("delivery.max_age_s", 0, False),
    ("delivery.backoff_base_s", 0, False),
    ("delivery.backoff_cap_s", 0, False),
    ("delivery.drain_grace_s", 0, True),
    ("delivery.commit_interval_s", 0, False),
    ("idempotency.ttl_s", 0, False),
    ("idempotency.claim_timeout_s", 0, False),
    ("idempotency.memory_max_keys", 1, True),
    ("idempotency.budget_lease_s", 0, False),
    ("idempotency.unready_after_s", 0, False),  # or null: never
    ("http.timeout_s", 0, False),
    ("http.max_connections", 1, True),
)


def _at(settings: Settings, key: str) -> Any:
    node: Any = settings
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _check_bound(key: str, value: float, minimum: float, inclusive: bool) -> None:
    if inclusive and value < minimum:
        raise ConfigError(key, f"must be at least {minimum:g}; got {value:g}")
    if not inclusive and value <= minimum:
        raise ConfigError(key, f"must be more than {minimum:g}; got {value:g}")


def _check(settings: Settings) -> None:
    for key, minimum, inclusive in _BOUNDS:
        value = _at(settings, key)
        if value is not None:  # an optional key left unset
            _check_bound(key, value, minimum, inclusive)
    d = settings.delivery
    if not 0 < d.resume_ratio < 1:
        raise ConfigError("delivery.resume_ratio", "must be between 0 and 1")
    if not 0 <= d.limit_margin < 1:
        raise ConfigError("delivery.limit_margin", "must be between 0 and 1")
    if d.backoff_cap_s < d.backoff_base_s:
        raise ConfigError("delivery.backoff_cap_s", "must not be below delivery.backoff_base_s")
    port = settings.observability.port
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError("observability.port", f"must be a TCP port (0-65535) or null; got {port}")
    console = settings.observability.console
    if console.actions and console.token is None:
        raise ConfigError(
            "observability.console.token",
            "required when observability.console.actions is true (the actions' bearer token)",
        )
    i = settings.idempotency
    for key, number in (
        ("idempotency.claim_timeout_s", i.claim_timeout_s),
        ("idempotency.redis_timeout_s", i.redis_timeout_s),
        ("idempotency.ttl_s", i.ttl_s),
    ):
        if number <= 0:
            raise ConfigError(key, "must be more than 0")
    if i.redis_max_connections < 1:
        raise ConfigError("idempotency.redis_max_connections", "must be at least 1")
    k = settings.kafka
    if k.security_protocol.startswith("SASL") and not k.sasl_mechanism:
        raise ConfigError("kafka.sasl_mechanism", f"required for {k.security_protocol}")
    topics = {k.topics.requests, k.topics.results, k.topics.dead_letters}
    if len(topics) != 3:
        raise ConfigError("kafka.topics", "requests, results and dead_letters must differ")
    for name, bot in settings.bots.items():
        _check_bot(f"bots.{name}", bot)


def _check_bot(where: str, bot: BotSettings) -> None:
    if bot.base_url is not None and not bot.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url", "must start with http:// or https://")
    required, optional = CREDENTIALS[bot.backend]
    known = required + optional
    # Unknown names first: a misspelt ``tokn`` is the cause, "token required" the symptom.
    for cred in bot.credentials:
        if cred not in known:
            raise ConfigError(
                f"{where}.credentials.{cred}",
                f"unknown credential for {bot.backend}{suggest(cred, known)} "
                f"(expected: {', '.join(known)})",
            )
    for cred in required:
        if cred not in bot.credentials:
            raise ConfigError(f"{where}.credentials.{cred}", f"required for {bot.backend}")
    if bot.backend != "feishu_webhook" and not bot.app_id:
        raise ConfigError(f"{where}.app_id", f"required for {bot.backend}")
    if bot.timeout_s is not None:
        _check_bound(f"{where}.timeout_s", bot.timeout_s, 0, False)
    for scope in ("destination", "app"):
        windows: tuple[WindowSetting, ...] | None = getattr(bot.limits, scope)
        for i, window in enumerate(windows or ()):
            at = f"{where}.limits.{scope}[{i}]"
            _check_bound(f"{at}.limit", window.limit, 1, True)
            _check_bound(f"{at}.seconds", window.seconds, 0, False)


def check_credentials(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    """Read every credential the settings refer to, as ``cardq run`` will; returns the keys.

    ``run --check`` calls it so that a configuration it passes is one ``run`` accepts: an
    unset variable or an unreadable file is a :class:`ConfigError` naming both.
    """
    refs: list[tuple[str, SecretRef]] = []
    k = settings.kafka
    if k.security_protocol.startswith("SASL") and k.sasl_password is not None:
        refs.append(("kafka.sasl_password", k.sasl_password))
    idem = settings.idempotency
    if idem.store == "redis" and idem.redis_password is not None:
        refs.append(("idempotency.redis_password", idem.redis_password))
    console = settings.observability.console
    if console.enabled and console.actions and console.token is not None:
        refs.append(("observability.console.token", console.token))
    for name, bot in settings.bots.items():
        refs += [(f"bots.{name}.credentials.{c}", ref) for c, ref in bot.credentials.items()]
    for key, ref in refs:
        resolve_secret(ref, key, env)
    return [key for key, _ in refs]


def resolve_secret(ref: SecretRef, key: str, env: Mapping[str, str] | None = None) -> Secret:
    """Read a credential; a missing variable or file is a :class:`ConfigError` naming it."""
    env = os.environ if env is None else env
    if ref.env:
        value = env.get(ref.env)
        if not value:
            raise ConfigError(key, f"environment variable {ref.env} is not set")
        return Secret(value)
    if ref.file:
        try:
            return Secret(Path(ref.file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(key, f"cannot read {ref.file} ({exc.strerror})") from None
    raise ConfigError(key, "give env: NAME or file: PATH")


# --------------------------------------------------------------------------- typed build


def _build(tp: Any, value: Any, key: str) -> Any:
    where = key or "(top level)"
    origin = typing.get_origin(tp)
    if tp is SecretRef:
        if not isinstance(value, dict):
            raise ConfigError(
                where,
                "a credential must be {env: NAME} or {file: PATH}; "
                "secrets are never read from the configuration file itself",
            )
        ref = _build_dataclass(SecretRef, value, key)
        if bool(ref.env) == bool(ref.file):
            raise ConfigError(where, "give exactly one of env or file")
        return ref
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(where, "must be a mapping")
        return _build_dataclass(tp, value, key)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                where, f"must be one of {', '.join(map(str, allowed))}; got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(where, "must be a list")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_build(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(where, "must be a mapping")
        _, vt = typing.get_args(tp)
        return {str(k): _build(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, f"must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(where, f"must be a string; got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _build_dataclass(cls: Any, value: dict[str, Any], key: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in value:
        if k not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(
                f"{key}.{k}" if key else str(k),
                f"unknown key{suggest(str(k), names)} (known: {known})",
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{key}.{f.name}" if key else f.name
        if f.name in value:
            kwargs[f.name] = _build(hints[f.name], value[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(sub, "required")
    return cls(**kwargs)


assert set(CREDENTIALS) == set(BACKENDS)
