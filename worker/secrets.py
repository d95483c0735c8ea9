"""Secrets that cannot leak by accident.

A :class:`Secret` prints as ``Secret('***')`` and every revealed value is remembered, so
the log pipeline (``logging.py``) can scrub it from any line, and results and dead letters
can be checked for it. Secrets enter the process only through the configuration (from an
environment variable or a mounted file) or from a token endpoint.
"""

from __future__ import annotations

import threading

_known: set[str] = set()
_lock = threading.Lock()
MASK = "***"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        remember(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def remember(value: str) -> None:
    """Register a value (e.g. a fresh tenant token or a signature) for scrubbing."""
    if len(value) >= 6:  # shorter values would scrub ordinary words
        with _lock:
            _known.add(value)


def scrub(text: str) -> str:
    if not _known:
        return text
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    return text


def known_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_known)
