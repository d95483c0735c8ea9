"""``cardq results``: look up the results of given request ids, or tail the results topic.

The results topic is keyed by ``request_id`` but Kafka has no index by key, so a lookup is a
bounded scan from a point in time (``--since``, default the last 24 hours): say roughly when
the request was produced, and the scan stays short.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .topic_reader import read


@dataclass(frozen=True)
class ResultFilters:
    request_ids: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    backends: frozenset[str] = frozenset()
    bots: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        """Nothing asked for: every result matches."""
        return not (self.request_ids or self.statuses or self.backends or self.bots)

    def matches(self, result: dict[str, Any]) -> bool:
        return (
            (not self.request_ids or result.get("request_id") in self.request_ids)
            and (not self.statuses or result.get("status") in self.statuses)
            and (not self.backends or result.get("backend") in self.backends)
            and (not self.bots or result.get("bot") in self.bots)
        )


_MARKS = {
    "delivered": "✓",
    "duplicate": "=",
    "expired": "⌛",
    "rejected": "✗",
    "failed": "✗",
    "superseded": "»",  # v2: a newer state of its subject_key replaced it, unsent
}


def human(result: dict[str, Any]) -> str:
    """One line a person can scan: when, status, id, where, and why when it did not work."""
    status = str(result.get("status"))
    parts = [
        str(result.get("finished_at") or "-"),
        f"{_MARKS.get(status, '?')} {status:<9}",
        str(result.get("request_id") or "-"),
        str(result.get("destination") or "-"),
        f"attempts={result.get('attempts')}",
    ]
    if result.get("message_id"):
        parts.append(f"message_id={result['message_id']}")
    if result.get("original_request_id"):
        parts.append(f"original={result['original_request_id']}")
    if result.get("superseded_by"):
        parts.append(f"superseded_by={result['superseded_by']}")
    error = result.get("error")
    if error:
        why = f"error={error.get('kind')}/{error.get('code')}"
        if error.get("platform_code") is not None:
            why += f" platform={error['platform_code']}"
            if error.get("platform_subcode") is not None:
                why += f"/{error['platform_subcode']}"
        if error.get("field"):
            why += f" field={error['field']}"
        parts.append(why)
        if error.get("message"):
            parts.append(f"({error['message']})")
    source = result.get("source") or {}
    parts.append(f"@{source.get('topic')}/{source.get('partition')}/{source.get('offset')}")
    return "  ".join(parts)


async def show(
    options: dict[str, Any],
    topic: str,
    filters: ResultFilters,
    *,
    since_ms: int | None,
    follow: bool,
    as_json: bool,
    out: Callable[[str], None],
) -> set[str]:
    """Print each matching result as it is read; return the request ids seen."""
    seen: set[str] = set()
    async for record in read(options, topic, since_ms=since_ms, follow=follow):
        try:
            result = orjson.loads(record.value or b"null")
        except orjson.JSONDecodeError:
            continue
        if not isinstance(result, dict) or not filters.matches(result):
            continue
        seen.add(str(result.get("request_id")))
        out(orjson.dumps(result).decode() if as_json else human(result))
    return seen
