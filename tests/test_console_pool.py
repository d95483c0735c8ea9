"""Pool-wide pauses: two ``cardq run`` processes sharing Redis; a pause asked of one pod
holds the destination in whichever pod owns it, and a resume asked of the other pod
releases it. Real broker, real Redis, the simulator over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cardq.simulator import Simulator
from cardq.testing import free_port, produce
from tests import helpers
from tests.brokers import BrokerUnderTest

pytestmark = pytest.mark.both_brokers

TOKEN = "console-pool-token-77c1"
LANE = "feishu_webhook/hook/webhook"


async def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
            ) as resp,
        ):
            return resp.status, await resp.json(content_type=None)
    except aiohttp.ClientError:
        return 0, None


@pytest.mark.tansu_only(
    "a pool pause travels through Redis; which pod owns the partition is the broker's choice, "
    "and the test holds for whichever"
)
async def test_a_pool_pause_holds_the_destination_in_whichever_pod_owns_it(
    broker: BrokerUnderTest,
    sim: Simulator,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    await broker.create_topics(
        [broker.topics.requests, broker.topics.results, broker.topics.dead_letters], 4
    )
    ports = [free_port(), free_port()]
    configs = [
        broker.write_config(
            tmp_path / f"pod{i}.yaml",
            sim.base_url,
            worker_id=f"pod-{i}",
            idempotency=helpers.redis_idempotency(redis_url, redis_prefix),
            observability={
                "port": port,
                "host": "127.0.0.1",
                "console": {"actions": True, "token": {"env": "T_CONSOLE_TOKEN"}},
            },
        )
        for i, port in enumerate(ports)
    ]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(helpers.worker_process(c, env={"T_CONSOLE_TOKEN": TOKEN}))
            for c in configs
        ]
        for port in ports:

            async def ready(port: int = port) -> bool:
                return (await call(port, "GET", "/readyz"))[0] == 200

            await helpers.until(ready, "both pods are ready")

        # Paused through the first pod, for the whole pool: both pods hold it.
        pause = {"kind": "bot", "name": "hook", "reach": "pool"}
        status, body = await call(ports[0], "POST", "/console/api/pause", pause)
        assert status == 200 and body["pauses"][0]["reach"] == "pool"

        async def both_hold() -> bool:
            states = [await call(port, "GET", "/console/api/state") for port in ports]
            return all(s == 200 and [p["name"] for p in b["pauses"]] == ["hook"] for s, b in states)

        await helpers.until(both_hold, "both pods see the pool pause")

        await produce(
            broker.bootstrap_servers,
            broker.topics.requests,
            [helpers.hook(f"p{i}", text=f"n{i}") for i in range(10)],
        )

        async def held_somewhere() -> bool:
            for port in ports:
                _, state = await call(port, "GET", "/console/api/state")
                for lane in state["lanes"]["top"]:
                    if lane["destination"] == LANE and lane["phase"] == "paused":
                        return bool(lane["queued"] == 10)
            return False

        await helpers.until(held_somewhere, "the owning pod holds all ten in the paused lane")
        await helpers.holds_for(
            lambda: not sim.accepted, "a destination paused for the pool was sent to", 2.0
        )

        # Resumed through the other pod: every request goes, once, in order.
        resume = {"kind": "bot", "name": "hook", "reach": "pool"}
        status, body = await call(ports[1], "POST", "/console/api/resume", resume)
        assert status == 200 and body["changed"] is True
        await sim.wait_for(lambda: len(sim.accepted) == 10, timeout=30)
        assert [a.body["content"]["text"] for a in sim.accepted] == [f"n{i}" for i in range(10)]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert await asyncio.to_thread(proc.wait, 30) == 0
