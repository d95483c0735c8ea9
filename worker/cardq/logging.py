"""structlog setup: JSON in production, readable in a terminal, secrets scrubbed always.

The scrubber is the last processor before rendering, so no event, bound value or
exception text can carry a webhook token, app secret, tenant token or signature out.

aiokafka, aiohttp, asyncio and redis log through the standard library. Their records go
through the same processors (``structlog.stdlib.ProcessorFormatter``): a JSON line with
``logger``, ``level`` and ``timestamp`` like the worker's own, scrubbed the same way, so
stderr is one JSON object per line whoever wrote it (a log shipper parses every line).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from .secrets import scrub


def _scrub(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub(value)
        elif value is not None and not isinstance(value, int | float | bool):
            event[key] = scrub(str(value))
    return event


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    exc_info = structlog.processors.format_exc_info if fmt == "json" else _noop
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamp,
        exc_info,
        _scrub,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # The libraries' records: the same fields, the same scrubbing, the same renderer. Only
    # warnings and worse (aiokafka is chatty at info: every join and assignment).
    foreign: list[Any] = [
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        stamp,
    ]
    final: list[Any] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        exc_info,
        _scrub,
        renderer,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=foreign, processors=final)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _noop(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return event
