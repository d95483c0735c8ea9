"""Bytes → :class:`SendRequest`, or a :class:`ValidationError` that names the field and why.

The rules are those of ``schemas/send-request.v1.json`` (a test holds the two together
over ``schemas/examples``), plus what JSON Schema cannot say: a ``content`` string must be
JSON, and each backend's documented content rules (``Backend.check``: sizes, card shape,
colours, buttons). Nothing here does I/O, so ``cardq validate`` runs it offline.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import orjson

from .backends import REGISTRY
from .backends.base import OperationSpec
from .errors import ValidationError as ValidationError  # callers catch it here
from .lifecycle import NO_RECALL, subject_problem
from .models import PRIORITIES, SendRequest

_ID = re.compile(r"^[!-~]{1,128}$")
_KEY = re.compile(r"^[!-~]{1,256}$")
_BOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
#: RFC 3339 ``date-time`` syntax (upper-case T and Z), as the schema's ``pattern`` says; the
#: offset is optional here only so that a missing one gets its own message below.
_RFC3339 = re.compile(
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)

TOP_LEVEL = frozenset(
    {
        "version",
        "request_id",
        "idempotency_key",
        "backend",
        "bot",
        "operation",
        "target",
        "msg_type",
        "content",
        "expires_at",
        "created_at",
        "trace",
        "subject_key",
        "priority",
        "digest_key",
    }
)


def check_bot(request: SendRequest, configured_backend: str | None) -> None:
    """The one rule the contract cannot state: ``bot`` names a configured bot of that
    backend. Shared by the worker and ``cardq validate``/``send --config``, so both give
    the same code for the same request."""
    if configured_backend is None:
        raise ValidationError(
            "bot", f"no bot named {request.bot!r} is configured in this worker", "unknown_bot"
        )
    if configured_backend != request.backend:
        raise ValidationError(
            "backend",
            f"bot {request.bot!r} is a {configured_backend} bot, not {request.backend}",
            "backend_mismatch",
        )


def decode(raw: bytes, *, max_bytes: int | None = None) -> SendRequest:
    if max_bytes is not None and len(raw) > max_bytes:
        raise ValidationError(
            "$",
            f"record is {len(raw)} bytes, more than the {max_bytes} allowed",
            "record_too_large",
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("$", f"not valid JSON ({exc})", "invalid_json") from None
    return from_dict(data)


def from_dict(data: Any) -> SendRequest:
    if not isinstance(data, dict):
        raise ValidationError("$", f"must be a JSON object, not {_type(data)}", "invalid_json")
    for name in data:
        if name not in TOP_LEVEL:
            raise ValidationError(str(name), "unknown field (contract v1)")
    version = _required(data, "version")
    if version != 1 or isinstance(version, bool):
        raise ValidationError("version", f"must be 1 (contract v1), got {version!r}")
    request_id = _string(data, "request_id", _ID, "1-128 printable ASCII characters, no spaces")
    key = data.get("idempotency_key")
    if key is None:
        idempotency_key = request_id
    else:
        idempotency_key = _string(
            data, "idempotency_key", _KEY, "1-256 printable ASCII characters, no spaces"
        )
    backend = _required(data, "backend")
    backend_cls = REGISTRY.get(backend) if isinstance(backend, str) else None
    if backend_cls is None:
        raise ValidationError("backend", f"must be one of {', '.join(REGISTRY)}, got {backend!r}")
    operations = backend_cls.description.operations
    bot = _string(data, "bot", _BOT, "a configured bot name: letters, digits, . _ -")
    operation = data.get("operation", "send")
    spec = operations.get(operation) if isinstance(operation, str) else None
    if spec is None and operation == "recall" and backend in NO_RECALL:
        raise ValidationError("operation", f"{backend} cannot recall: {NO_RECALL[backend]}")
    if spec is None:
        raise ValidationError(
            "operation",
            f"{backend} supports {', '.join(operations)}, got {operation!r}",
        )
    target = _target(data.get("target"), spec, backend, operation)
    msg_type, content = _message(data, spec, backend, operation)
    request = SendRequest(
        request_id=request_id,
        idempotency_key=idempotency_key,
        backend=backend,
        bot=bot,
        operation=operation,
        target=target,
        msg_type=msg_type,
        content=content,
        expires_at=_timestamp(data, "expires_at"),
        created_at=_timestamp(data, "created_at"),
        trace=_trace(data.get("trace")),
        subject_key=_short_key(data, "subject_key"),
        priority=_priority(data.get("priority")),
        digest_key=_short_key(data, "digest_key"),
    )
    problem = subject_problem(request)
    if problem is not None:
        raise ValidationError(*problem)
    backend_cls.check(request)
    dest = backend_cls.destination_target(request)
    object.__setattr__(request, "destination", f"{backend}/{bot}/{dest}")
    return request


def _priority(raw: Any) -> str:
    if raw is None:
        return "normal"
    if raw not in PRIORITIES:
        raise ValidationError("priority", f"must be one of {', '.join(PRIORITIES)}, got {raw!r}")
    return str(raw)


def _short_key(data: dict[str, Any], name: str) -> str | None:
    """A producer's grouping key: any string of 1-128 characters (shown to no platform)."""
    raw = data.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or not 1 <= len(raw) <= 128:
        raise ValidationError(name, "must be a string of 1-128 characters")
    return raw


