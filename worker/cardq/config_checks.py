"""The rules a configuration must meet beyond its types: bounds, and what each bot needs.

What a bot needs (its credentials, an ``app_id``) comes from its backend's description in
the registry, so a new backend brings its own rules and this file does not change.
"""

from __future__ import annotations

from typing import Any

from .backends import REGISTRY
from .config_build import suggest
from .settings import SUBJECT_TTL_MAX_S, BotSettings, ConfigError, Settings, WindowSetting

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
    ("digest.after_s", 0, False),
    ("digest.low_after_s", 0, False),
    ("digest.max_items", 2, True),
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


def check(settings: Settings) -> None:
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
    if settings.digest.low_after_s > settings.digest.after_s:
        raise ConfigError("digest.low_after_s", "must not be above digest.after_s")
    if not 0 < settings.priority.urgent_share < 1:
        raise ConfigError(
            "priority.urgent_share", "must be between 0 and 1 (neither class may starve)"
        )
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
        ("idempotency.subject_ttl_s", i.subject_ttl_s),
    ):
        if number <= 0:
            raise ConfigError(key, "must be more than 0")
    if i.subject_ttl_s > SUBJECT_TTL_MAX_S:
        raise ConfigError(
            "idempotency.subject_ttl_s",
            f"must be at most {SUBJECT_TTL_MAX_S:g} (14 days: cards cannot be updated later)",
        )
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
    if bot.backend not in REGISTRY:
        raise ConfigError(
            f"{where}.backend",
            f"must be one of {', '.join(REGISTRY)}; got {bot.backend!r}"
            f"{suggest(bot.backend, REGISTRY)}",
        )
    if bot.base_url is not None and not bot.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url", "must start with http:// or https://")
    description = REGISTRY[bot.backend].description
    required, optional = description.credentials, description.optional_credentials
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
    if description.has_app and not bot.app_id:
        raise ConfigError(f"{where}.app_id", f"required for {bot.backend}")
    if bot.timeout_s is not None:
        _check_bound(f"{where}.timeout_s", bot.timeout_s, 0, False)
    for scope in ("destination", "app"):
        windows: tuple[WindowSetting, ...] | None = getattr(bot.limits, scope)
        for i, window in enumerate(windows or ()):
            at = f"{where}.limits.{scope}[{i}]"
            _check_bound(f"{at}.limit", window.limit, 1, True)
            _check_bound(f"{at}.seconds", window.seconds, 0, False)
