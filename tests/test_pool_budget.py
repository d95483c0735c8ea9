"""A pool of real ``cardq run`` processes paces one app as one worker would: the app
budget is counted once, in Redis. The simulator enforces the same shrunk app limit as the
workers; any send over it would be answered 99991400 and counted here. Then Redis goes
away and comes back: delivery goes on, and readiness says what happened."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cardq.devtools.broker import free_port
from cardq.devtools.redis_server import RedisServer
from cardq.simulator import Simulator, SimulatorConfig
from cardq.testing import ResultCollector, produce
from tests import helpers
from tests.brokers import BrokerUnderTest, unique_topics

pytestmark = pytest.mark.both_brokers


@contextlib.asynccontextmanager
async def simulator(app_limit: int) -> AsyncIterator[Simulator]:
    """The app's limit shrunk to ``app_limit`` per second (no per-minute window)."""
    sim = Simulator(SimulatorConfig(app_limits=((app_limit, 1.0),)))
    await sim.start()
    helpers.register(sim)
    try:
        yield sim
    finally:
        await sim.stop()


def pool_configs(
    tmp_path: Path,
    broker: BrokerUnderTest,
    sim: Simulator,
    *,
    count: int,
    app_limit: int,
    redis_url: str,
    prefix: str,
    app_window: float = 1.0,
    first: int = 0,
    **idempotency: Any,
) -> list[tuple[Path, int]]:
    """One configuration per process (its own worker id and health port), numbered from
    ``first``."""
    configs = []
    for n in range(first, first + count):
        port = free_port()
        path = broker.write_config(
            tmp_path / f"w{n}.yaml",
            sim.base_url,
            worker_id=f"w{n}",
            idempotency=helpers.redis_idempotency(
                redis_url,
                prefix,
                budget_key_prefix=prefix + "budget:",
                **idempotency,
            ),
            observability={"port": port, "host": "127.0.0.1"},
            bots={"app": {"limits": {"app": [{"limit": app_limit, "seconds": app_window}]}}},
        )
        configs.append((path, port))
    return configs


async def wait_readiness(ports: list[int], status: int, timeout: float) -> float:
    """Poll every ``/readyz`` until all answer ``status``; return the seconds it took."""
    started = time.monotonic()

    async def all_answer() -> bool:
        return all([await helpers.http_status(port) == status for port in ports])

    await helpers.until(all_answer, f"every /readyz answers {status}", timeout)
    return time.monotonic() - started


@contextlib.contextmanager
def processes(configs: list[tuple[Path, int]], logs: Path | None = None) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for n, (config, _) in enumerate(configs):
            log = logs / f"w{n}.log" if logs is not None else None
            stack.enter_context(helpers.worker_process(config, log))
        yield


def app_send_rate(sim: Simulator) -> float:
    """Sends per second over the windows the backlog took: from the first send to one
    window after the last (a window may start with a burst of the whole limit, so this
    is at most the limit however the sends bunch)."""
    times = sorted(a.at for a in sim.accepted if a.backend == "feishu_message")
    return len(times) / (times[-1] - times[0] + 1.0)


