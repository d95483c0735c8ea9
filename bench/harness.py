"""The parts every scenario shares: processes and what /proc says about them, the broker,
the simulator and the worker as subprocesses, fast producers, the results reader, tables.

Every process under test runs on its own, so its CPU (``utime + stime`` from
``/proc/<pid>/stat``) and its peak RSS (``VmHWM`` from ``/proc/<pid>/status``) are its own:
the harness's producer, poller and results reader are never counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from cardq.devtools.broker import TansuBroker, create_topics, free_port
from cardq.devtools.kafka import KAFKA_VERSION, KafkaBroker, KafkaUnavailable, java_binary
from cardq.devtools.kafka import cache_dir as kafka_cache_dir

CLK_TCK = os.sysconf("SC_CLK_TCK")
PY = sys.executable
BIN = Path(PY).parent
REQUESTS, RESULTS, DEAD_LETTERS = "cardq.requests", "cardq.results", "cardq.dead-letters"

# Credentials shared by the simulator (its --credentials file) and the worker (env vars).
MIND_APP, MIND_SECRET = "robot_bench", "mind-bench-secret-1f2e"
FEISHU_APP, FEISHU_SECRET = "cli_bench_app", "app-bench-secret-9c8d"
HOOK_SECRET = "hook-bench-secret-4b5a"
ENV = {
    "BENCH_MIND_SECRET": MIND_SECRET,
    "BENCH_APP_SECRET": FEISHU_SECRET,
    "BENCH_HOOK_SECRET": HOOK_SECRET,
}


def hook_token(i: int) -> str:
    return f"bench-hook-{i:03d}-token"


# --------------------------------------------------------------------------- processes


class Proc:
    """A subprocess in its own session, with its CPU and memory read from /proc."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV, **(env or {})},
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self.peak_rss_mb = 0.0
        self.last_cpu_s = 0.0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (the last value read once the process is gone)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            self.last_cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return self.last_cpu_s

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB (10^6 bytes); VmHWM is the kernel's peak RSS."""
        rss = hwm = 0.0
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024 / 1e6
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024 / 1e6
        self.peak_rss_mb = max(self.peak_rss_mb, hwm)
        return rss, hwm

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the worker drains and commits), then SIGKILL after ``timeout``."""
        self.cpu_s()
        self.memory_mb()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.popen.wait, timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                await asyncio.to_thread(self.popen.wait)
        self._log_file.close()
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Workdir:
    """A temporary directory for one scenario's configs and logs."""

    def __init__(self, scenario: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"cardq-bench-{scenario}-"))

    def file(self, name: str) -> Path:
        return self.path / name


# --------------------------------------------------------------------------- simulator


@dataclass
class SimulatorSpec:
    """How to start the simulator: its own CLI (``cardq simulate``), with ``--config``
    for the SimulatorConfig fields that have no option of their own."""

    latency_ms: float = 5.0
    no_limits: bool = False
    time_scale: float = 1.0
    record: bool = True
    webhooks: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # extra SimulatorConfig fields


