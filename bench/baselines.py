"""The two baselines cardq is measured against, each run as its own process.

``bare``: the limit. aiokafka ``getmany`` → HTTP POST with the same concurrency as the
worker (512 sends in flight, a 512-connection aiohttp pool), nothing else: no validation,
no rate limits, no idempotency, no results, offsets auto-committed. Nothing a Python
process does to move a record to an HTTP endpoint can be much cheaper than this.

``ordered``: what users have. One record at a time per partition and a commit after each,
as Confluent's HTTP sink connector and FastStream's default subscriber behave; a throttle
answer or a 5xx is retried after 200 ms (the HTTP sink's default ``retry.backoff.ms`` is
3 s; this baseline is given the benefit of the doubt).

Both read the same topic as the worker from the earliest offset, under their own group,
and speak the MindOffice or Feishu IM API of the simulator; both run on uvloop, like the
worker. They run until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import aiohttp
import orjson
import uvloop
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, ConsumerRecord, TopicPartition

from .harness import FEISHU_APP, FEISHU_SECRET, MIND_APP, MIND_SECRET

MIND_PATH = "/open-platform/api/robot/group/send/card_message"
IM_PATH = "/open-apis/im/v1/messages?receive_id_type=chat_id"
TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
THROTTLE_CODES = {230020, 11232, 99991400, 429}


class Sender:
    """Turns a request record into the platform call; no checks beyond what it needs."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url
        self.token: str | None = None
        self.mind_headers = {
            "Content-Type": "application/json; charset=utf-8",
            "app-id": MIND_APP,
            "app-secret": MIND_SECRET,
        }

    async def fetch_token(self) -> None:
        body = orjson.dumps({"app_id": FEISHU_APP, "app_secret": FEISHU_SECRET})
        async with self.session.post(self.base + TOKEN_PATH, data=body) as resp:
            self.token = orjson.loads(await resp.read())["tenant_access_token"]

    async def send(self, value: bytes) -> tuple[int, int | None]:
        """(HTTP status, platform code)."""
        request = orjson.loads(value)
        content = orjson.dumps(request["content"]).decode()
        if request["backend"] == "mindoffice_group":
            url = self.base + MIND_PATH
            body = {
                "group_id": request["target"]["group_id"],
                "msg_type": request["msg_type"],
                "content": content,
            }
            headers = {**self.mind_headers, "x-request-id": request["request_id"]}
        else:
            if self.token is None:
                await self.fetch_token()
            url = self.base + IM_PATH
            body = {
                "receive_id": request["target"]["receive_id"],
                "msg_type": request["msg_type"],
                "content": content,
                "uuid": request["request_id"],
            }
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Authorization": f"Bearer {self.token}",
            }
        async with self.session.post(url, data=orjson.dumps(body), headers=headers) as resp:
            data = await resp.read()
            status = resp.status
        try:
            code = orjson.loads(data).get("code")
        except (orjson.JSONDecodeError, AttributeError):
            code = None
        return status, code


def is_ok(status: int, code: int | None) -> bool:
    return status < 400 and code in (0, 200)


async def bare(args: argparse.Namespace, stop: asyncio.Event) -> dict[str, int]:
    counts = {"sent": 0, "ok": 0}
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        session_timeout_ms=6000,  # joins as fast as the worker (see harness.worker_config)
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    connector = aiohttp.TCPConnector(limit=args.concurrency, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as session:
        sender = Sender(session, args.url)
        slots = asyncio.Semaphore(args.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def post(record: ConsumerRecord[bytes, bytes]) -> None:
            try:
                status, code = await sender.send(record.value or b"{}")
                counts["ok"] += is_ok(status, code)
            except Exception:
                pass
            finally:
                slots.release()

        await consumer.start()
        try:
            announced = False
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                if not announced and consumer.assignment():
                    print("ready", flush=True)  # the harness waits for this line
                    announced = True
                for records in batch.values():
                    for record in records:
                        await slots.acquire()
                        task = asyncio.create_task(post(record))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        counts["sent"] += 1
            if tasks:
                await asyncio.wait(tasks, timeout=5)
        finally:
            await consumer.stop()
    return counts


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The topic's partitions from a metadata request for every topic: a consumer that has
    subscribed to nothing knows no topic on Kafka (Tansu names them all), and a topic just
    created may take a moment to appear."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + 30
        while True:
            metadata = await client.fetch_all_metadata()
            partitions = sorted(metadata.partitions_for_topic(topic) or ())
            if partitions:
                return partitions
            if time.monotonic() > deadline:
                raise SystemExit(f"ordered: topic {topic} has no partitions after 30 s")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def ordered(args: argparse.Namespace, stop: asyncio.Event) -> dict[str, int]:
    counts = {"sent": 0, "ok": 0, "retries": 0, "commits": 0}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    tps = [TopicPartition(args.topic, p) for p in await partitions_of(args.bootstrap, args.topic)]
    consumer.assign(tps)
    print("ready", flush=True)  # the harness waits for this line
    connector = aiohttp.TCPConnector(limit=max(len(tps), 1) * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        sender = Sender(session, args.url)

        async def run(tp: TopicPartition) -> None:
            while not stop.is_set():
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
                for record in batch.get(tp, []):
                    while not stop.is_set():
                        counts["sent"] += 1
                        try:
                            status, code = await sender.send(record.value or b"{}")
                        except aiohttp.ClientError:
                            status, code = 599, None
                        if is_ok(status, code):
                            counts["ok"] += 1
                            break
                        if status >= 500 or status == 429 or code in THROTTLE_CODES:
                            counts["retries"] += 1
                            await asyncio.sleep(0.2)
                            continue
                        break  # refused for good: skip it, as a sink with a DLQ would
                    if stop.is_set():
                        return
                    await consumer.commit({tp: record.offset + 1})
                    counts["commits"] += 1

        try:
            tasks = [asyncio.create_task(run(tp)) for tp in tps]
            await stop.wait()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await consumer.stop()
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baselines")
    p.add_argument("kind", choices=("bare", "ordered"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--url", required=True, help="the simulator's base URL")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--concurrency", type=int, default=512, help="bare: sends in flight")
    p.add_argument("--fetch-max-wait-ms", type=int, default=500, help="bare: aiokafka's fetch wait")
    args = p.parse_args(argv)

    async def amain() -> dict[str, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        run = bare if args.kind == "bare" else ordered
        return await run(args, stop)

    started = time.monotonic()
    counts = uvloop.run(amain())
    with contextlib.suppress(Exception):
        print(orjson.dumps({"kind": args.kind, **counts, "ran_s": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
