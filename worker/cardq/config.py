"""Settings: one YAML file, then ``CARDQ_*`` environment overrides, then frozen dataclasses.

Three modules: the keys and their defaults (``settings.py``, the configuration reference;
the README's table is generated from the same fields by a test), the typed build that reads
the credentials (``config_build.py``) and the checks (``config_checks.py``); this one loads.
Rules:

* Nested keys are overridden with a double underscore: ``CARDQ_KAFKA__BOOTSTRAP_SERVERS``,
  ``CARDQ_BOTS__OPS_ALERTS__BASE_URL``; values are read as YAML scalars (``true``, ``5``).
* Credentials are never read from the YAML itself: each is ``{env: NAME}`` or
  ``{file: /path}`` (a mounted Kubernetes Secret). A literal value is an error.
* Credentials are read once, here, from the environment mapping given to :func:`load`
  (the process environment by default); nothing reads the environment again.
* A bad configuration raises :class:`ConfigError` naming the key, before anything starts.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config_build import build
from .config_checks import _BOUNDS, check
from .secrets import Secret
from .settings import (
    BotSettings,
    ConfigError,
    ConsoleSettings,
    DeliverySettings,
    HttpSettings,
    IdempotencySettings,
    KafkaSettings,
    LimitOverrides,
    ObservabilitySettings,
    SecretRef,
    Settings,
    Topics,
    WindowSetting,
)

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
        settings: Settings = build(Settings, data, "", env)
        if not settings.worker_id:
            worker_id = f"{socket.gethostname()}-{os.getpid()}"
            settings = dataclasses.replace(settings, worker_id=worker_id)
        check(settings)
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


def _match_key(node: Mapping[str, Any], part: str) -> str:
    """Env names are upper-case with ``_`` for ``-``: find the existing key they mean."""
    for key in node:
        if str(key).lower().replace("-", "_") == part:
            return str(key)
    return part


def check_credentials(settings: Settings) -> list[str]:
    """Every credential ``cardq run`` will use, checked as it will; returns their keys.

    ``run --check`` calls it so that a configuration it passes is one ``run`` accepts: an
    unset variable or an unreadable file (as found at load) is a :class:`ConfigError`
    naming both.
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
        resolve_secret(ref, key)
    return [key for key, _ in refs]


def resolve_secret(ref: SecretRef, key: str) -> Secret:
    """The credential read at load; one that could not be read is a :class:`ConfigError`
    naming ``key`` and why (an unset variable, an unreadable file)."""
    return (ref if ref.key else dataclasses.replace(ref, key=key)).secret()


__all__ = [
    "_BOUNDS",
    "BotSettings",
    "ConfigError",
    "ConsoleSettings",
    "DeliverySettings",
    "HttpSettings",
    "IdempotencySettings",
    "KafkaSettings",
    "LimitOverrides",
    "ObservabilitySettings",
    "SecretRef",
    "Settings",
    "Topics",
    "WindowSetting",
    "check_credentials",
    "env_overrides",
    "from_mapping",
    "load",
    "resolve_secret",
]
