"""What only Apache Kafka can show: the lag metric against the broker's own numbers, static
membership through the real group coordinator, and SASL_SSL with SCRAM-SHA-512.

Tansu answers a wrong high watermark, has its own coordinator and no SASL, so these run on
the session's Kafka (or, for SASL, a second Kafka started for this module), each with real
``cardq run`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from cardq.devtools.kafka import KafkaBroker, SaslSsl
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, free_port, produce, running_worker
from tests import helpers
from tests.brokers import BrokerUnderTest, require_kafka

pytestmark = pytest.mark.on_kafka


@pytest.fixture
def broker(kafka_session: KafkaBroker) -> BrokerUnderTest:
    """This test's topics and group on the session's Kafka."""
    return BrokerUnderTest("kafka", kafka_session.bootstrap_servers)


# ------------------------------------------------------------------------------------ lag


async def broker_lag(broker: BrokerUnderTest) -> dict[int, int]:
    """The group's lag as Kafka's own tools compute it: end offset minus committed offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(broker.group)
    finally:
        await admin.close()
    reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None)
    await reader.start()
    try:
        tps = [TopicPartition(broker.topics.requests, p) for p in (0, 1)]
        ends = await reader.end_offsets(tps)
    finally:
        await reader.stop()
    return {tp.partition: ends[tp] - committed[tp].offset for tp in tps if tp in committed}


async def worker_lag(port: int) -> dict[int, int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    return {
        int(sample.labels["partition"]): int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cardq_consumer_lag"
    }


async def test_lag_metric_matches_the_brokers_lag_for_the_group(
    broker: BrokerUnderTest, sim: Simulator, tmp_path: Path
) -> None:
    """Ten delivered and committed, then 37 held by a platform that stopped answering: the
    worker's ``cardq_consumer_lag`` per partition equals end minus committed offset."""
    await broker.create_all(partitions=2)
    port = free_port()
    config = broker.write_config(
        tmp_path / "cardq.yaml",
        sim.base_url,
        observability={"port": port, "host": "127.0.0.1"},
        http={"timeout_s": 120},
    )
    first = [helpers.im(f"a{i}", f"oc_{i}") for i in range(10)]
    backlog = [helpers.im(f"b{i}", f"oc_{i % 10}") for i in range(37)]
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        with helpers.worker_process(config):
            await produce(broker.bootstrap_servers, broker.topics.requests, first)
            await results.wait_for_count(10, timeout=60)

            async def all_committed() -> bool:
                lag = await broker_lag(broker)
                return set(lag) == {0, 1} and sum(lag.values()) == 0

            await helpers.until(all_committed, "the first ten committed on both partitions", 15)
            sim.faults.latency_s = 600.0  # every send now hangs: nothing finishes
            await produce(broker.bootstrap_servers, broker.topics.requests, backlog)
            seen: dict[str, dict[int, int]] = {}

            async def metric_matches_broker() -> bool:
                seen["worker"] = await worker_lag(port)
                seen["broker"] = await broker_lag(broker)
                return seen["worker"] == seen["broker"] and sum(seen["broker"].values()) == 37

            try:
                await helpers.until(metric_matches_broker, "worker lag == broker lag", 20)
            except TimeoutError:
                pytest.fail(f"lag never matched: {seen}")
    assert all(v > 0 for v in seen["broker"].values()), seen  # both partitions held some


# ------------------------------------------------------------------------ static membership


def assignments(log: Path) -> list[list[int]]:
    found = [e["partitions"] for e in helpers.log_events(log, "partitions_assigned")]
    return [json.loads(p) if isinstance(p, str) else p for p in found]  # JSON logs: "[1, 3]"


async def test_static_member_restarted_gets_its_partitions_back_without_a_rebalance(
    broker: BrokerUnderTest, sim: Simulator, tmp_path: Path
) -> None:
    """Member ``a`` runs in this process, ``b`` as ``cardq run``. ``b`` is stopped (SIGTERM:
    a static member does not leave the group) and started again inside the session timeout:
    it is handed the same partitions, and ``a`` sees no revocation and no new assignment."""
    await broker.create_all(partitions=4)
    static = {"session_timeout_ms": 30_000, "heartbeat_interval_ms": 1_000}
    settings_a = broker.settings(
        sim.base_url, worker_id="a", kafka={**static, "group_instance_id": "a"}
    )
    config_b = broker.write_config(
        tmp_path / "b.yaml",
        sim.base_url,
        worker_id="b",
        kafka={**static, "group_instance_id": "b"},
        observability={"log_level": "info"},
    )
    log_b = tmp_path / "b.log"

    def events_a() -> list[str]:
        names = ("partitions_assigned", "partitions_revoked")
        found = []
        for line in log_a.getvalue().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("event") in names:
                found.append(f"{entry['event']} {entry['partitions']}")
        return found

    def requests_to_every_partition(tag: str) -> list[dict[str, Any]]:
        return [helpers.mind(f"{tag}{i}", f"g{i}") for i in range(40)]

    with helpers.json_log("info") as log_a:
        async with (
            ResultCollector(broker.bootstrap_servers, broker.topics) as results,
            running_worker(settings_a),
        ):
            with helpers.worker_process(config_b, log=log_b) as b:

                async def b_assigned(times: int) -> bool:
                    return len(assignments(log_b)) >= times

                await helpers.until(lambda: b_assigned(1), "b joined", 60)
                await produce(
                    broker.bootstrap_servers,
                    broker.topics.requests,
                    requests_to_every_partition("x"),
                )
                await results.wait_for_count(40, timeout=30)
                before = events_a()
                first_b = assignments(log_b)[-1]
                b.terminate()
                assert await asyncio.to_thread(b.wait, 30) == 0
            with helpers.worker_process(config_b, log=log_b):
                await helpers.until(lambda: b_assigned(2), "b rejoined", 60)
                second_b = assignments(log_b)[-1]
                await produce(
                    broker.bootstrap_servers,
                    broker.topics.requests,
                    requests_to_every_partition("y"),
                )
                await results.wait_for_count(80, timeout=30)
                after = events_a()
    assert first_b and len(first_b) < 4, "b held a share of the partitions"
    assert second_b == first_b, "b got its partitions back"
    assert after == before, f"a saw a rebalance: {after[len(before) :]}"
    workers = {r["worker_id"] for r in results.results if r["request_id"].startswith("y")}
    assert workers == {"a", "b"}, workers


# ------------------------------------------------------------------------------ SASL_SSL

SASL_USER, SASL_PASSWORD = "cardq-svc", "scram-pass-8c41e7"


@dataclass
class SecureKafka:
    broker: KafkaBroker
    cafile: Path


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A second Kafka with a SASL_SSL listener, its certificate signed by a CA made here."""
    require_kafka()
    import trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    cafile = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    broker = KafkaBroker(sasl_ssl=SaslSsl(key_pem, chain, {SASL_USER: SASL_PASSWORD}))
    broker.start_blocking()
    try:
        yield SecureKafka(broker, cafile)
    finally:
        broker.stop()


@pytest.fixture
def secure(secure_kafka: SecureKafka) -> BrokerUnderTest:
    """This test's topics and group on the secure broker, seen from its plain listener."""
    return BrokerUnderTest("kafka", secure_kafka.broker.bootstrap_servers)


def secure_config(
    secure: BrokerUnderTest, secure_kafka: SecureKafka, base_url: str, path: Path
) -> Path:
    """The worker knows only the SASL_SSL address and the documented keys."""
    data = secure.config(
        base_url,
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": SASL_USER,
            "sasl_password": {"env": "T_KAFKA_PASSWORD"},
            "ssl_cafile": str(secure_kafka.cafile),
        },
    )
    data["kafka"]["bootstrap_servers"] = secure_kafka.broker.sasl_ssl_bootstrap_servers
    return helpers.dump_config(path, data)


