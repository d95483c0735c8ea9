"""Builders shared by the integration tests: settings for a broker + simulator, requests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import yaml

from cardq.config import SecretRef, Settings, from_mapping
from cardq.config_build import build

CREDENTIALS = {
    "T_HOOK_TOKEN": "hook-token-5e1f0c",
    "T_HOOK_SECRET": "hook-secret-a77d21",
    "T_APP_SECRET": "app-secret-3b9c44",
    "T_MIND_SECRET": "mind-secret-0d6e18",
}
APP_ID = "cli_test_app"
MIND_APP_ID = "robot_test"


def found(folder: Path, pattern: str = "*.json") -> list[Path]:
    """The files a data-driven test runs over, sorted, and never none: a moved folder once
    turned a parametrized test into zero silent passes (pytest's ``empty_parameter_set_mark``
    catches an empty list, not a loop over one, nor one empty half of two)."""
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no {pattern} in {folder}: did the folder move?")
    return paths


async def until(
    condition: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.05
) -> None:
    """Poll ``condition`` (a plain or an async function) until it holds: the way a test
    waits for something that has no event, never a fixed sleep. ``what`` names it in the
    error when it does not hold within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {timeout:g} s: {what}")
        await asyncio.sleep(every)


async def holds_for(condition: Callable[[], Any], what: str, seconds: float) -> None:
    """Assert ``condition`` stays true for ``seconds``: what a test of "nothing is sent
    while paused" must wait out (an absence has no event to wait for)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert condition(), what
        await asyncio.sleep(0.1)


async def http_status(port: int, path: str = "/readyz") -> int:
    """The status a worker's health/console port answers on ``path`` (0: no answer yet)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as answer,
        ):
            return answer.status
    except aiohttp.ClientError:
        return 0


def redis_idempotency(url: str, prefix: str, **more: Any) -> dict[str, Any]:
    """The ``idempotency`` section of a pool's configuration: the Redis store here."""
    return {"store": "redis", "redis_url": url, "key_prefix": prefix, **more}


def register(sim: Any) -> None:
    """Give the simulator the credentials the test configuration refers to."""
    sim.add_webhook(CREDENTIALS["T_HOOK_TOKEN"], CREDENTIALS["T_HOOK_SECRET"])
    sim.add_app(APP_ID, CREDENTIALS["T_APP_SECRET"])
    sim.add_mindoffice_robot(MIND_APP_ID, CREDENTIALS["T_MIND_SECRET"])


def credential(ref: str | Mapping[str, str], env: Mapping[str, str] = CREDENTIALS) -> SecretRef:
    """A credential read as ``config.load`` reads it: ``ref`` is a variable name (or
    ``{"file": PATH}``), looked up in ``env``, never in the process environment."""
    spec = {"env": ref} if isinstance(ref, str) else dict(ref)
    found: SecretRef = build(SecretRef, spec, "credentials", env)
    return found


def config_dict(
    bootstrap: str, base_url: str, *, group: str = "cardq-test", **sections: Any
) -> dict[str, Any]:
    hook_credentials = {"token": {"env": "T_HOOK_TOKEN"}, "secret": {"env": "T_HOOK_SECRET"}}
    app_credentials = {"app_secret": {"env": "T_APP_SECRET"}}
    data: dict[str, Any] = {
        "worker_id": sections.pop("worker_id", "test-worker"),
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "session_timeout_ms": 3_000,
            "heartbeat_interval_ms": 1_000,
        },
        "delivery": {
            "commit_interval_s": 0.2,
            "drain_grace_s": 5,
            "backoff_base_s": 0.05,
            "backoff_cap_s": 0.5,
        },
        "observability": {"port": None, "log_format": "json", "log_level": "warning"},
        "bots": {
            "hook": {
                "backend": "feishu_webhook",
                "base_url": base_url,
                "credentials": hook_credentials,
            },
            "app": {
                "backend": "feishu_message",
                "base_url": base_url,
                "app_id": APP_ID,
                "credentials": app_credentials,
            },
            "eph": {
                "backend": "feishu_ephemeral",
                "base_url": base_url,
                "app_id": APP_ID,
                "credentials": app_credentials,
            },
            "mind": {
                "backend": "mindoffice_group",
                "base_url": base_url,
                "app_id": MIND_APP_ID,
                "credentials": {"app_secret": {"env": "T_MIND_SECRET"}},
            },
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            _merge(data[section], values)
        else:
            data[section] = values
    return data


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def settings(bootstrap: str, base_url: str, **sections: Any) -> Settings:
    return from_mapping(config_dict(bootstrap, base_url, **sections), env=CREDENTIALS)


def write_config(path: Path, bootstrap: str, base_url: str, **sections: Any) -> Path:
    return dump_config(path, config_dict(bootstrap, base_url, **sections))


def dump_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def worker_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "cardq", "run", "--config", str(config), "--loop", "asyncio"]


@contextlib.contextmanager
def worker_process(
    config: Path, log: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``cardq run`` as a process of its own (killed if the test leaves it running); its
    log lines are appended to ``log`` when given (a restarted worker adds to the same file).
    ``env`` adds variables to the child's environment only (credentials a test's
    configuration names): the test process's own environment is never changed."""
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            worker_command(config),
            env={**os.environ, **CREDENTIALS, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def log_events(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` that a worker process wrote to ``log`` so far."""
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


@contextlib.contextmanager
def json_log(level: str) -> Iterator[io.StringIO]:
    """The worker's JSON log at ``level`` into a buffer, and the logging set-up as it was
    afterwards: a level left behind (say ``warning``) would hide later tests' info events
    even from ``structlog.testing.capture_logs``."""
    from cardq.logging import configure

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure("json", level, stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)


def hook(rid: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "request_id": rid,
        "backend": "feishu_webhook",
        "bot": "hook",
        "msg_type": "text",
        "content": {"text": text},
        **extra,
    }


def im(rid: str, chat: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "request_id": rid,
        "backend": "feishu_message",
        "bot": "app",
        "target": {"receive_id_type": "chat_id", "receive_id": chat},
        "msg_type": "text",
        "content": {"text": text},
        **extra,
    }


def mind(rid: str, group: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "request_id": rid,
        "backend": "mindoffice_group",
        "bot": "mind",
        "target": {"group_id": group},
        "msg_type": "text",
        "content": {"text": text},
        **extra,
    }