@pytest.mark.tansu_only(
    "the app budget is counted in Redis; the broker only spreads the partitions (the pool on "
    "Apache Kafka is tests/test_pool.py's)"
)
async def test_three_processes_share_one_app_budget(
    broker: BrokerUnderTest, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Three processes, six partitions, 300 sends to 60 chats of one app limited to 20/s.
    Each process alone would pace the app at 20/s (60/s together); counted in Redis they
    send 20/s together: no throttle answer, every request delivered once."""
    limit = 20
    await broker.create_all(partitions=6)
    async with simulator(limit) as sim:
        configs = pool_configs(
            tmp_path,
            broker,
            sim,
            count=3,
            app_limit=limit,
            redis_url=redis_url,
            prefix=redis_prefix,
        )
        ids = [f"b{i}" for i in range(300)]
        requests = [helpers.im(rid, f"oc_{i % 60}") for i, rid in enumerate(ids)]
        async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
            with processes(configs):
                await wait_readiness([port for _, port in configs], 200, timeout=60)
                await produce(broker.bootstrap_servers, broker.topics.requests, requests)
                await results.wait_for(lambda c: set(ids) <= set(c.by_request()), timeout=90)
        by_id = results.by_request()
        assert all(len(by_id[rid]) == 1 for rid in ids)
        assert all(by_id[rid][0]["status"] == "delivered" for rid in ids)
        assert len({by_id[rid][0]["worker_id"] for rid in ids}) == 3  # all three sent
        counts = sim.accepted_by_idempotency()
        assert len(counts) == len(ids) and max(counts.values()) == 1
        assert sim.stats.throttle_answers.total() == 0
        rate = app_send_rate(sim)
        print(f"\npool of 3, app limit {limit}/s: {rate:.1f}/s = {rate / limit:.0%}, 0 throttles")
        assert rate >= 0.7 * limit  # CPU is shared in CI; the benchmark shows the real figure


@pytest.mark.tansu_only(
    "the leases are counted in Redis, and the two deployments are two groups: the kill moves "
    "no partition"
)
async def test_a_killed_pods_sends_on_the_wire_still_count_in_the_app_window(
    broker: BrokerUnderTest, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A pod SIGKILLed while its sends are on the wire: the platform accepts them all the
    same (the requests had arrived) and counts them for its whole window. The pool's
    budget must count them too, so its leases, which lapse when nobody renews them, turn
    into sends. Two deployments share one app (6 per 8 s) through one Redis: the first
    sends 6 (1 s each on the platform) and is killed; the second's 6 must wait for the
    window, where forgetting the lapsed leases sent them at once into 99991400."""
    limit, window = 6, 8.0
    sim = Simulator(SimulatorConfig(app_limits=((limit, window),), latency_s=1.0))
    await sim.start()
    helpers.register(sim)
    other = dataclasses.replace(broker, topics=unique_topics(), group=broker.group + "-b")
    await broker.create_all()
    await other.create_all()
    configs = [
        config
        for n, side in enumerate((broker, other))
        for config in pool_configs(
            tmp_path,
            side,
            sim,
            count=1,
            first=n,
            app_limit=limit,
            app_window=window,
            redis_url=redis_url,
            prefix=redis_prefix,
            budget_lease_s=2.0,  # more than the platform's 1 s: see ratelimit_scripts
        )
    ]
    first = [helpers.im(f"first{i}", f"oc_first{i}", text=f"first{i}") for i in range(limit)]
    second = [helpers.im(f"second{i}", f"oc_second{i}", text=f"second{i}") for i in range(limit)]
    try:
        async with ResultCollector(other.bootstrap_servers, other.topics) as results:
            with (
                helpers.worker_process(configs[0][0], tmp_path / "w0.log") as w0,
                helpers.worker_process(configs[1][0], tmp_path / "w1.log"),
            ):
                await wait_readiness([port for _, port in configs], 200, timeout=60)
                await produce(broker.bootstrap_servers, broker.topics.requests, first)
                deadline = time.monotonic() + 30
                while sim.stats.requests_total < limit:  # every send on the wire
                    assert time.monotonic() < deadline, sim.stats
                    await asyncio.sleep(0.01)
                w0.kill()
                w0.wait()
                await produce(other.bootstrap_servers, other.topics.requests, second)
                ids = {r["request_id"] for r in second}
                await results.wait_for(lambda c: ids <= set(c.by_request()), timeout=60)
        sent = {a.content_decoded["text"]: a.at for a in sim.accepted}  # text: request id
        assert sim.stats.throttle_answers.total() == 0, sim.stats
        assert all(f"first{i}" in sent for i in range(limit))  # the dead pod's landed
        gap = min(sent[f"second{i}"] for i in range(limit)) - max(
            sent[f"first{i}"] for i in range(limit)
        )
        assert gap >= window, gap
    finally:
        await sim.stop()


@pytest.mark.tansu_only(
    "the window is carried in Redis; the takeover itself is tests/test_pool.py's subject, on "
    "both brokers"
)
async def test_a_webhook_bots_window_moves_with_its_partition(
    broker: BrokerUnderTest, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A webhook bot is paced by the pod that owns its partition alone, with no round trip.
    Worker A sends the bot's whole window (6 per 20 s here, 100 per minute on Feishu) and
    is SIGKILLed; worker B, in the same group, takes the partition over and gets 6 more.
    B must wait for the window A filled: starting from an empty window sent them at once
    into 6 throttle answers (``ratelimit_carry.py``)."""
    limit, window = 6, 20.0
    sim = Simulator(SimulatorConfig(webhook_limits=((limit, window),)))
    await sim.start()
    helpers.register(sim)
    await broker.create_all()
    configs = [
        (
            broker.write_config(
                tmp_path / f"w{n}.yaml",
                sim.base_url,
                worker_id=f"w{n}",
                idempotency=helpers.redis_idempotency(
                    redis_url, redis_prefix, budget_key_prefix=redis_prefix + "budget:"
                ),
                observability={"port": port, "host": "127.0.0.1"},
                bots={"hook": {"limits": {"destination": [{"limit": limit, "seconds": window}]}}},
            ),
            port,
        )
        for n, port in enumerate((free_port(), free_port()))
    ]
    first = [helpers.hook(f"first{i}", text=f"first{i}") for i in range(limit)]
    second = [helpers.hook(f"second{i}", text=f"second{i}") for i in range(limit)]
    try:
        async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
            with helpers.worker_process(configs[0][0], tmp_path / "w0.log") as w0:
                await wait_readiness([configs[0][1]], 200, timeout=60)
                await produce(broker.bootstrap_servers, broker.topics.requests, first)
                ids = {r["request_id"] for r in first}
                await results.wait_for(lambda c: ids <= set(c.by_request()), timeout=60)
                w0.kill()  # SIGKILL: the bot's window lives on only in Redis
                w0.wait()
            with helpers.worker_process(configs[1][0], tmp_path / "w1.log"):
                await produce(broker.bootstrap_servers, broker.topics.requests, second)
                ids = {r["request_id"] for r in second}
                await results.wait_for(lambda c: ids <= set(c.by_request()), timeout=90)
        by_id = results.by_request()
        assert {by_id[rid][0]["worker_id"] for rid in ids} == {"w1"}
        assert all(by_id[rid][0]["status"] == "delivered" for rid in ids)
        sent: dict[str, float] = {}
        for accepted in sim.accepted:
            sent.setdefault(accepted.body["content"]["text"], accepted.at)
        assert sim.stats.throttle_answers.total() == 0, sim.stats
        gap = min(sent[f"second{i}"] for i in range(limit)) - min(
            sent[f"first{i}"] for i in range(limit)
        )
        assert gap >= window, gap
    finally:
        await sim.stop()


@pytest.mark.tansu_only(
    "the outage is Redis's: readiness, the store's retries and its log lines do not depend on "
    "the broker"
)
async def test_redis_outage_keeps_delivering_and_readiness_follows(
    broker: BrokerUnderTest, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Two processes; Redis is stopped mid-run and restarted on the same port. Readiness
    turns 503 after ``unready_after_s`` and back to 200; the log names the Redis address
    and the request; every request is delivered once, with no throttle answer."""
    limit = 20
    await broker.create_all(partitions=6)
    async with simulator(limit) as sim:
        sim.faults.latency_s = 0.01
        configs = pool_configs(
            tmp_path,
            broker,
            sim,
            count=2,
            app_limit=limit,
            redis_url=own_redis.url,
            prefix="outage:",
            unready_after_s=1.0,
        )
        ports = [port for _, port in configs]
        ids = [f"o{i}" for i in range(200)]
        requests = [helpers.im(rid, f"oc_{i % 40}") for i, rid in enumerate(ids)]
        async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
            with processes(configs, logs=tmp_path):
                await wait_readiness(ports, 200, timeout=60)
                await produce(broker.bootstrap_servers, broker.topics.requests, requests)
                await results.wait_for(lambda c: len(c.results) >= 40, timeout=30)
                await asyncio.to_thread(own_redis.stop)
                took = await wait_readiness(ports, 503, timeout=10)
                assert took >= 0.5  # not at the first failure: after unready_after_s
                await asyncio.to_thread(own_redis.start)
                await wait_readiness(ports, 200, timeout=10)
                await results.wait_for(lambda c: set(ids) <= set(c.by_request()), timeout=90)
        by_id = results.by_request()
        assert all(len(by_id[rid]) == 1 for rid in ids)
        assert all(by_id[rid][0]["status"] == "delivered" for rid in ids)
        counts = sim.accepted_by_idempotency()
        assert len(counts) == len(ids) and max(counts.values()) == 1
        assert sim.stats.throttle_answers.total() == 0
    lines = [
        orjson.loads(line)
        for n in range(2)
        for line in (tmp_path / f"w{n}.log").read_bytes().splitlines()
        if line.startswith(b"{")
    ]
    address = own_redis.url.removeprefix("redis://")
    down = [line for line in lines if line.get("event") == "store_unreachable"]
    assert down and all(line["redis"] == address for line in down)
    assert any(
        line.get("event") == "store_call_failed" and line.get("request_id") in ids for line in lines
    )
    assert any(line.get("event") == "store_reachable_again" for line in lines)
