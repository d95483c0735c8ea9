"""The credentials document, shared by ``--credentials FILE`` and ``POST /_sim/credentials``.

::

    webhooks:   {TOKEN: SECRET or null}      # or {TOKEN: {secret: S, keywords: [..]}}
    apps:       {APP_ID: APP_SECRET}         # Feishu/Lark apps (IM + ephemeral)
    mindoffice: {APP_ID: APP_SECRET}         # MindOffice robots

Checked whole before anything is added, so a bad document changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ._state import State

SECTIONS = ("webhooks", "apps", "mindoffice")


class CredentialsError(ValueError):
    pass


def load_file(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CredentialsError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: must be a mapping with {', '.join(SECTIONS)}")
    return data


def apply(state: State, data: Any) -> None:
    if not isinstance(data, dict):
        raise CredentialsError(f"credentials must be a mapping with {', '.join(SECTIONS)}")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise CredentialsError(f"unknown section(s) {sorted(map(str, unknown))}")
    webhooks = _section(data, "webhooks")
    apps = _section(data, "apps")
    robots = _section(data, "mindoffice")
    hooks: list[tuple[str, str | None, list[str]]] = []
    for token, value in webhooks.items():
        secret, keywords = _webhook(str(token), value)
        hooks.append((str(token), secret, keywords))
    for name, section in (("apps", apps), ("mindoffice", robots)):
        for app_id, secret in section.items():
            if isinstance(secret, bool) or not isinstance(secret, str | int):
                raise CredentialsError(f"{name}.{app_id}: the secret must be a string")
    for token, secret, keywords in hooks:
        state.add_webhook(token, secret, keywords)
    for app_id, secret in apps.items():
        state.add_app(str(app_id), str(secret))
    for app_id, secret in robots.items():
        state.add_mindoffice_robot(str(app_id), str(secret))


def _section(data: dict[str, Any], name: str) -> dict[Any, Any]:
    section = data.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise CredentialsError(f"{name}: must be a mapping")
    return section


def _webhook(token: str, value: Any) -> tuple[str | None, list[str]]:
    if value is None or isinstance(value, str):
        return value, []
    if isinstance(value, dict):
        secret = value.get("secret")
        keywords = value.get("keywords") or []
        if secret is not None and not isinstance(secret, str):
            raise CredentialsError(f"webhooks.{token}.secret: must be a string or null")
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise CredentialsError(f"webhooks.{token}.keywords: must be a list of strings")
        return secret, keywords
    raise CredentialsError(f"webhooks.{token}: a secret (string), null, or {{secret, keywords}}")
