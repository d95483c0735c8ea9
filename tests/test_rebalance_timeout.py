"""The rebalance timeout the worker asks for covers a whole revocation (drain grace plus
publishing, marking, committing), so Apache Kafka does not hand a draining member's
partitions on (README, "Exactly one result per record"); the JoinGroup request, which
the broker may hold that long, outlives it."""

from __future__ import annotations

from tests import helpers
from worker.consumer import REVOCATION_MARGIN_S, join_request_timeout_ms, rebalance_timeout_ms


def test_the_rebalance_timeout_covers_the_drain_grace_and_the_margin() -> None:
    settings = helpers.settings(
        "127.0.0.1:9092", "http://127.0.0.1:1", delivery={"drain_grace_s": 20}
    )
    assert settings.kafka.session_timeout_ms == 3_000  # aiokafka's default would be this
    assert rebalance_timeout_ms(settings) == int((20 + REVOCATION_MARGIN_S) * 1000)


def test_a_longer_session_timeout_is_kept() -> None:
    settings = helpers.settings(
        "127.0.0.1:9092",
        "http://127.0.0.1:1",
        kafka={"session_timeout_ms": 120_000},
        delivery={"drain_grace_s": 5},
    )
    assert rebalance_timeout_ms(settings) == 120_000


def test_the_join_request_outlives_the_rebalance() -> None:
    assert join_request_timeout_ms(35_000) == 40_000  # aiokafka's default request timeout
    assert join_request_timeout_ms(120_000) == 125_000