class SimulatorProc:
    def __init__(self, proc: Proc, base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def start(cls, spec: SimulatorSpec, work: Workdir) -> SimulatorProc:
        creds: dict[str, Any] = {
            "mindoffice": {MIND_APP: MIND_SECRET},
            "apps": {FEISHU_APP: FEISHU_SECRET},
            "webhooks": {hook_token(i): HOOK_SECRET for i in range(spec.webhooks)},
        }
        cred_file = work.file("sim-credentials.yaml")
        cred_file.write_text(yaml.safe_dump(creds))
        port = free_port()
        args = ["--port", str(port), "--credentials", str(cred_file), "--summary-every", "0"]
        args += ["--latency-ms", str(spec.latency_ms), "--time-scale", str(spec.time_scale)]
        if spec.no_limits:
            args.append("--no-limits")
        if not spec.record:
            args.append("--no-record")
        if spec.config:
            args += ["--config", orjson.dumps(spec.config).decode()]
        argv = [PY, "-m", "cardq.simulator", *args]
        proc = Proc("simulator", argv, work.file("simulator.log"))
        sim = cls(proc, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            if not proc.alive():
                raise RuntimeError(f"the simulator exited:\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await sim.get("/_sim/health")
                return sim
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not answer in 20 s:\n{proc.tail()}")
            await asyncio.sleep(0.05)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def get(self, path: str) -> Any:
        async with self._client().get(self.base_url + path) as resp:
            resp.raise_for_status()
            return orjson.loads(await resp.read())

    async def post(self, path: str, body: Any = None) -> Any:
        async with self._client().post(self.base_url + path, data=orjson.dumps(body or {})) as r:
            r.raise_for_status()
            return orjson.loads(await r.read())

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("/_sim/stats")
        return result

    async def accepted(self, since: int = 0) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = await self.get(f"/_sim/accepted?since={since}")
        return items

    async def reset(self) -> None:
        await self.post("/_sim/reset")

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.proc.stop(10)


# --------------------------------------------------------------------------- broker

#: The brokers scenarios 1, 2 and 5 run on, and what tables call them.
BROKERS = ("kafka", "tansu")
BROKER_NAMES = {"kafka": "Apache Kafka", "tansu": "Tansu"}
BROKER_DESCRIPTIONS = {
    "kafka": f"Apache Kafka {KAFKA_VERSION}, single node, KRaft (worker/cardq/devtools/kafka.py): "
    "one broker for the whole bench run, each run on topics of its own",
    "tansu": "Tansu, in memory (worker/cardq/devtools/broker.py): a new broker per run",
}


def kafka_missing() -> str | None:
    """Why this machine cannot start Apache Kafka (java, or Maven for the first download),
    or ``None``; checked before anything is started, so the run can say so up front."""
    try:
        java_binary()
    except KafkaUnavailable as exc:
        return str(exc)
    if not (kafka_cache_dir() / "complete").exists() and shutil.which("mvn") is None:
        return (
            f"mvn is not installed, needed once to fetch Kafka {KAFKA_VERSION} from Maven "
            "Central (Debian: apt-get install maven)"
        )
    return None


@dataclass(frozen=True)
class Cluster:
    """What one run sees: a broker's address and the topics that run owns."""

    kind: str
    bootstrap_servers: str
    prefix: str = ""

    @property
    def requests(self) -> str:
        return self.prefix + REQUESTS

    @property
    def results(self) -> str:
        return self.prefix + RESULTS

    @property
    def dead_letters(self) -> str:
        return self.prefix + DEAD_LETTERS


class Brokers:
    """Where each run gets its broker.

    Tansu starts in 20 ms and its in-memory log slows down as it grows, so every run gets a
    new one. Apache Kafka takes 5-25 s to start on this machine and does not slow down, so
    one broker serves the whole bench run and every run gets topics under a prefix of its
    own (``run3.cardq.requests``): no run ever reads another's records."""

    def __init__(self) -> None:
        self._kafka: KafkaBroker | None = None
        self._runs = 0
        self.kafka_start_s: float | None = None

    @contextlib.asynccontextmanager
    async def fresh(self, kind: str, partitions: int) -> AsyncIterator[Cluster]:
        if kind == "tansu":
            async with TansuBroker() as running:
                cluster = Cluster(kind, running.bootstrap_servers)
                await _create(cluster, partitions)
                yield cluster
            return
        if self._kafka is None:  # kept only once started: a failed start is tried again
            started = KafkaBroker()
            await started.start()
            self._kafka = started
            self.kafka_start_s = started.start_seconds
        self._runs += 1
        cluster = Cluster(kind, self._kafka.bootstrap_servers, f"run{self._runs}.")
        await _create(cluster, partitions)
        await _until_led(cluster, partitions)
        yield cluster

    def close(self) -> None:
        if self._kafka is not None:
            self._kafka.stop()
            self._kafka = None


async def _create(cluster: Cluster, partitions: int) -> None:
    await create_topics(cluster.bootstrap_servers, [cluster.requests], partitions)
    await create_topics(cluster.bootstrap_servers, [cluster.results, cluster.dead_letters], 1)


async def _until_led(cluster: Cluster, partitions: int, timeout: float = 30.0) -> None:
    """Until every partition of the run's topics has a leader and answers ListOffsets.
    Kafka accepts a CreateTopics a few hundred ms before then; a run that started at once
    would count the first records' retries (NotLeaderForPartition) as latency."""
    tps = [TopicPartition(cluster.requests, p) for p in range(partitions)]
    tps += [TopicPartition(cluster.results, 0), TopicPartition(cluster.dead_letters, 0)]
    deadline = time.monotonic() + timeout
    client = AIOKafkaClient(bootstrap_servers=cluster.bootstrap_servers)
    await client.bootstrap()
    try:
        while True:
            metadata = await client.fetch_all_metadata()
            if all(metadata.leader_for_partition(tp) not in (None, -1) for tp in tps):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the topics of {cluster.prefix} had no leader in {timeout} s")
            await asyncio.sleep(0.05)
    finally:
        await client.close()
    probe = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap_servers)
    await probe.start()
    try:
        while True:
            try:
                await probe.end_offsets(tps)
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await probe.stop()


@contextlib.asynccontextmanager
async def broker(partitions: int) -> AsyncIterator[Cluster]:
    """A new Tansu broker (scenarios 3 and 4, which run on Tansu only)."""
    async with TansuBroker() as running:
        cluster = Cluster("tansu", running.bootstrap_servers)
        await _create(cluster, partitions)
        yield cluster


# --------------------------------------------------------------------------- requests


def iso_at(timestamp: float) -> str:
    """RFC 3339 with microseconds, as ``created_at`` accepts."""
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso_now() -> str:
    return iso_at(time.time())


def parse_iso(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


#: A small MindOffice card (~350 bytes as a record): header, markdown, a button.
CARD = {
    "header": {"title": {"tag": "plain_text", "content": "Deploy finished"}, "template": "green"},
    "elements": [
        {"tag": "markdown", "content": "**api-gateway** v2.14.3 rolled out to prod-eu (3/3)"},
        {
            "tag": "action",
            "action": [
                {
                    "tag": "button",
                    "text": {"tag": "plain_text", "content": "Open"},
                    "type": "view",
                    "url": "https://ci.example.com/run/1",
                }
            ],
        },
    ],
}


def request(
    rid: str,
    backend: str,
    bot: str,
    target: dict[str, Any] | None,
    msg_type: str,
    content: Any,
    created_at: str | None = None,
) -> dict[str, Any]:
    """A version-1 request; the builders below fix everything but the ids."""
    built: dict[str, Any] = {"version": 1, "request_id": rid, "backend": backend, "bot": bot}
    if target is not None:
        built["target"] = target
    built |= {"msg_type": msg_type, "content": content}
    if created_at is not None:
        built["created_at"] = created_at
    return built


def mind_request(rid: str, group: str, created_at: str | None = None) -> dict[str, Any]:
    target = {"group_id": group}
    return request(rid, "mindoffice_group", "mind", target, "interactive", CARD, created_at)


def im_request(rid: str, chat: str, created_at: str | None = None) -> dict[str, Any]:
    target = {"receive_id_type": "chat_id", "receive_id": chat}
    content = {"text": f"alert {rid}"}
    return request(rid, "feishu_message", "app", target, "text", content, created_at)


def hook_request(rid: str, bot: str) -> dict[str, Any]:
    return request(rid, "feishu_webhook", bot, None, "text", {"text": f"alert {rid}"})


def mind_destination(group: str) -> bytes:
    return f"mindoffice_group/mind/group:{group}".encode()


async def produce(
    bootstrap: str,
    records: Iterable[tuple[bytes, bytes]],
    *,
    partition: int | None = None,
    topic: str = REQUESTS,
) -> int:
    """As fast as aiokafka batches: ``(key, value)`` pairs, keyed like a real producer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    count = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


def produce_in_processes(
    bootstrap: str, kind: str, total: int, procs: int, work: Workdir
) -> tuple[int, float]:
    """Produce ``total`` generated records from ``procs`` processes at once (the backlog);
    returns how many the broker acknowledged and the seconds it took. (Not the topic's
    end offsets: Tansu answers ListOffsets(latest) with 1 for every partition.)"""
    started = time.monotonic()
    share = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    first = 0
    running = []
    for i, n in enumerate(share):
        argv = [PY, "-m", "bench.produce", bootstrap, kind, str(first), str(n)]
        log = work.file(f"producer-{i}.log").open("wb")
        running.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
        first += n
    acked = 0
    for i, (popen, log) in enumerate(running):
        code = popen.wait()
        log.close()
        if code != 0:
            raise RuntimeError(f"a producer failed; see {work.path}")
        acked += int(work.file(f"producer-{i}.log").read_text().split()[-1])
    return acked, time.monotonic() - started


# --------------------------------------------------------------------------- worker


def worker_config(
    bootstrap: str,
    base_url: str,
    work: Workdir,
    *,
    group: str,
    metrics_port: int,
    bots: dict[str, dict[str, Any]],
    requests_topic: str = REQUESTS,
    results_topic: str = RESULTS,
    dead_letters_topic: str = DEAD_LETTERS,
    delivery: dict[str, Any] | None = None,
    idempotency: dict[str, Any] | None = None,
) -> Path:
    """The worker's YAML: the defaults users get, plus the bots and the addresses."""
    data: dict[str, Any] = {
        "worker_id": "bench-worker",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "topics": {
                "requests": requests_topic,
                "results": results_topic,
                "dead_letters": dead_letters_topic,
            },
            # As in dev-config.yaml: a lone member joins in ~3 s instead of ~23 s (about half
            # the default 45 s session); nothing else in the run depends on them.
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "observability": {"port": metrics_port, "host": "127.0.0.1", "log_format": "json"},
        "bots": {name: {"base_url": base_url, **bot} for name, bot in bots.items()},
    }
    if delivery:
        data["delivery"] = delivery
    if idempotency:
        data["idempotency"] = idempotency
    path = work.file(f"worker-{group}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cluster_worker_config(
    cluster: Cluster,
    base_url: str,
    work: Workdir,
    *,
    group: str,
    metrics_port: int,
    bots: dict[str, dict[str, Any]],
    results_topic: str | None = None,
) -> Path:
    """:func:`worker_config` on the run's own topics (on Kafka, the run's prefix)."""
    return worker_config(
        cluster.bootstrap_servers,
        base_url,
        work,
        group=group,
        metrics_port=metrics_port,
        bots=bots,
        requests_topic=cluster.requests,
        results_topic=results_topic or cluster.results,
        dead_letters_topic=cluster.dead_letters,
    )


def cardq_run(config: Path, log: Path, env: dict[str, str] | None = None) -> Proc:
    """``cardq run --config FILE``, as users run it (uvloop, the default loop); not waited
    for (see :func:`wait_ready`)."""
    return Proc("worker", [str(BIN / "cardq"), "run", "--config", str(config)], log, env)


@dataclass
class Backlog:
    """A backlog on the broker, a slow simulator, and a worker started against them."""

    queued: int
    produce_s: float
    sim: SimulatorProc
    worker: Proc
    metrics_port: int
    #: Set when the worker has been stopped (the end of :func:`backlog`).
    exit_code: int | None = None


@contextlib.asynccontextmanager
async def backlog(
    scenario: str, *, requests: int, partitions: int, latency_ms: int
) -> AsyncIterator[Backlog]:
    """MindOffice requests queued on a new Tansu broker *before* the worker starts, and a
    simulator with no limits that answers every send in ``latency_ms``: the worker meets
    the whole backlog at once (scenarios 4 and 6). A large backlog (100,000 or more) is
    produced from two processes. The worker (group ``cardq-<scenario>``) is stopped, then
    the simulator, when the block ends."""
    work = Workdir(scenario)
    producers = 2 if requests >= 100_000 else 1
    async with broker(partitions) as cluster:
        queued, produce_s = produce_in_processes(
            cluster.bootstrap_servers, "mind", requests, producers, work
        )
        spec = SimulatorSpec(latency_ms=latency_ms, no_limits=True, record=False)
        sim = await SimulatorProc.start(spec, work)
        try:
            port = free_port()
            group, bots = f"cardq-{scenario}", {"mind": MIND_BOT}
            config = cluster_worker_config(
                cluster, sim.base_url, work, group=group, metrics_port=port, bots=bots
            )
            run = Backlog(queued, produce_s, sim, cardq_run(config, work.file("worker.log")), port)
            try:
                yield run
            finally:
                run.exit_code = await run.worker.stop()
        finally:
            await sim.stop()


MIND_BOT = {
    "backend": "mindoffice_group",
    "app_id": MIND_APP,
    "credentials": {"app_secret": {"env": "BENCH_MIND_SECRET"}},
}
APP_BOT = {
    "backend": "feishu_message",
    "app_id": FEISHU_APP,
    "credentials": {"app_secret": {"env": "BENCH_APP_SECRET"}},
}


def hook_bot(i: int) -> dict[str, Any]:
    return {
        "backend": "feishu_webhook",
        "credentials": {
            "token": {"env": f"BENCH_HOOK_TOKEN_{i}"},
            "secret": {"env": "BENCH_HOOK_SECRET"},
        },
    }


def hook_env(count: int) -> dict[str, str]:
    return {f"BENCH_HOOK_TOKEN_{i}": hook_token(i) for i in range(count)}


async def start_worker(
    config: Path, work: Workdir, metrics_port: int, env: dict[str, str] | None = None
) -> Proc:
    """``cardq run --config FILE``, as users run it (uvloop, the default loop)."""
    proc = cardq_run(config, work.file("worker.log"), env)
    await wait_ready(proc, metrics_port)
    return proc


async def wait_ready(proc: Proc, metrics_port: int, timeout: float = 60.0) -> None:
    """Until /readyz answers 200: the worker has joined its group."""
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if not proc.alive():
                raise RuntimeError(f"the worker exited:\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker was not ready in {timeout:g} s:\n{proc.tail()}")
            await asyncio.sleep(0.05)


async def wait_for_line(proc: Proc, line: str, timeout: float = 60.0) -> None:
    """Until the process has printed ``line`` (a baseline announcing its partitions)."""
    deadline = time.monotonic() + timeout
    while line not in proc.log.read_text(errors="replace").splitlines():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} never printed {line!r}:\n{proc.tail()}")
        await asyncio.sleep(0.05)


async def _metrics_text(metrics_port: int) -> str | None:
    """The worker's /metrics page, or ``None`` when it does not answer (yet, or any more)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    timeout = aiohttp.ClientTimeout(total=2)
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as resp,
        ):
            return await resp.text()
    return None


async def scrape(metrics_port: int, name: str) -> float | None:
    """One unlabelled sample from the worker's /metrics."""
    for line in (await _metrics_text(metrics_port) or "").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def scrape_total(metrics_port: int, name: str) -> float | None:
    """The sum over every label set of one sample name (a histogram's ``_sum``…)."""
    total = None
    for line in (await _metrics_text(metrics_port) or "").splitlines():
        if line.startswith((name + " ", name + "{")):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def start_baseline(
    kind: str,
    bootstrap: str,
    base_url: str,
    work: Workdir,
    *,
    group: str,
    topic: str = REQUESTS,
    extra: Sequence[str] = (),
) -> Proc:
    argv = [PY, "-m", "bench.baselines", kind, "--bootstrap", bootstrap, "--url", base_url]
    argv += ["--topic", topic, "--group", group, *extra]
    # One log per group: wait_for_line must never find an earlier run's "ready".
    return Proc(f"baseline-{kind}", argv, work.file(f"baseline-{kind}-{group}.log"))


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    at: float  # monotonic
    accepted: int
    throttled: int
    cpu_s: float
    rss_mb: float


async def follow(
    sim: SimulatorProc,
    proc: Proc,
    *,
    until: Callable[[Sample], bool],
    timeout: float,
    every: float = 0.05,
    on_sample: Callable[[Sample], Awaitable[None] | None] | None = None,
) -> list[Sample]:
    """Poll the simulator's counters and the process's CPU/RSS until ``until`` or timeout."""
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while True:
        stats = await sim.stats()
        rss, _ = proc.memory_mb()
        sample = Sample(
            time.monotonic(),
            int(stats["accepted_total"]),
            sum(stats["throttle_answers"].values()),
            proc.cpu_s(),
            rss,
        )
        samples.append(sample)
        if on_sample is not None:
            maybe = on_sample(sample)
            if maybe is not None:
                await maybe
        if until(sample) or sample.at > deadline or not proc.alive():
            return samples
        await asyncio.sleep(every)


def delivery_window(samples: list[Sample], target: int) -> dict[str, float]:
    """From the first sample with a delivery to the first with ``target`` (or the last):
    delivered per second and CPU seconds per 1,000 delivered over exactly that interval."""
    first = next((s for s in samples if s.accepted > 0), samples[-1])
    last = next((s for s in samples if s.accepted >= target), samples[-1])
    seconds = max(last.at - first.at, 1e-9)
    delivered = last.accepted - first.accepted
    cpu = last.cpu_s - first.cpu_s
    return {
        "delivered": last.accepted,
        "window_s": round(seconds, 3),
        "delivered_per_s": round(delivered / seconds, 1),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1000": round(1000 * cpu / delivered, 4) if delivered else float("nan"),
        "cpu_utilisation": round(cpu / seconds, 3),
    }


async def read_results(
    bootstrap: str, expected: int, timeout: float, topic: str = RESULTS
) -> list[dict[str, Any]]:
    """Every result on the results topic, waiting up to ``timeout`` for ``expected``."""
    out: list[dict[str, Any]] = []
    async with results_reader(bootstrap, topic, fetch_max_wait_ms=50) as consumer:
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records if r.value)
    return out


@contextlib.asynccontextmanager
async def results_reader(
    bootstrap: str, topic: str = RESULTS, *, fetch_max_wait_ms: int = 100
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of the (one-partition) results topic from its start, in no group: a
    reader that commits nothing cannot change what the worker's group sees."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        yield consumer
    finally:
        await consumer.stop()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    return {
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