def _target(raw: Any, spec: OperationSpec, backend: str, operation: str) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError("target", f"must be an object, not {_type(raw)}")
    known = set(spec.required) | set(spec.optional) | set(spec.one_of) | set(spec.bools)
    for name in raw:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "nothing"
            raise ValidationError(
                f"target.{name}",
                f"unknown for {backend} {operation} (allowed: {allowed})",
            )
    for name in spec.required:
        if name not in raw:
            raise ValidationError(f"target.{name}", f"required for {backend} {operation}")
    for name, value in raw.items():
        if name in spec.bools:
            if not isinstance(value, bool):
                raise ValidationError(f"target.{name}", f"must be true or false, not {value!r}")
        elif not isinstance(value, str) or not value or len(value) > 256:
            raise ValidationError(f"target.{name}", "must be a non-empty string (≤ 256 characters)")
        allowed_values = spec.enums.get(name)
        if allowed_values is not None and value not in allowed_values:
            raise ValidationError(
                f"target.{name}", f"must be one of {', '.join(allowed_values)}, got {value!r}"
            )
    if spec.one_of and not any(name in raw for name in spec.one_of):
        raise ValidationError(
            f"target.{spec.one_of[0]}",
            f"one of {', '.join(spec.one_of)} is required for {backend} {operation}",
        )
    return raw


def _message(
    data: dict[str, Any], spec: OperationSpec, backend: str, operation: str
) -> tuple[str | None, Any]:
    if not spec.msg_types:
        for name in ("msg_type", "content"):
            if name in data:
                raise ValidationError(name, f"not used by {backend} {operation}")
        return None, None
    msg_type = _required(data, "msg_type")
    if msg_type not in spec.msg_types:
        raise ValidationError(
            "msg_type",
            f"{backend} {operation} accepts {', '.join(sorted(spec.msg_types))}, got {msg_type!r}",
        )
    content = _required(data, "content")
    if isinstance(content, str):
        content = _decode_content(content)
    if not isinstance(content, dict | list):
        raise ValidationError("content", f"must be an object or an array, not {_type(content)}")
    if msg_type in ("text", "markdown"):
        if not isinstance(content, dict):
            raise ValidationError("content", f"must be an object for msg_type {msg_type}")
        text = content.get("text")
        if not isinstance(text, str):
            raise ValidationError("content.text", f"required (a string) for msg_type {msg_type}")
    elif msg_type == "interactive" and not isinstance(content, dict):
        raise ValidationError("content", "a card must be a JSON object")
    return msg_type, content


def _decode_content(text: str) -> Any:
    """A content string as the platforms read it. MindOffice's own example (seed 001) has
    raw line breaks inside a JSON string, which strict JSON forbids and the platform
    accepts; so control characters inside strings are allowed here, nothing else is."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text, strict=False)
    except ValueError:
        raise ValidationError(
            "content", "a string content must hold JSON (the platform's content object)"
        ) from None


def _timestamp(data: dict[str, Any], name: str) -> datetime | None:
    raw = data.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValidationError(name, "must be an RFC 3339 timestamp string")
    if not _RFC3339.fullmatch(raw):
        raise ValidationError(name, f"not an RFC 3339 timestamp: {raw!r}")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(name, f"not an RFC 3339 timestamp: {raw!r}") from None
    if value.tzinfo is None:
        raise ValidationError(name, "needs a time zone offset (e.g. Z or +08:00)")
    return value


def _trace(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError("trace", f"must be an object, not {_type(raw)}")
    for name, value in raw.items():
        if name not in ("traceparent", "tracestate"):
            raise ValidationError(f"trace.{name}", "unknown (traceparent, tracestate)")
        if not isinstance(value, str):
            raise ValidationError(f"trace.{name}", "must be a string")
    tp = raw.get("traceparent")
    if tp is not None and not _TRACEPARENT.fullmatch(tp):
        raise ValidationError(
            "trace.traceparent", "not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
        )
    return raw


def _required(data: dict[str, Any], name: str) -> Any:
    if name not in data or data[name] is None:
        raise ValidationError(name, "required")
    return data[name]


def _string(data: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = _required(data, name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValidationError(name, f"must be {what}, got {value!r}")
    return value


def _type(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
