"""A producer that does not key by destination is counted and told, without flooding the log."""

from __future__ import annotations

from typing import Any

import orjson
from structlog.testing import capture_logs

from cardq import validation
from cardq.config import Topics
from cardq.keycheck import KeyCheck
from cardq.metrics import Metrics
from cardq.simulator import Simulator
from cardq.testing import FakeClock, ResultCollector, TansuBroker, produce, running_worker
from tests import helpers

TOPICS = Topics()


def counts(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in metrics.registry.collect():
        if family.name != "cardq_key_mismatches":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                out[(labels["backend"], labels["bot"], labels["reason"])] = sample.value
    return out


def request(rid: str = "r1") -> Any:
    return validation.decode(orjson.dumps(helpers.mind(rid, "g1")))


def test_the_destination_key_is_not_reported() -> None:
    metrics = Metrics()
    check = KeyCheck(metrics)
    req = request()
    with capture_logs() as logs:
        check.check(req.destination.encode(), req, 0, 1)
    assert counts(metrics) == {}
    assert logs == []


def test_every_mismatch_is_counted_but_logged_once_per_interval_and_reason() -> None:
    metrics = Metrics()
    clock = FakeClock()
    check = KeyCheck(metrics, every_s=30.0, clock=clock)
    req = request()
    with capture_logs() as logs:
        for offset in range(100):
            check.check(None, req, 2, offset)
            check.check(b"r1", req, 2, offset)
    assert counts(metrics) == {
        ("mindoffice_group", "mind", "no_key"): 100,
        ("mindoffice_group", "mind", "wrong_key"): 100,
    }
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("request_key_not_destination", "no_key"),
        ("request_key_not_destination", "wrong_key"),
    ]
    first = logs[1]
    assert first["log_level"] == "warning"
    assert first["key"] == "r1"
    assert first["destination"] == req.destination
    assert (first["request_id"], first["partition"], first["offset"]) == ("r1", 2, 0)
    assert first["suppressed_since_last"] == 0

    clock.advance(29.9)
    with capture_logs() as logs:
        check.check(None, req, 2, 100)
    assert logs == []
    clock.advance(0.2)
    with capture_logs() as logs:
        check.check(None, req, 2, 101)
    assert len(logs) == 1
    assert logs[0]["suppressed_since_last"] == 100  # 99 in the burst, one just now
    assert counts(metrics)[("mindoffice_group", "mind", "no_key")] == 102


async def test_the_worker_counts_records_keyed_otherwise(
    broker: TansuBroker, sim: Simulator
) -> None:
    """Real broker, real worker: unkeyed and wrongly keyed requests are still delivered,
    and counted by reason; rightly keyed ones are not counted."""
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    metrics = Metrics()
    settings = helpers.settings(broker.bootstrap_servers, sim.base_url)
    async with (
        running_worker(settings, metrics=metrics),
        ResultCollector(broker.bootstrap_servers) as results,
    ):
        logs = await _produce_mixed_keys(broker, results)
    statuses = {r["request_id"]: r["status"] for r in results.results}
    assert set(statuses.values()) == {"delivered"}, statuses
    assert counts(metrics) == {
        ("mindoffice_group", "mind", "no_key"): 2,
        ("feishu_webhook", "hook", "wrong_key"): 1,
    }
    # one warning per reason: the second unkeyed record falls in the same minute
    warned = [
        (e["reason"], e["request_id"]) for e in logs if e["event"] == "request_key_not_destination"
    ]
    assert warned == [("no_key", "unkeyed-1"), ("wrong_key", "by-request-id")]


async def _produce_mixed_keys(broker: TansuBroker, results: ResultCollector) -> list[Any]:
    with capture_logs() as logs:
        await produce(
            broker.bootstrap_servers, TOPICS.requests,
            [helpers.mind("unkeyed-1", "g1"), helpers.mind("unkeyed-2", "g2")], key=None,
        )  # fmt: skip
        await produce(
            broker.bootstrap_servers, TOPICS.requests,
            [helpers.hook("by-request-id")], key=lambda r: str(r["request_id"]),
        )  # fmt: skip
        await produce(broker.bootstrap_servers, TOPICS.requests, [helpers.im("keyed", "oc_1")])
        await results.wait_for_count(4, timeout=30)
    return logs
