"""``cardq replay``: produce chosen dead letters' original requests back to the requests topic.

Why the original bytes and key, unchanged: the request keeps its ``request_id`` and its
``idempotency_key``, so a request that was in fact delivered (or that is replayed twice)
ends ``duplicate`` instead of reaching the chat twice, and its new result is found under the
same ``request_id`` as the failure it answers. Each replayed record also carries the header
``cardq-replay-of`` (``topic/partition/offset`` of the original request), so the new
record's position, which its result names in ``source``, leads back to the original.

Only the latest dead letter of each request is replayed: a request that failed, was
replayed and failed again is sent once more, not twice.
"""

from __future__ import annotations

import base64
import binascii
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaProducer

from .results_cli import ResultFilters
from .topic_reader import read

REPLAY_HEADER = "cardq-replay-of"


@dataclass(frozen=True)
class Filters(ResultFilters):
    """The result filters, applied to a dead letter's result, and more: ``reasons`` match
    error kind, code or platform code, ``since_ms``/``until_ms`` when it was dead-lettered.
    Empty sets match everything."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def empty(self) -> bool:
        no_time = self.since_ms is None and self.until_ms is None
        return super().empty and not self.reasons and no_time

    def matches_letter(self, letter: dict[str, Any], timestamp_ms: int) -> bool:
        result = letter.get("result") or {}
        error = result.get("error") or {}
        reasons = {
            str(error.get(name)) for name in ("kind", "code", "platform_code") if error.get(name)
        }
        return (
            self.matches(result)
            and (not self.reasons or bool(reasons & self.reasons))
            and (self.since_ms is None or timestamp_ms >= self.since_ms)
            and (self.until_ms is None or timestamp_ms < self.until_ms)
        )


@dataclass(frozen=True)
class Candidate:
    """One dead letter chosen for replay, decoded enough to send and to describe."""

    request_id: str | None
    value: bytes
    key: bytes | None
    origin: str  # topic/partition/offset of the original request
    reason: str
    destination: str | None
    dead_lettered_ms: int
    truncated: bool

    @property
    def identity(self) -> str:
        return self.request_id if self.request_id is not None else self.origin

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.dead_lettered_ms / 1000, UTC)
        return (
            f"{when:%Y-%m-%d %H:%M:%SZ}  {self.request_id or '-'}  {self.destination or '-'}  "
            f"{self.reason}  from {self.origin}"
            + ("  (truncated: cannot replay)" if self.truncated else "")
        )


def candidate(letter: dict[str, Any], timestamp_ms: int) -> Candidate:
    original = letter["original"]
    result = letter.get("result") or {}
    error = result.get("error") or {}
    source = letter["source"]
    key = original.get("key_b64")
    code = error.get("platform_code")
    reason = f"{result.get('status')}/{error.get('kind')}/{error.get('code')}" + (
        f"/{code}" if code is not None else ""
    )
    return Candidate(
        request_id=result.get("request_id"),
        value=base64.b64decode(original["value_b64"], validate=True),
        key=base64.b64decode(key, validate=True) if key else None,
        origin=f"{source['topic']}/{source['partition']}/{source['offset']}",
        reason=reason,
        destination=result.get("destination"),
        dead_lettered_ms=timestamp_ms,
        truncated=bool(original.get("truncated")),
    )


class Progress:
    """One line on stderr, rewritten in place on a terminal, printed at the end otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""

    def update(self, text: str, *, final: bool = False) -> None:
        self._last = text
        if self._tty:
            self._stream.write(f"\r\x1b[2K{text}" + ("\n" if final else ""))
            self._stream.flush()
        elif final:
            print(text, file=self._stream)


def bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


async def choose(
    options: dict[str, Any],
    topic: str,
    filters: Filters,
    progress: Progress,
    warn: Callable[[str], None],
) -> tuple[int, list[Candidate]]:
    """Scan the dead-letter topic; the latest matching dead letter of each request."""
    chosen: dict[str, Candidate] = {}
    scanned = 0
    async for record in read(options, topic, since_ms=filters.since_ms):
        scanned += 1
        if scanned % 500 == 0:
            progress.update(f"replay: scanned {scanned} dead letters, {len(chosen)} match")
        try:
            letter = orjson.loads(record.value or b"null")
            if not isinstance(letter, dict) or not filters.matches_letter(letter, record.timestamp):
                continue
            found = candidate(letter, record.timestamp)
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error) as exc:
            warn(f"skipped {topic}/{record.partition}/{record.offset}: not a dead letter ({exc})")
            continue
        chosen.pop(found.identity, None)  # keep insertion order = order of the latest
        chosen[found.identity] = found
    progress.update(f"replay: scanned {scanned} dead letters, {len(chosen)} match", final=True)
    return scanned, list(chosen.values())


async def send(
    options: dict[str, Any],
    topic: str,
    candidates: list[Candidate],
    progress: Progress,
    out: Callable[[str], None],
) -> int:
    """Produce each replayable original with its key and the replay header; return the count."""
    replayable = [c for c in candidates if not c.truncated]
    producer = AIOKafkaProducer(**options, acks="all")
    await producer.start()
    sent = 0
    try:
        for item in replayable:
            meta = await producer.send_and_wait(
                topic,
                item.value,
                key=item.key,
                headers=[(REPLAY_HEADER, item.origin.encode())],
            )
            sent += 1
            out(f"sent {item.identity} -> {topic}/{meta.partition}/{meta.offset}")
            progress.update(
                f"replay: {bar(sent, len(replayable))} sent {sent}/{len(replayable)}",
                final=sent == len(replayable),
            )
    finally:
        await producer.stop()
    return sent
