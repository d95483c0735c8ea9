"""The Go and TypeScript producer examples, built and run against a real broker and ``cardq run``.

A service team copies these, so they are held to what the README promises: the request they
build passes the contract, is keyed by its destination, and cardq delivers it to the
(simulated) platform. Each test skips with one line where its toolchain is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from cardq import validation
from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, TansuBroker
from tests import helpers
from tests.toolchains import ROOT, npm_install, require

TOPICS = Topics()
SCHEMA = ROOT / "schemas" / "send-request.v1.json"


def expected_keys(out: Path) -> Path:
    """The worker's destination key for every valid example, for the examples to match."""
    keys = {
        str(path): validation.decode(path.read_bytes()).destination
        for path in helpers.found(ROOT / "schemas" / "examples" / "valid")
    }
    target = out / "expected-keys.json"
    target.write_text(json.dumps(keys))
    return target


def go(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    # -mod=readonly: the committed go.sum must be complete; nothing edits it.
    done = subprocess.run(
        ["go", *args],
        cwd=folder,
        env={**os.environ, "GOFLAGS": "-mod=readonly", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"go {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def build_go(out: Path) -> list[str]:
    require("go")
    folder = ROOT / "examples" / "go-producer"
    binary = out / "go-producer"
    go(folder, "build", "-o", str(binary), ".")
    go(folder, "vet", ".")
    unformatted = subprocess.run(["gofmt", "-l", "."], cwd=folder, capture_output=True, text=True)
    assert unformatted.stdout == "", f"gofmt would change: {unformatted.stdout}"
    # DestinationKey against the worker's key for every valid example of the contract.
    ran = go(
        folder, "test", "-count=1", "-v", ".", env={"CARDQ_EXPECTED_KEYS": str(expected_keys(out))}
    )
    assert "--- PASS: TestDestinationKeyMatchesTheWorker" in ran, ran
    # Tansu closes the connection on franz-go's newest ApiVersions request; Kafka 3.9's is fine.
    return [str(binary), "-max-kafka-version", "3.9.0"]


def build_ts(out: Path) -> list[str]:
    require("node", "npm")
    installed = npm_install(ROOT / "examples" / "ts-producer", copy=("tsconfig.json", "src"))
    done = subprocess.run(
        ["node", str(installed / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "."],
        cwd=installed,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # destinationKey against the worker's key for every valid example of the contract.
    keys = subprocess.run(
        ["node", str(installed / "dist" / "check-keys.js"), str(expected_keys(out)), str(SCHEMA)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stdout + keys.stderr
    assert keys.stdout.splitlines()[-1].endswith("examples checked, 0 problems"), keys.stdout
    return ["node", str(installed / "dist" / "producer.js")]


async def request_keys(bootstrap: str, count: int) -> list[tuple[bytes | None, dict[str, object]]]:
    """The first ``count`` records of the requests topic, as (key, decoded value)."""
    consumer = AIOKafkaConsumer(
        TOPICS.requests,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[tuple[bytes | None, dict[str, object]]] = []
    try:
        async with asyncio.timeout(10):
            while len(out) < count:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend((r.key, orjson.loads(r.value or b"null")) for r in records)
    finally:
        await consumer.stop()
    return out


async def run_example(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*command, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(900)  # the first run downloads modules / npm packages and compiles
@pytest.mark.parametrize("build", [build_go, build_ts], ids=["go", "typescript"])
async def test_example_producer_is_delivered_by_cardq(
    build: Callable[[Path], list[str]], broker: TansuBroker, sim: Simulator, tmp_path: Path
) -> None:
    command = await asyncio.to_thread(build, tmp_path)
    bootstrap = broker.bootstrap_servers
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    config = helpers.write_config(tmp_path / "cardq.yaml", bootstrap, sim.base_url)
    rid = f"example-{build.__name__}"
    chat = "oc_example_chat_0001"
    destination = f"feishu_message/app/chat_id:{chat}"

    # A request the schema refuses never reaches Kafka: the example exits 2 and names the field.
    refused = await run_example(
        command, "--brokers", bootstrap, "--schema", str(SCHEMA), "--bot", "app", "--chat", ""
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "receive_id" in refused.stderr

    async with ResultCollector(bootstrap) as results:
        with helpers.worker_process(config):
            sent = await run_example(
                command,
                *("--brokers", bootstrap, "--schema", str(SCHEMA), "--bot", "app"),
                *("--chat", chat, "--request-id", rid, "--text", f"hello from {rid}"),
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert f"sent {rid} key={destination}" in sent.stdout
            await results.wait_for(lambda c: rid in c.by_request(), timeout=30)
    result = results.by_request()[rid][0]
    assert result["status"] == "delivered", result
    assert result["destination"] == destination
    assert result["message_id"]
    (key, value), *rest = await request_keys(bootstrap, 1)
    assert rest == [] and key == destination.encode() and value["request_id"] == rid
    [accepted] = [a for a in sim.accepted if a.message_id == result["message_id"]]
    assert accepted.backend == "feishu_message"
    assert accepted.body["receive_id"] == chat
    assert f"hello from {rid}" in orjson.dumps(accepted.content_decoded).decode()
