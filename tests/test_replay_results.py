"""``cardq replay`` and ``cardq results`` as processes, against a real broker, a real
``cardq run`` process and the simulator over HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, TansuBroker, produce
from tests import helpers

TOPICS = Topics()


async def cardq(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cardq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **helpers.CREDENTIALS},
    )


async def requests_topic(bootstrap: str, count: int) -> list[tuple[int, list[tuple[str, bytes]]]]:
    """(offset, headers) of the first ``count`` records of the requests topic."""
    consumer = AIOKafkaConsumer(
        TOPICS.requests, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: list[tuple[int, list[tuple[str, bytes]]]] = []
    try:
        async with asyncio.timeout(10):
            while len(seen) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    seen.extend((r.offset, list(r.headers)) for r in records)
    finally:
        await consumer.stop()
    return seen


def statuses(results: ResultCollector, rid: str) -> list[str]:
    return [r["status"] for r in results.by_request().get(rid, [])]


@pytest.mark.timeout(240)
async def test_replay_after_the_fix_delivers_once_and_again_is_a_duplicate(
    broker: TansuBroker, sim: Simulator, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    config = helpers.write_config(
        tmp_path / "cardq.yaml", bootstrap, sim.base_url, delivery={"max_attempts": 2}
    )
    sim.faults.error_ratio = 1.0  # the platform is down: retries run out, dead letter
    outage = helpers.mind("r-outage", group="g1", text="after the outage")
    unknown_bot = {**helpers.mind("r-typo", group="g1"), "bot": "no-such-bot"}
    async with ResultCollector(bootstrap) as results:
        with helpers.worker_process(config):
            await produce(bootstrap, TOPICS.requests, [outage, unknown_bot])
            await results.wait_for(lambda c: len(c.dead_letters) >= 2, timeout=30)
            assert statuses(results, "r-outage") == ["failed"]
            assert statuses(results, "r-typo") == ["rejected"]

            sim.faults.error_ratio = 0.0  # fixed

            # A dry run lists only what the filter picks and produces nothing.
            dry = await cardq(
                "replay", "--bootstrap-servers", bootstrap, "--reason", "unavailable", "--dry-run"
            )
            assert dry.returncode == 0, dry.stderr
            [line] = dry.stdout.splitlines()
            assert "r-outage" in line and "mindoffice_group/mind/group:g1" in line
            assert "failed/unavailable/" in line and "from cardq.requests/0/0" in line
            assert "would replay 1 to cardq.requests" in dry.stderr

            replayed = await cardq(
                "replay", "--bootstrap-servers", bootstrap, "--reason", "unavailable"
            )
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.splitlines() == ["sent r-outage -> cardq.requests/0/2"]
            assert "replay: [####################] sent 1/1" in replayed.stderr
            await results.wait_for(lambda c: len(statuses(c, "r-outage")) >= 2, timeout=30)
            assert statuses(results, "r-outage") == ["failed", "delivered"]

            again = await cardq(
                "replay", "--bootstrap-servers", bootstrap, "--request-id", "r-outage"
            )
            assert again.returncode == 0, again.stderr
            await results.wait_for(lambda c: len(statuses(c, "r-outage")) >= 3, timeout=30)
        by_id = results.by_request()
    assert statuses(results, "r-outage") == ["failed", "delivered", "duplicate"]
    delivered, duplicate = by_id["r-outage"][1:]
    assert duplicate["message_id"] == delivered["message_id"]
    assert duplicate["original_request_id"] == "r-outage"
    assert sim.accepted_by_idempotency()["r-outage"] == 1  # one platform send in all
    assert [a.idempotency for a in sim.accepted] == ["r-outage"]  # the typo was not replayed
    # Each replayed record names the original; its result names the replayed record.
    records = await requests_topic(bootstrap, 4)
    assert [headers for _, headers in records] == [
        [],
        [],
        [("cardq-replay-of", b"cardq.requests/0/0")],
        [("cardq-replay-of", b"cardq.requests/0/0")],
    ]
    assert [r["source"]["offset"] for r in by_id["r-outage"]] == [0, 2, 3]

    # cardq results finds all three, readable and as JSON; an unknown id exits 1.
    shown = await cardq("results", "--bootstrap-servers", bootstrap, "r-outage", "--since", "1h")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["failed", "delivered", "duplicate"]
    assert "error=unavailable/" in lines[0] and "@cardq.requests/0/0" in lines[0]
    assert f"message_id={delivered['message_id']}" in lines[1]
    as_json = await cardq(
        "results", "--bootstrap-servers", bootstrap, "--json", "--status", "rejected"
    )
    assert [orjson.loads(x)["request_id"] for x in as_json.stdout.splitlines()] == ["r-typo"]
    missing = await cardq("results", "--bootstrap-servers", bootstrap, "r-nope", "--since", "10m")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no result for r-nope since 10m" in missing.stderr


async def test_results_follow_prints_new_results_that_match(
    broker: TansuBroker, sim: Simulator, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    config = helpers.write_config(tmp_path / "cardq.yaml", bootstrap, sim.base_url)
    follow = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cardq", "results", "--follow", "--bootstrap-servers", bootstrap),
        *("--bot", "mind", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        with helpers.worker_process(config):
            await produce(
                bootstrap,
                TOPICS.requests,
                [
                    helpers.hook("f-hook"),
                    helpers.mind("f-mind-1", "g1"),
                    helpers.mind("f-mind-2", "g2"),
                ],
            )
            assert follow.stdout is not None
            async with asyncio.timeout(30):
                first = orjson.loads(await follow.stdout.readline())
                second = orjson.loads(await follow.stdout.readline())
        assert {first["request_id"], second["request_id"]} == {"f-mind-1", "f-mind-2"}
        assert first["status"] == second["status"] == "delivered"
        assert follow.returncode is None  # still following
    finally:
        follow.terminate()
        await follow.wait()


async def test_replay_needs_a_filter_and_says_so() -> None:
    done = await cardq("replay", "--bootstrap-servers", "127.0.0.1:1")
    assert done.returncode == 2
    assert "--reason" in done.stderr and "--all" in done.stderr and "Traceback" not in done.stderr
    bad = await cardq("results", "--since", "yesterday", "--bootstrap-servers", "127.0.0.1:1")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
