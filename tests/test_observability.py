"""What on-call sees: every metric moves as requests flow, /readyz follows the group and
the drain, and no secret ever reaches a log line, a result, a dead letter or an error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cardq import secrets
from cardq.consumer import Worker
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, free_port, produce
from tests import helpers
from tests.brokers import BrokerUnderTest

pytestmark = pytest.mark.both_brokers


METRICS = {
    "cardq_requests_consumed_total",
    "cardq_results_total",
    "cardq_send_duration_seconds_count",
    "cardq_end_to_end_seconds_count",
    "cardq_retries_total",
    "cardq_rate_limit_wait_seconds_count",
    "cardq_in_flight_sends",
    "cardq_buffered_records",
    "cardq_buffered_bytes",
    "cardq_paused_partitions",
    "cardq_consumer_lag",
    "cardq_token_fetches_total",
    "cardq_idempotency_hits_total",
    "cardq_dead_letters_total",
    "cardq_ready",
}


async def scrape(port: int) -> dict[str, float]:
    """Sum of every sample per sample name."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


async def test_metrics_move_and_readiness_follows_the_worker(
    broker: BrokerUnderTest, sim: Simulator
) -> None:
    await broker.create_all()
    port = free_port()
    settings = broker.settings(sim.base_url,
        observability={"port": port, "host": "127.0.0.1", "log_level": "warning"},
        delivery={"max_buffered_records": 5, "resume_ratio": 0.5},
    )  # fmt: skip
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        await helpers.until(lambda: _ok(port, "/healthz"), "/healthz answers 200", 10)
        await helpers.until(
            lambda: _ok(port, "/readyz"), "/readyz answers 200", 10
        )  # after the group join
        requests: list[object] = [helpers.im(f"r{i}", f"oc_{i % 3}") for i in range(30)]
        requests += [helpers.im("dup", "oc_9", idempotency_key="r0"), b"garbage"]
        async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
            # A throttle window of 0.3 s (one throttle answer, then a retry), held open
            # until the first send meets it: a slow fetch on a busy machine can outlast it.
            async def throttle_first_send() -> None:
                while sim.stats.throttle_answers.total() == 0:
                    sim.faults.throttle_until = time.monotonic() + 0.3
                    await asyncio.sleep(0.05)

            throttling = asyncio.create_task(throttle_first_send())
            await produce(broker.bootstrap_servers, broker.topics.requests, requests)  # type: ignore[arg-type]
            await asyncio.wait_for(throttling, timeout=30)
            await results.wait_for_count(32, timeout=30)
        # lag is sampled at each commit tick: wait for the first sample
        await helpers.until(lambda: _has(port, "cardq_consumer_lag"), "the lag is exported", 10)
        values = await scrape(port)
        missing = METRICS - set(values)
        assert not missing, f"not exported: {missing}"
        for name in (
            "cardq_requests_consumed_total", "cardq_results_total",
            "cardq_send_duration_seconds_count", "cardq_end_to_end_seconds_count",
            "cardq_retries_total", "cardq_rate_limit_wait_seconds_count",
            "cardq_token_fetches_total", "cardq_idempotency_hits_total",
            "cardq_dead_letters_total", "cardq_ready",
        ):  # fmt: skip
            assert values[name] > 0, name
        assert values["cardq_requests_consumed_total"] == 32
        # Drain: a slow send keeps the worker draining; /readyz must say not ready.
        sim.faults.latency_s = 1.0
        await produce(
            broker.bootstrap_servers, broker.topics.requests, [helpers.im("slow", "oc_s")]
        )
        await helpers.until(
            lambda: _metric_at_least(port, "cardq_in_flight_sends", 1), "a send in flight", 10
        )
        worker.stop()
        await helpers.until(lambda: _is(port, "/readyz", 503), "/readyz answers 503", 5)
        await task
        assert worker.counts["results"] == 33  # the slow send finished during the drain
    finally:
        worker.stop()
        if not task.done():
            await task


async def _ok(port: int, path: str) -> bool:
    return await _is(port, path, 200)


async def _is(port: int, path: str, code: int) -> bool:
    return await helpers.http_status(port, path) == code


async def _has(port: int, name: str) -> bool:
    return name in await scrape(port)


async def _metric_at_least(port: int, name: str, value: float) -> bool:
    return (await scrape(port)).get(name, 0.0) >= value