async def test_sasl_ssl_scram_delivers_with_the_documented_keys(
    secure: BrokerUnderTest,
    secure_kafka: SecureKafka,
    sim: Simulator,
    tmp_path: Path,
) -> None:
    await secure.create_all()
    config = secure_config(secure, secure_kafka, sim.base_url, tmp_path / "cardq.yaml")
    request = tmp_path / "req.json"
    request.write_text(json.dumps(helpers.mind("over-tls", "g1")))
    async with ResultCollector(secure.bootstrap_servers, secure.topics) as results:
        password = {"T_KAFKA_PASSWORD": SASL_PASSWORD}
        with helpers.worker_process(config, env=password) as worker:
            sent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cardq", "send", str(request),
                "--config", str(config), "--wait", "60",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **helpers.CREDENTIALS, **password},
            )  # fmt: skip
            out, err = await sent.communicate()
            assert sent.returncode == 0, err.decode()
            await results.wait_for_count(1, timeout=30)
            assert worker.poll() is None
    assert '"status": "delivered"' in out.decode()  # cardq send read it over SASL_SSL too
    (result,) = results.results
    assert result["request_id"] == "over-tls" and result["status"] == "delivered"
    assert len(sim.accepted) == 1


def test_wrong_sasl_password_stops_run_at_start_with_exit_2(
    secure_kafka: SecureKafka, sim: Simulator, tmp_path: Path
) -> None:
    secure = BrokerUnderTest("kafka", secure_kafka.broker.bootstrap_servers)
    config = secure_config(secure, secure_kafka, sim.base_url, tmp_path / "cardq.yaml")
    done = subprocess.run(
        helpers.worker_command(config),
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **helpers.CREDENTIALS, "T_KAFKA_PASSWORD": "not-the-password",
             "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "configuration error at kafka.sasl_password: " in done.stderr
    assert f"refused user {SASL_USER!r} with SCRAM-SHA-512" in done.stderr
    assert "not-the-password" not in output
    assert "Traceback" not in output and "Unclosed" not in output, output
