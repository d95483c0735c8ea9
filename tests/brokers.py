"""The broker a test runs on, and the session's record of which parts ran or were skipped.

Integration tests run on both Tansu (a fresh in-memory broker per test, a second to start)
and Apache Kafka (one JVM per session, shared). On a shared broker tests must not see each
other's records or group, so every test gets its own topic names and consumer group here,
whichever broker it runs on, and uses them through :class:`BrokerUnderTest`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cardq.config import Settings, Topics, from_mapping
from cardq.devtools.broker import create_topics
from cardq.devtools.kafka import KAFKA_VERSION, KafkaUnavailable, ensure_libs
from tests import helpers


@dataclass
class BrokerUnderTest:
    kind: str  # "tansu" or "kafka"
    bootstrap_servers: str
    topics: Topics = field(default_factory=lambda: unique_topics())
    group: str = field(default_factory=lambda: f"cardq-test-{uuid.uuid4().hex[:10]}")

    async def create_topics(self, names: list[str], partitions: int = 1) -> None:
        await create_topics(self.bootstrap_servers, names, partitions)

    async def create_all(self, partitions: int = 1) -> None:
        """This test's requests topic with ``partitions``; results and dead letters with one."""
        await self.create_topics([self.topics.requests], partitions)
        await self.create_topics([self.topics.results, self.topics.dead_letters])

    def config(self, base_url: str, **sections: Any) -> dict[str, Any]:
        kafka = {"topics": vars(self.topics), **sections.pop("kafka", {})}
        return helpers.config_dict(
            self.bootstrap_servers, base_url, group=self.group, kafka=kafka, **sections
        )

    def settings(self, base_url: str, **sections: Any) -> Settings:
        return from_mapping(self.config(base_url, **sections), env=helpers.CREDENTIALS)

    def write_config(self, path: Path, base_url: str, **sections: Any) -> Path:
        return helpers.dump_config(path, self.config(base_url, **sections))


def unique_topics() -> Topics:
    tag = uuid.uuid4().hex[:10]
    return Topics(f"t{tag}.requests", f"t{tag}.results", f"t{tag}.dead-letters")


@dataclass
class Part:
    """Something the session may run or skip as a whole (a broker, the image build, ...)."""

    title: str
    ran: int = 0
    skipped_tests: int = 0
    skip_reason: str | None = None
    checked: bool = False  # whether skip_reason was looked for yet
    notes: list[str] = field(default_factory=list)


#: Test markers naming a part; ``pytest_terminal_summary`` reports each. Add a marker here
#: (and mark the tests) to have another part counted.
PARTS: dict[str, Part] = {
    "on_kafka": Part("Apache Kafka"),
    "on_tansu": Part("Tansu"),
}


def kafka_problem() -> str | None:
    """Why Apache Kafka cannot be had here (no Java 17+, no Maven, Maven cannot fetch it),
    or None; the jars are fetched the first time. Asked once per session."""
    part = PARTS["on_kafka"]
    if part.checked:
        return part.skip_reason
    part.checked = True
    began = time.monotonic()
    try:
        ensure_libs()
    except KafkaUnavailable as exc:
        part.skip_reason = str(exc)
    else:
        part.title = f"Apache Kafka {KAFKA_VERSION}"
        took = time.monotonic() - began
        if took > 2:  # fetched now, not found in the cache
            part.notes.append(f"jars fetched from Maven Central in {took:.0f} s")
    return part.skip_reason


def require_kafka() -> None:
    """Skip where the broker cannot be had (the reason goes into the summary). A broker
    that fails *after* that is an error, not a skip."""
    problem = kafka_problem()
    if problem is not None:
        pytest.skip(f"Apache Kafka: {problem}")