@pytest.mark.tansu_only("the scrubber and the log format do not depend on the broker")
async def test_secrets_never_leak(broker: BrokerUnderTest, sim: Simulator) -> None:
    """Known secrets go through every path (signing, tokens, refused tokens, connection
    errors, platform errors, rejects); none appears in logs, results or dead letters."""
    await broker.create_all()
    dead_port = free_port()  # nothing listens here: a connection error with the token in the URL
    settings = broker.settings(sim.base_url,
        delivery={"max_attempts": 2, "backoff_base_s": 0.01, "backoff_cap_s": 0.02},
        bots={
            "deadhook": {
                "backend": "feishu_webhook", "base_url": f"http://127.0.0.1:{dead_port}",
                "credentials": {"token": {"env": "T_HOOK_TOKEN"},
                                "secret": {"env": "T_HOOK_SECRET"}},
            },
            "wrongsecret": {
                "backend": "feishu_webhook", "base_url": sim.base_url,
                "credentials": {"token": {"env": "T_HOOK_TOKEN"},
                                "secret": {"env": "T_APP_SECRET"}},
            },
        },
    )  # fmt: skip
    from cardq.testing import running_worker

    requests: list[object] = [
        helpers.hook("ok-hook"),
        helpers.im("ok-im", "oc_1"),
        {**helpers.hook("dead"), "bot": "deadhook"},
        {**helpers.hook("badsign"), "bot": "wrongsecret"},
        {**helpers.hook("typo"), "bot": "hook", "target": {"x": "y"}},
        b"\xff not json",
    ]
    with helpers.json_log("debug") as log:
        async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
            async with running_worker(settings):
                await produce(broker.bootstrap_servers, broker.topics.requests, requests)  # type: ignore[arg-type]
                await results.wait_for_count(6, timeout=30)
                sim.faults.revoke_tokens()
                await produce(
                    broker.bootstrap_servers, broker.topics.requests, [helpers.im("after", "oc_1")]
                )
                await results.wait_for_count(7, timeout=30)
            outputs = {
                "logs": log.getvalue(),
                "results": orjson.dumps(results.results).decode(),
                "dead letters": orjson.dumps(results.dead_letters).decode(),
            }
    statuses = {r["request_id"]: r["status"] for r in results.results}
    assert statuses["ok-hook"] == statuses["ok-im"] == statuses["after"] == "delivered"
    assert statuses["dead"] == statuses["badsign"] == "failed"
    assert statuses["typo"] == "rejected"
    known = set(helpers.CREDENTIALS.values()) | secrets.known_secrets()
    tokens = [t for t in known if t.startswith("t-")]
    assert tokens, "the tenant tokens issued in this test were registered"
    assert len(known) > len(helpers.CREDENTIALS)  # signatures and tokens joined the set
    for where, text in outputs.items():
        for secret in known:
            assert secret not in text, f"a secret leaked into the {where}"
    assert "send_retry" in outputs["logs"] or "request_finished" in outputs["logs"]


@pytest.mark.tansu_only("the log format does not depend on the broker")
async def test_every_stderr_line_of_a_real_worker_is_json(
    broker: BrokerUnderTest, sim: Simulator, tmp_path: Path
) -> None:
    """The README promises JSON lines, from start to stop, and for a worker refused at
    start too: one given only a dead bootstrap address says so in a JSON line naming
    ``kafka.bootstrap_servers`` and exits 2 (a user error, not a crash). aiokafka logs
    through the standard library into the same JSON when it tries the dead address of a
    list first (it shuffles the list, so whether it does varies)."""
    await broker.create_all()
    dead = f"127.0.0.1:{free_port()}"
    logging_section = {"port": None, "log_format": "json", "log_level": "info"}
    config = broker.write_config(
        tmp_path / "cardq.yaml", sim.base_url, observability=logging_section
    )
    data = yaml.safe_load(config.read_text())
    data["kafka"]["bootstrap_servers"] = f"{dead},{broker.bootstrap_servers}"
    helpers.dump_config(config, data)
    log = tmp_path / "stderr.log"
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        with helpers.worker_process(config, log=log) as proc:
            await produce(broker.bootstrap_servers, broker.topics.requests, [helpers.hook("j1")])
            await results.wait_for_count(1, timeout=60)
            proc.terminate()
            assert await asyncio.to_thread(proc.wait, 30) == 0
    assert results.results[0]["status"] == "delivered"
    unreachable = helpers.write_config(
        tmp_path / "dead.yaml", dead, sim.base_url, observability=logging_section
    )
    refused_log = tmp_path / "refused.log"
    with helpers.worker_process(unreachable, log=refused_log) as refused:
        assert await asyncio.to_thread(refused.wait, 60) == 2
    for path in (log, refused_log):
        text = path.read_text()
        events = [orjson.loads(line) for line in text.splitlines()]  # raises if not JSON
        assert all(
            isinstance(e, dict) and {"event", "level", "timestamp"} <= set(e) for e in events
        )
        for secret in set(helpers.CREDENTIALS.values()) | secrets.known_secrets():
            assert secret not in text
    lines = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert {"worker_started", "worker_stopped"} <= {e["event"] for e in lines}
    (refusal,) = [orjson.loads(line) for line in refused_log.read_text().splitlines()]
    assert refusal["event"] == "configuration_error" and refusal["level"] == "error"
    assert refusal["key"] == "kafka.bootstrap_servers" and dead in refusal["reason"]
