"""Scenario 8, soak: nothing may grow with uptime. A steady stream at half of the worker's
capacity for 20 minutes (``--soak-minutes``), with what a long run meets: signed webhook
bots (a signature remembered for scrubbing on every send), tenant tokens that live 60 s
(a refresh every ~54 s), 10% of sends answered HTTP 500, the Redis store restarted at 40%
of the run and the worker restarted (SIGTERM, a new process) at 60%.

Every interval (a minute by default) it prints delivered/s, the worker's CPU per delivered
request, its RSS and the p99 of ``finished_at`` − produce time; at the end the ratios of the
issue's targets (last window ÷ first window after a warm-up) and how many requests were lost
(produced and never answered by a result).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from cardq.devtools.broker import free_port
from cardq.devtools.redis_server import RedisServer

from . import harness as h
from .scenarios import Options, report, target

WEBHOOK_BOTS = 20
WEBHOOK_RATE = 1.0  # per bot per second: under the platform's 5/s and 100/min
IM_CHATS = 50
IM_RATE = 10.0  # the app's limits are 50/s and 1,000/min
TOKEN_LIFETIME_S = 60.0
ERROR_RATIO = 0.1
MIND_GROUPS = 500
PARTITIONS = 6


@dataclass
class Interval:
    """What one interval saw. ``latencies`` are of results finished in it."""

    index: int
    delivered: int = 0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    server_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    #: of the same results: produce → the worker decoded the record (broker and fetch)
    intake: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


class Timeline:
    """Intervals by wall-clock time since the stream started (results carry wall time)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.wall0 = time.time()
        self.intervals: list[Interval] = []

    def nth(self, index: int) -> Interval:
        while len(self.intervals) <= index:
            self.intervals.append(Interval(len(self.intervals)))
        return self.intervals[index]

    def at(self, wall: float) -> Interval:
        return self.nth(max(0, int((wall - self.wall0) // self.interval_s)))


@dataclass
class Plan:
    minutes: float
    rate: float
    interval_s: float
    redis_restart_at: float
    worker_restart_at: float
    warm_intervals: int
    window_intervals: int

    @classmethod
    def of(cls, minutes: float, rate: float) -> Plan:
        seconds = minutes * 60
        interval = 60.0 if minutes >= 10 else max(5.0, seconds / 12)
        count = max(3, round(seconds / interval))
        window = max(1, min(5, (count - 2) // 3))
        return cls(minutes, rate, interval, 0.4 * seconds, 0.6 * seconds, 2, window)


class Requests:
    """The paced stream: each request's kind by a fixed rotation, its send time kept by
    sequence number (the request id is ``s<seq>``) for latency and loss."""

    def __init__(self, rate: float, webhook_bots: int) -> None:
        self.rate = rate
        hooks = min(WEBHOOK_RATE * webhook_bots, rate / 4)
        im = min(IM_RATE, rate / 4)
        self.shares = (hooks / rate, im / rate)
        self.webhook_bots = webhook_bots
        self.sent_at = array("d")
        self.answered = bytearray()
        self.answered_count = 0
        self.finished = False
        #: set once the stream has ended and every request has a result
        self.all_answered = asyncio.Event()

    def answer(self, seq: int) -> None:
        if not self.answered[seq]:
            self.answered[seq] = 1
            self.answered_count += 1
        self.check()

    def check(self) -> None:
        if self.finished and self.answered_count >= len(self.sent_at):
            self.all_answered.set()

    def record(self, seq: int) -> tuple[bytes, bytes]:
        rid = f"s{seq}"
        # a fixed rotation of 1,000 slots gives the kinds their shares exactly
        slot = (seq * 7919) % 1000 / 1000
        hooks, im = self.shares
        if slot < hooks:
            bot = f"hook{seq % self.webhook_bots}"
            return bot.encode(), orjson.dumps(h.hook_request(rid, bot))
        if slot < hooks + im:
            chat = f"oc_soak_{seq % IM_CHATS}"
            return chat.encode(), orjson.dumps(h.im_request(rid, chat))
        group = f"g{seq % MIND_GROUPS:04d}"
        return h.mind_destination(group), orjson.dumps(h.mind_request(rid, group))

    async def produce(self, bootstrap: str, topic: str, until: float) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            started = time.monotonic()
            seq = 0
            while time.monotonic() < until:
                due = int((time.monotonic() - started) * self.rate)
                while seq < due:
                    key, value = self.record(seq)
                    self.sent_at.append(time.time())
                    self.answered.append(0)
                    await producer.send(topic, value, key=key)
                    seq += 1
                await asyncio.sleep(0.02)
            await producer.flush()
        finally:
            await producer.stop()


async def follow_results(
    bootstrap: str,
    topic: str,
    requests: Requests,
    timeline: Timeline,
    stop: asyncio.Event,
) -> int:
    """Read every result as it comes; mark its request answered and file its latency
    (delivered ones) under the interval it finished in. Returns results read."""
    count = 0
    async with h.results_reader(bootstrap, topic) as consumer:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    if not record.value:
                        continue
                    result = orjson.loads(record.value)
                    count += 1
                    rid = result.get("request_id") or ""
                    if not rid.startswith("s"):
                        continue
                    seq = int(rid[1:])
                    requests.answer(seq)
                    if result["status"] == "delivered":
                        finished = h.parse_iso(result["finished_at"])
                        it = timeline.at(finished)
                        it.latencies.append(finished - requests.sent_at[seq])
                        received = h.parse_iso(result["received_at"])
                        it.intake.append(received - requests.sent_at[seq])
    return count


async def soak(opts: Options, capacity: float | None, broker: str = "tansu") -> dict[str, Any]:
    minutes = opts.soak_minutes or (0.5 if opts.quick else 20.0)
    capacity = capacity or (100.0 if opts.quick else 1000.0)
    plan = Plan.of(minutes, capacity / 2)
    bots = 4 if opts.quick else WEBHOOK_BOTS
    requests = Requests(plan.rate, bots)
    work = h.Workdir("soak")
    params = {
        "minutes": minutes,
        "rate_per_s": plan.rate,
        "capacity_per_s": capacity,
        "interval_s": plan.interval_s,
        "signed_webhook_bots": bots,
        "webhook_share": round(requests.shares[0], 3),
        "im_share": round(requests.shares[1], 3),
        "token_lifetime_s": TOKEN_LIFETIME_S,
        "error_ratio": ERROR_RATIO,
        "redis_restart_at_s": plan.redis_restart_at,
        "worker_restart_at_s": plan.worker_restart_at,
        "warm_up_intervals": plan.warm_intervals,
        "window_intervals": plan.window_intervals,
        "partitions": PARTITIONS,
        "broker": broker,
    }
    timeline = Timeline(plan.interval_s)
    redis = RedisServer().start()
    try:
        async with opts.brokers.fresh(broker, PARTITIONS) as cluster:
            sim = await h.SimulatorProc.start(
                h.SimulatorSpec(
                    latency_ms=5,
                    webhooks=bots,
                    record=False,
                    config={
                        "token_lifetime_s": TOKEN_LIFETIME_S,
                        "mindoffice_limits": [],
                        "mindoffice_app_limits": [],
                    },
                ),
                work,
            )
            try:
                await sim.post("/_sim/faults", {"error_ratio": ERROR_RATIO})
                data = await _run(opts, plan, requests, cluster, sim, redis, work, bots, timeline)
            finally:
                await sim.stop()
    finally:
        redis.stop()
    return _report(plan, params, timeline.intervals, data)


async def _run(
    opts: Options,
    plan: Plan,
    requests: Requests,
    cluster: h.Cluster,
    sim: h.SimulatorProc,
    redis: RedisServer,
    work: h.Workdir,
    bots: int,
    timeline: Timeline,
) -> dict[str, Any]:
    port = free_port()
    bootstrap = cluster.bootstrap_servers
    config = h.worker_config(
        bootstrap,
        sim.base_url,
        work,
        group="cardq-soak",
        metrics_port=port,
        requests_topic=cluster.requests,
        results_topic=cluster.results,
        dead_letters_topic=cluster.dead_letters,
        bots={
            "mind": h.MIND_BOT,
            "app": h.APP_BOT,
            **{f"hook{i}": h.hook_bot(i) for i in range(bots)},
        },
        idempotency={"store": "redis", "redis_url": redis.url},
    )
    env = h.hook_env(bots)
    workers = Workers(await h.start_worker(config, work, port, env))
    seconds = plan.minutes * 60
    count = max(1, round(seconds / plan.interval_s))
    stop_reading = asyncio.Event()
    reader = asyncio.ensure_future(
        follow_results(bootstrap, cluster.results, requests, timeline, stop_reading)
    )
    started = time.monotonic()
    timeline.wall0 = time.time()
    producing = asyncio.ensure_future(
        requests.produce(bootstrap, cluster.requests, started + seconds)
    )
    disruptions: list[asyncio.Future[None]] = []

    async def restart_redis() -> None:
        redis.stop()
        timeline.at(time.time()).events.append("redis stopped 3 s")
        await asyncio.sleep(3.0)
        await asyncio.to_thread(redis.start)

    async def restart_worker() -> None:
        timeline.at(time.time()).events.append("worker restarted")
        await workers.restart(lambda: h.start_worker(config, work, port, env))

    stats = await sim.stats()
    last = (stats["accepted_total"], stats["server_errors"], workers.cpu_s())
    print(" | ".join(HEADERS), flush=True)
    try:
        for k in range(count):
            tick = started + (k + 1) * plan.interval_s
            # (the disruptions run beside this loop, so every interval is sampled on time)
            while time.monotonic() < tick:
                elapsed = time.monotonic() - started
                if not disruptions and elapsed >= plan.redis_restart_at:
                    disruptions.append(asyncio.ensure_future(restart_redis()))
                elif len(disruptions) == 1 and elapsed >= plan.worker_restart_at:
                    disruptions.append(asyncio.ensure_future(restart_worker()))
                await asyncio.sleep(min(0.2, max(0.0, tick - time.monotonic())))
            stats = await sim.stats()
            cpu = workers.cpu_s()
            it = timeline.nth(k)
            it.delivered = stats["accepted_total"] - last[0]
            it.server_errors = stats["server_errors"] - last[1]
            it.cpu_s = cpu - last[2]
            it.rss_mb = workers.rss_mb()
            last = (stats["accepted_total"], stats["server_errors"], cpu)
            if k:  # one interval late: its results have had time to arrive
                print(_row_text(plan, timeline.nth(k - 1)), flush=True)
        await producing
        for disruption in disruptions:
            await disruption
        requests.finished = True
        requests.check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(requests.all_answered.wait(), 30 if opts.quick else 120)
        print(_row_text(plan, timeline.nth(count - 1)), flush=True)
    finally:
        producing.cancel()
        stop_reading.set()
        results = await reader
        code = await workers.stop()
    del timeline.intervals[count:]  # results that finished while draining
    stats = await sim.stats()
    return {
        "produced": len(requests.sent_at),
        "answered": requests.answered_count,
        "results_read": results,
        "exit_code": code,
        "token_requests": sum(stats["token_requests"].values()),
        "server_errors": stats["server_errors"],
        "duplicates": sum(stats["duplicates"].values()),
        "throttle_answers": sum(stats["throttle_answers"].values()),
    }


class Workers:
    """The worker process of the moment, and the CPU of those already stopped (CPU per
    request counts every process; RSS is the current one's)."""

    def __init__(self, first: h.Proc) -> None:
        self.current: h.Proc | None = first
        self.retired_cpu = 0.0

    def cpu_s(self) -> float:
        return self.retired_cpu + (self.current.cpu_s() if self.current else 0.0)

    def rss_mb(self) -> float:
        return self.current.memory_mb()[0] if self.current else 0.0

    async def restart(self, start: Callable[[], Awaitable[h.Proc]]) -> None:
        """SIGTERM (drain, commit, leave the group), then a new process."""
        old, self.current = self.current, None
        if old is not None:
            await old.stop()
            self.retired_cpu += old.cpu_s()
        self.current = await start()

    async def stop(self) -> int:
        if self.current is None:
            return -1
        return await self.current.stop()


def _row(plan: Plan, it: Interval) -> list[Any]:
    p99 = h.percentile(it.latencies, 99) * 1000 if it.latencies else float("nan")
    intake = h.percentile(it.intake, 99) * 1000 if it.intake else float("nan")
    per = 1000 * it.cpu_s / it.delivered if it.delivered else float("nan")
    return [
        round((it.index + 1) * plan.interval_s / 60, 2),
        round(it.delivered / plan.interval_s, 1),
        round(per, 3),
        round(it.rss_mb, 1),
        round(p99, 1),
        round(intake, 1),
        it.server_errors,
        ", ".join(it.events),
    ]


HEADERS = [
    "minute",
    "delivered/s",
    "CPU ms/req",
    "RSS MB",
    "p99 ms",
    "p99 to intake ms",
    "HTTP 500",
    "event",
]


def _row_text(plan: Plan, it: Interval) -> str:
    return " | ".join(h.fmt(c) for c in _row(plan, it))


def _window(intervals: list[Interval], attr: Callable[[list[Interval]], float]) -> float:
    return attr(intervals) if intervals else float("nan")


def _report(
    plan: Plan, params: dict[str, Any], intervals: list[Interval], data: dict[str, Any]
) -> dict[str, Any]:
    measured = [it for it in intervals if it.delivered > 0]
    body = measured[plan.warm_intervals :]
    first = body[: plan.window_intervals]
    last = body[-plan.window_intervals :]

    def cpu_per(its: list[Interval]) -> float:
        delivered = sum(i.delivered for i in its)
        return 1000 * sum(i.cpu_s for i in its) / delivered if delivered else float("nan")

    def p99(its: list[Interval]) -> float:
        return 1000 * h.percentile([x for i in its for x in i.latencies], 99)

    def rss(its: list[Interval]) -> float:
        seen = [i.rss_mb for i in its if i.rss_mb > 0]  # 0: no worker at that instant
        return sum(seen) / len(seen) if seen else float("nan")

    cpu_ratio = _window(last, cpu_per) / _window(first, cpu_per) if first else float("nan")
    p99_ratio = _window(last, p99) / _window(first, p99) if first else float("nan")
    peak = max((i.rss_mb for i in body), default=float("nan"))
    base = rss(first)
    rss_growth = peak / base - 1 if base > 0 else float("nan")
    lost = data["produced"] - data["answered"]
    data.update(
        {
            "cpu_ms_per_request_first": round(_window(first, cpu_per), 4),
            "cpu_ms_per_request_last": round(_window(last, cpu_per), 4),
            "cpu_ratio_last_first": round(cpu_ratio, 3),
            "p99_ms_first": round(_window(first, p99), 1),
            "p99_ms_last": round(_window(last, p99), 1),
            "p99_ratio_last_first": round(p99_ratio, 3),
            "rss_mb_first": round(rss(first), 1),
            "rss_growth_after_warm_up": round(rss_growth, 3),
            "lost": lost,
            "intervals": [dict(zip(HEADERS, _row(plan, it), strict=True)) for it in intervals],
        }
    )
    tbl = h.table(HEADERS, [_row(plan, it) for it in intervals])
    tbl += (
        f"\n\nproduced {data['produced']:,}, answered {data['answered']:,}, lost {lost}; "
        f"token fetches {data['token_requests']}, HTTP 500 answers {data['server_errors']:,}, "
        f"duplicates dropped by the platform {data['duplicates']}"
    )
    window = (
        f"last {len(last)} ÷ first {len(first)} intervals after {plan.warm_intervals} of warm-up"
    )
    growth = f"{100 * rss_growth:.1f}%"
    targets = [
        target("soak: CPU per request", "<= 1.10", f"{cpu_ratio:.2f}", cpu_ratio <= 1.10, window),
        target(
            "soak: RSS growth after warm-up", "<= 10%", growth, rss_growth <= 0.10, "peak ÷ first"
        ),
        target("soak: p99 latency", "<= 1.2", f"{p99_ratio:.2f}", p99_ratio <= 1.2, window),
        target("soak: lost", "0", str(lost), lost == 0, "produced and never answered"),
    ]
    return report("soak", "8. Soak", params, data, tbl, targets)
