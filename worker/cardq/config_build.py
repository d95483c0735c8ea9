"""YAML values → the typed settings of ``settings.py``, each error naming its dotted key.

Why hand-written and not pydantic-settings: the worker's hot path uses plain frozen
dataclasses (no validation framework to import or pay for), the key names in errors are
the YAML's own dotted paths (``bots.ops.limits.app[0].seconds``) with a suggestion for a
misspelt key, and the ``CARDQ_*`` overrides and credential references (``{env:}`` /
``{file:}``, never a literal) are rules of this project that a library would need as much
code to bend to. The walk below is ~100 lines over ``typing`` and ``dataclasses``.

Credentials are read here, once: each ``{env: NAME}`` from the environment mapping the
loader was given, each ``{file: PATH}`` from disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from .secrets import Secret
from .settings import ConfigError, SecretRef


def suggest(word: str, choices: Iterable[str]) -> str:
    """``; did you mean X?`` for a likely misspelling, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def build(tp: Any, value: Any, key: str, env: Mapping[str, str]) -> Any:
    where = key or "(top level)"
    origin = typing.get_origin(tp)
    if tp is SecretRef:
        return _secret_ref(value, where, env)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(where, "must be a mapping")
        return _build_dataclass(tp, value, key, env)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build(inner[0], value, key, env)
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
        return tuple(build(item, v, f"{key}[{i}]", env) for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(where, "must be a mapping")
        _, vt = typing.get_args(tp)
        return {str(k): build(vt, v, f"{key}.{k}", env) for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
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


def _secret_ref(value: Any, where: str, env: Mapping[str, str]) -> SecretRef:
    if not isinstance(value, dict):
        raise ConfigError(
            where,
            "a credential must be {env: NAME} or {file: PATH}; "
            "secrets are never read from the configuration file itself",
        )
    for name in value:
        if name not in ("env", "file"):
            raise ConfigError(
                f"{where}.{name}", f"unknown key{suggest(str(name), ('env', 'file'))}"
            )
    ref_env = _scalar(str, value["env"], f"{where}.env") if value.get("env") else None
    ref_file = _scalar(str, value["file"], f"{where}.file") if value.get("file") else None
    if bool(ref_env) == bool(ref_file):
        raise ConfigError(where, "give exactly one of env or file")
    if ref_env:
        found = env.get(ref_env)
        if found:
            return SecretRef(env=ref_env, key=where, value=Secret(found), problem="")
        return SecretRef(
            env=ref_env, key=where, problem=f"environment variable {ref_env} is not set"
        )
    assert ref_file is not None
    try:
        text = Path(ref_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        return SecretRef(
            file=ref_file, key=where, problem=f"cannot read {ref_file} ({exc.strerror})"
        )
    return SecretRef(file=ref_file, key=where, value=Secret(text), problem="")


def _build_dataclass(cls: Any, value: dict[str, Any], key: str, env: Mapping[str, str]) -> Any:
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
            kwargs[f.name] = build(hints[f.name], value[f.name], sub, env)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(sub, "required")
    return cls(**kwargs)
