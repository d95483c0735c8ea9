"""Read a topic from a point in time to its end, or keep following it: for ``cardq replay``
and ``cardq results``.

No consumer group: these tools only look, so they commit nothing, join no group, and never
move a worker's partitions. The end is the end offsets taken when reading starts, so a
scan of a busy topic finishes instead of chasing new records forever (``follow`` does that
on purpose).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from .config import ConfigError, Settings
from .kafka_clients import kafka_options

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, option: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time with an offset (``…Z``, ``…+08:00``).

    A time without an offset is refused rather than guessed: on-call engineers and brokers
    rarely share a time zone.
    """
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            option, f"{text!r} is neither a duration (30m, 2h, 1d) nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        raise ConfigError(option, f"{text!r} needs an offset (Z or +08:00)")
    return when


def to_ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def client_options(settings: Settings, bootstrap: str | None) -> dict[str, Any]:
    options = kafka_options(settings.kafka)
    if bootstrap:
        options["bootstrap_servers"] = bootstrap
    return options


class TopicMissing(RuntimeError):
    pass


async def read(
    options: dict[str, Any],
    topic: str,
    *,
    since_ms: int | None = None,
    follow: bool = False,
    poll_ms: int = 200,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from ``since_ms`` (or the beginning) to the end offsets of
    when reading began; with ``follow``, then every new record until cancelled."""
    consumer = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=poll_ms,
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            raise TopicMissing(f"topic {topic!r} does not exist on the broker")
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        if since_ms is None:
            await consumer.seek_to_beginning(*tps)
        else:
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            for tp in tps:
                at = found.get(tp)
                if at is None:  # nothing at or after that time in this partition
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, at.offset)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while pending or follow:
            batch = await consumer.getmany(*tps, timeout_ms=poll_ms)
            for records in batch.values():
                for record in records:
                    yield record
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
