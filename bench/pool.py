"""Scenario 9, pool: three ``cardq run`` processes in one consumer group behave as one
worker (issue 11). Redis store, 6 partitions, 3,000 Feishu IM requests over 300 chats of
one app at the platform's real app limit (50/s and 1,000/min, enforced by the simulator
and by the worker's defaults) plus 600 signed webhook requests over 6 bots, all queued
before the pool starts. Two workers start; a third joins 3 s later; one leaves by SIGTERM;
one is SIGKILLed and started again. Three runs: Redis up; Redis stopped for 10 s mid-run and
started again on the same port with its data (an append-only file: an outage, not a loss
of data); and static membership (each worker's ``group_instance_id``, as the chart's
StatefulSet sets it from the pod name, with the chart's 120 s session), where the SIGTERMed
worker and the SIGKILLed one each come back under their old instance id, as a StatefulSet's
pod does.

Everything is measured from outside the workers: the simulator's accepted messages and
counters, and the results topic read back by source partition and offset. The session
timeout of the first two runs is the worker's default, 45 s, which is what the chart's
default Deployment runs with. bench/README.md, "Pool (scenario 9)", defines every figure.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cardq.devtools.broker import free_port
from cardq.devtools.redis_server import RedisServer

from . import harness as h
from .scenarios import Options, report, target

PARTITIONS = 6
#: The app's limits on the platform (simulator default) and in the worker (its default).
APP_PER_S, APP_PER_MIN = 50, 1000
RID = re.compile(rb"alert (p\d{6})")
TERMINAL_OK = {"delivered", "duplicate"}


@dataclass(frozen=True)
class Size:
    chats: int
    per_chat: int
    bots: int
    per_bot: int
    #: seconds after the first two workers are ready (each waits for the one before)
    add_at: float
    sigterm_at: float
    sigkill_at: float
    outage_at: float
    outage_s: float
    session_timeout_ms: int | None  # None: the worker's default (45 s), as the chart runs it
    deadline_s: float


FULL = Size(300, 10, 6, 100, 3.0, 10.0, 15.0, 30.0, 10.0, None, 420.0)
#: Smoke sizes: counts only, with a short session so a killed member's partitions move soon.
QUICK = Size(30, 6, 2, 20, 1.0, 2.0, 3.0, 3.0, 3.0, 6000, 120.0)
DEFAULT_SESSION_TIMEOUT_S = 45.0
#: The chart's ``statefulSet.sessionTimeoutMs``: static members must outlast a restart.
STATIC_SESSION_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class Variant:
    label: str
    title: str
    outage: bool = False
    static: bool = False


VARIANTS = (
    Variant("redis_up", "Redis up"),
    Variant("redis_outage", "Redis stopped", outage=True),
    Variant("static", "static membership", static=True),
)
RUNS = tuple(v.label for v in VARIANTS)


@dataclass
class Record:
    rid: str
    kind: str  # "im" or "hook"
    destination: str  # the chat id or the bot name


class Results:
    """Every result on the run's results topic, read as it comes."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.items: list[dict[str, Any]] = []
        self.last_read = time.monotonic()
        self._stop = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Results:
        self._task = asyncio.ensure_future(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def quiet(self, seconds: float) -> None:
        """Until nothing new has been read for ``seconds``: the drain's results are in."""
        while True:
            idle = time.monotonic() - self.last_read
            if idle >= seconds:
                return
            await asyncio.sleep(seconds - idle)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.topic, 0)])
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for records in batch.values():
                    for r in records:
                        if r.value:
                            self.items.append(orjson.loads(r.value))
                            self.last_read = time.monotonic()
        finally:
            await consumer.stop()


def plan(size: Size) -> list[tuple[bytes, dict[str, Any], Record]]:
    """The backlog, interleaved: round k holds every chat's k-th request and a share of the
    webhook requests, so every partition has IM and webhook work from the start."""
    out: list[tuple[bytes, dict[str, Any], Record]] = []
    hooks = [(f"hook{b}", i) for i in range(size.per_bot) for b in range(size.bots)]
    per_round = -(-len(hooks) // size.per_chat)
    seq = 0
    for k in range(size.per_chat):
        for c in range(size.chats):
            rid, chat = f"p{seq:06d}", f"oc_pool_{c:03d}"
            key = f"feishu_message/app/chat_id:{chat}".encode()  # the destination, as documented
            out.append((key, h.im_request(rid, chat), Record(rid, "im", chat)))
            seq += 1
        for bot, _ in hooks[k * per_round : (k + 1) * per_round]:
            rid = f"p{seq:06d}"
            key = f"feishu_webhook/{bot}/webhook".encode()
            out.append((key, h.hook_request(rid, bot), Record(rid, "hook", bot)))
            seq += 1
    return out


async def produce(
    bootstrap: str, topic: str, backlog: list[tuple[bytes, dict[str, Any], Record]]
) -> dict[tuple[int, int], Record]:
    """Every request, keyed by its destination; returns each record by (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [
            (await producer.send(topic, orjson.dumps(value), key=key), rec)
            for key, value, rec in backlog
        ]
        await producer.flush()
        where = {}
        for fut, rec in futures:
            meta = await fut
            where[(meta.partition, meta.offset)] = rec
        return where
    finally:
        await producer.stop()


class Pool:
    """The worker processes of one run, each with its own config, port and log."""

    def __init__(
        self, base_config: Path, work: h.Workdir, size: Size, redis_url: str, static: bool
    ) -> None:
        self.base = yaml.safe_load(base_config.read_text())
        self.work = work
        self.size = size
        self.redis_url = redis_url
        self.static = static
        self.procs: dict[str, h.Proc] = {}
        self.env = h.hook_env(size.bots)

    def start(self, name: str, instance: str | None = None) -> tuple[h.Proc, int]:
        """``instance``: the static member this process is (a restarted pod's old name)."""
        port = free_port()
        data = dict(self.base)
        data["worker_id"] = name
        kafka = dict(data["kafka"])
        kafka.pop("session_timeout_ms", None)
        kafka.pop("heartbeat_interval_ms", None)
        session_ms = self.size.session_timeout_ms
        if self.static:
            kafka["group_instance_id"] = instance or name
            session_ms = session_ms or STATIC_SESSION_TIMEOUT_MS
        if session_ms is not None:
            kafka["session_timeout_ms"] = session_ms
            kafka["heartbeat_interval_ms"] = max(500, min(3000, session_ms // 6))
        data["kafka"] = kafka
        data["observability"] = {**data["observability"], "port": port}
        path = self.work.file(f"{name}.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        argv = [str(h.BIN / "cardq"), "run", "--config", str(path)]
        proc = h.Proc(name, argv, self.work.file(f"{name}.log"), self.env)
        self.procs[name] = proc
        return proc, port

    async def start_ready(self, name: str, instance: str | None = None) -> h.Proc:
        proc, port = self.start(name, instance)
        await h.wait_ready(proc, port, timeout=120)
        return proc

    async def stop_all(self) -> dict[str, int]:
        return {name: await p.stop() for name, p in self.procs.items()}

    def log_warnings(self) -> dict[str, int]:
        """Warning and error log lines of every worker, by level and event."""
        seen: Counter[str] = Counter()
        for p in self.procs.values():
            with contextlib.suppress(OSError):
                for line in p.log.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError, AttributeError):
                        entry = orjson.loads(line)
                        level = str(entry.get("level", ""))
                        if level in ("warning", "error", "critical"):
                            seen[f"{level}: {entry.get('event')}"] += 1
        return dict(seen.most_common(12))


async def pool(opts: Options, broker: str) -> dict[str, Any]:
    size = QUICK if opts.quick else FULL
    runs = {}
    for variant in VARIANTS:
        if opts.pool_runs is not None and variant.label not in opts.pool_runs:
            continue
        print(f"-- {variant.label}", flush=True)
        runs[variant.label] = await _one_run(opts, broker, size, variant)
    return _report(size, runs)


async def _one_run(opts: Options, broker: str, size: Size, variant: Variant) -> dict[str, Any]:
    work = h.Workdir("pool")
    # With its data on disk: a stop and start is an outage, not a Redis that forgot
    # every delivery (bench/README.md, "Pool (scenario 9)", says why).
    redis = RedisServer(persist_dir=work.path / "redis").start()
    try:
        async with opts.brokers.fresh(broker, PARTITIONS) as cluster:
            sim = await h.SimulatorProc.start(
                h.SimulatorSpec(latency_ms=5, webhooks=size.bots, config={}), work
            )
            try:
                base = h.worker_config(
                    cluster.bootstrap_servers,
                    sim.base_url,
                    work,
                    group="cardq-pool",
                    metrics_port=0,
                    bots={
                        "app": h.APP_BOT,
                        **{f"hook{i}": h.hook_bot(i) for i in range(size.bots)},
                    },
                    requests_topic=cluster.requests,
                    results_topic=cluster.results,
                    dead_letters_topic=cluster.dead_letters,
                    idempotency={"store": "redis", "redis_url": redis.url},
                )
                pool_ = Pool(base, work, size, redis.url, variant.static)
                backlog = plan(size)
                where = await produce(cluster.bootstrap_servers, cluster.requests, backlog)
                async with Results(cluster.bootstrap_servers, cluster.results) as results:
                    data = await _drive(size, variant, pool_, redis, results, len(where))
                    codes = await pool_.stop_all()
                    # a quiet second: whatever the drain published has been read
                    await results.quiet(2.0)
                accepted = await sim.accepted()
                stats = await sim.stats()
            finally:
                await sim.stop()
    finally:
        redis.stop()
    data.update(
        measure(size, where, results.items, accepted, stats, data["sim_kill_at"], cluster.requests)
    )
    data["exit_codes"] = codes
    data["log_warnings"] = pool_.log_warnings()
    data["logs"] = str(work.path)
    return data


async def _drive(
    size: Size, variant: Variant, pool_: Pool, redis: RedisServer, results: Results, total: int
) -> dict[str, Any]:
    """The run's events, each at its time after the first two workers are ready (and never
    before the event before it is done); then until every record has a result. With static
    membership the SIGTERMed worker comes back as ``w1b`` under instance ``w1``, and the
    SIGKILLed one as ``w2b`` under ``w2``: a static member that stops for good holds its
    partitions for the whole session (it sends no LeaveGroup), which is a scale-in, not the
    rolling restart static membership is for."""
    events: list[tuple[str, float]] = []
    await asyncio.gather(pool_.start_ready("w1"), pool_.start_ready("w2"))
    t0 = time.monotonic()

    def at(name: str) -> None:
        events.append((name, round(time.monotonic() - t0, 1)))

    async def until(seconds: float) -> None:
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))

    async def disruptions() -> float:
        await until(size.add_at)
        at("w3 started")
        await pool_.start_ready("w3")
        at("w3 ready")
        await until(size.sigterm_at)
        at("w1 SIGTERM")
        await pool_.procs["w1"].stop()
        at("w1 exited")
        if variant.static:
            await pool_.start_ready("w1b", instance="w1")
            at("w1b (restarted as w1) ready")
        await until(size.sigkill_at)
        w2 = pool_.procs["w2"]
        w2.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        at("w2 SIGKILL")
        await asyncio.to_thread(w2.popen.wait)
        await pool_.start_ready("w2b", instance="w2")
        at("w2b (restarted) ready")
        return killed

    async def redis_outage() -> None:
        await until(size.outage_at)
        await asyncio.to_thread(redis.stop)
        at("redis stopped")
        await until(size.outage_at + size.outage_s)  # the outage is a fixed 10 s by design
        await asyncio.to_thread(redis.start)
        at("redis started")

    side = asyncio.ensure_future(redis_outage()) if variant.outage else None
    killed = await disruptions()
    if side is not None:
        await side
    deadline = t0 + size.deadline_s
    while time.monotonic() < deadline:
        answered = {(r["source"]["partition"], r["source"]["offset"]) for r in results.items}
        if len(answered) >= total:
            break
        await asyncio.sleep(0.2)
    at("every record answered" if time.monotonic() < deadline else "deadline")
    return {"events": events, "sim_kill_at": killed}


def fastest_schedule(sends: int) -> list[float]:
    """The soonest times, from the first, at which ``sends`` IM sends can go under 50/s and
    1,000/min (sliding windows): send i no sooner than 1 s after send i-50 and 60 s after
    send i-1000."""
    times: list[float] = []
    for i in range(sends):
        t = 0.0
        if i >= APP_PER_S:
            t = max(t, times[i - APP_PER_S] + 1.0)
        if i >= APP_PER_MIN:
            t = max(t, times[i - APP_PER_MIN] + 60.0)
        times.append(max(t, times[-1] if times else 0.0))
    return times


def shortest_span(sends: int) -> float:
    """The least time from the first to the last of ``sends`` IM sends the limits allow."""
    times = fastest_schedule(sends)
    return times[-1] if times else 0.0


def allowed_within(span: float, at_least: int) -> int:
    """How many IM sends 50/s and 1,000/min allow from the first send to ``span`` after it
    (counted over a schedule long enough to reach past ``span``)."""
    n = max(at_least, 1)
    while True:
        times = fastest_schedule(2 * n)
        if times[-1] > span:
            return bisect.bisect_right(times, span)
        n *= 2


def measure(
    size: Size,
    where: dict[tuple[int, int], Record],
    results: list[dict[str, Any]],
    accepted: list[dict[str, Any]],
    stats: dict[str, Any],
    kill_at: float,
    requests_topic: str,
) -> dict[str, Any]:
    by_rid = {rec.rid: rec for rec in where.values()}
    # what the platform accepted, per request (the text carries the request id)
    sends: Counter[str] = Counter()
    first_at: dict[str, float] = {}
    im_times: list[float] = []
    first_after_kill: dict[str, float] = {}
    sent_before_kill: Counter[str] = Counter()
    for item in accepted:
        found = RID.search(orjson.dumps(item["body"]))
        if found is None:
            continue
        rid = found.group(1).decode()
        sends[rid] += 1
        first_at.setdefault(rid, float(item["at"]))
        rec = by_rid.get(rid)
        if rec is None:
            continue
        at = float(item["at"])
        if rec.kind == "im":
            im_times.append(at)
        if at <= kill_at:
            sent_before_kill[rec.destination] += 1
        else:
            first_after_kill[rec.destination] = min(first_after_kill.get(rec.destination, at), at)
    per_destination = Counter(rec.destination for rec in where.values())
    lost = sum(1 for rid in by_rid if sends[rid] == 0)
    twice = sum(1 for rid in by_rid if sends[rid] > 1)
    twice_by_kind = Counter(rec.kind for rid, rec in by_rid.items() if sends[rid] > 1)
    # when each card sent twice was first accepted, from the SIGKILL: a send the killed
    # worker had on the wire lands within milliseconds of it (README, "Idempotency")
    twice_first_from_kill = sorted(
        round(first_at[rid] - kill_at, 3) for rid in by_rid if sends[rid] > 1
    )
    # results, by the record they answer
    per_record: Counter[tuple[int, int]] = Counter()
    statuses: Counter[str] = Counter()
    for r in results:
        src = r.get("source") or {}
        if src.get("topic") != requests_topic:
            continue
        per_record[(src["partition"], src["offset"])] += 1
        statuses[r["status"]] += 1
    unanswered = sum(1 for key in where if per_record[key] == 0)
    answered_twice = sum(1 for key in where if per_record[key] > 1)
    answered_twice_by_kind = Counter(rec.kind for key, rec in where.items() if per_record[key] > 1)
    failed = sum(n for s, n in statuses.items() if s not in TERMINAL_OK)
    # app budget while the backlog lasts
    im_times.sort()
    span = im_times[-1] - im_times[0] if len(im_times) > 1 else float("nan")
    per_s = (len(im_times) - 1) / span if span == span and span > 0 else float("nan")
    ideal = shortest_span(len(im_times))
    allowed = allowed_within(span, len(im_times)) if span == span else 0
    # stalls of the destinations still busy at the kill, less the time the app's minute
    # budget was spent (no worker could have sent to any chat then)
    spent_floor = APP_PER_MIN - APP_PER_S

    def spent(t: float) -> bool:
        lo = bisect.bisect_right(im_times, t - 60.0)
        return bisect.bisect_right(im_times, t) - lo >= spent_floor

    stalls: dict[str, float] = {}
    for dest, total in per_destination.items():
        if sent_before_kill[dest] >= total:
            continue  # nothing left at the kill
        first = first_after_kill.get(dest)
        if first is None:
            stalls[dest] = float("inf")
            continue
        waited = first - kill_at
        if dest.startswith("oc_"):
            steps = int(waited / 0.05)
            waited -= 0.05 * sum(1 for k in range(steps) if spent(kill_at + 0.05 * k))
        stalls[dest] = waited
    longest = max(stalls.values(), default=float("nan"))
    accepted_total = int(stats["accepted_total"])
    throttles = sum(stats["throttle_answers"].values())
    return {
        "produced": len(where),
        "lost": lost,
        "sent_twice": twice,
        "sent_twice_by_kind": dict(twice_by_kind),
        "sent_twice_first_from_kill_s": twice_first_from_kill[:20],
        "failed": failed,
        "statuses": dict(statuses),
        "platform_deduplicated": sum(stats["duplicates"].values()),
        "accepted_total": accepted_total,
        "throttle_answers": throttles,
        "throttle_answers_by_backend": stats["throttle_answers"],
        "throttle_share": throttles / accepted_total if accepted_total else float("nan"),
        "im_sends": len(im_times),
        "im_span_s": round(span, 2),
        "im_sends_per_s": round(per_s, 2),
        "im_shortest_span_s": ideal,
        # where the span went: IM sends per 5 s from the first, and the kill on that clock
        "im_sends_per_5s": _per_bucket(im_times, 5.0),
        "kill_from_first_im_s": round(kill_at - im_times[0], 1) if im_times else None,
        # sends ÷ what the app's windows allowed from the first IM send to the last
        "im_sends_allowed": allowed,
        "app_budget_use": round(len(im_times) / allowed, 3) if allowed else float("nan"),
        "least_span_ratio": round(ideal / span, 3) if span == span and span > 0 else float("nan"),
        "busy_at_kill": len(stalls),
        "busy_chats_at_kill": sum(1 for d in stalls if d.startswith("oc_")),
        "longest_stall_s": round(longest, 2),
        "longest_stall_destination": max(stalls, key=lambda d: stalls[d]) if stalls else None,
        "records_unanswered": unanswered,
        "records_answered_twice": answered_twice,
        "records_answered_twice_by_kind": dict(answered_twice_by_kind),
        "results_read": sum(per_record.values()),
    }


def _per_bucket(times: list[float], width: float) -> list[int]:
    counts: Counter[int] = Counter(int((t - times[0]) // width) for t in times)
    return [counts[i] for i in range(max(counts) + 1)] if counts else []


def _session_s(size: Size, variant: Variant) -> float:
    if size.session_timeout_ms is not None:
        return size.session_timeout_ms / 1000
    return STATIC_SESSION_TIMEOUT_MS / 1000 if variant.static else DEFAULT_SESSION_TIMEOUT_S


def _report(size: Size, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    variants = [v for v in VARIANTS if v.label in runs]
    titles = {v.label: f"{v.title} {size.outage_s:g} s" if v.outage else v.title for v in variants}
    headers = ["figure", "target"]
    for v in variants:
        headers += [titles[v.label], "met"]
    rows: list[list[Any]] = []
    targets = []

    def judge(
        figure: str,
        goal: str | dict[str, str],
        shown: dict[str, str],
        met: dict[str, bool],
        note: str,
    ) -> None:
        goals = goal if isinstance(goal, dict) else {v.label: goal for v in variants}
        row: list[Any] = [figure, " / ".join(dict.fromkeys(goals.values()))]
        for v in variants:
            row += [shown[v.label], "yes" if met[v.label] else "NO"]
            targets.append(
                target(
                    f"pool: {figure} ({titles[v.label]})",
                    goals[v.label],
                    shown[v.label],
                    met[v.label],
                    note,
                )
            )
        rows.append(row)

    both = {v.label: runs[v.label] for v in variants}
    judge(
        "lost, sent twice, failed",
        "0, 0, 0",
        {k: f"{d['lost']}, {d['sent_twice']}, {d['failed']}" for k, d in both.items()},
        {k: d["lost"] == d["sent_twice"] == d["failed"] == 0 for k, d in both.items()},
        "from the simulator's accepted messages and the results",
    )
    judge(
        "throttle answers",
        {v.label: "<= 0.5% of sends" if v.outage else "0" for v in variants},
        {k: f"{d['throttle_answers']} ({100 * d['throttle_share']:.2f}%)" for k, d in both.items()},
        {
            v.label: both[v.label]["throttle_share"] <= 0.005
            if v.outage
            else both[v.label]["throttle_answers"] == 0
            for v in variants
        },
        "the simulator's 99991400 and webhook throttle answers",
    )
    judge(
        "app budget used while the backlog lasts",
        ">= 90%",
        {
            k: f"{100 * d['app_budget_use']:.0f}% ({d['im_sends']:,} of {d['im_sends_allowed']:,} "
            f"in {d['im_span_s']:.0f} s; least {d['im_shortest_span_s']:.0f} s)"
            for k, d in both.items()
        },
        {k: d["app_budget_use"] >= 0.9 for k, d in both.items()},
        "IM sends ÷ the sends 50/s and 1,000/min allow from the first IM send to the last",
    )
    stall_goal = {v.label: _session_s(size, v) + 5.0 for v in variants}
    judge(
        "longest stall of busy destinations after the SIGKILL",
        {
            v.label: f"<= {stall_goal[v.label]:g} s (session {_session_s(size, v):g} s + 5 s)"
            for v in variants
        },
        {
            k: f"{d['longest_stall_s']:.1f} s ({d['busy_at_kill']} busy)"
            if d["busy_at_kill"]
            else "n/a: nothing busy at the kill"
            for k, d in both.items()
        },
        {
            k: bool(d["busy_at_kill"]) and d["longest_stall_s"] <= stall_goal[k]
            for k, d in both.items()
        },
        "less the time the app's minute budget was spent; untested (not met) if nothing was busy",
    )
    judge(
        "results per consumed record",
        "exactly 1",
        {
            k: f"{d['produced'] - d['records_unanswered'] - d['records_answered_twice']:,} of "
            f"{d['produced']:,} ({d['records_unanswered']} none, "
            f"{d['records_answered_twice']} twice)"
            for k, d in both.items()
        },
        {k: d["records_unanswered"] == d["records_answered_twice"] == 0 for k, d in both.items()},
        "the results topic by source partition and offset",
    )
    tbl = h.table(headers, rows)
    for label, d in both.items():
        tbl += (
            f"\n\n{label}: events (s after two workers ready) "
            + ", ".join(f"{name} {t:g}" for name, t in d["events"])
            + f"; statuses {d['statuses']}; sent twice by kind {d['sent_twice_by_kind']}"
            f" (first accepted, s from the SIGKILL: {d['sent_twice_first_from_kill_s']}); "
            f"answered twice by kind {d['records_answered_twice_by_kind']}; "
            f"platform uuid repeats {d['platform_deduplicated']}; "
            f"exit codes {d['exit_codes']}; warnings {d['log_warnings'] or 'none'}; "
            f"IM sends per 5 s from the first (SIGKILL at {d['kill_from_first_im_s']} s): "
            f"{d['im_sends_per_5s']}"
        )
    params = {
        **{k: v for k, v in asdict(size).items() if k != "deadline_s"},
        "im_requests": size.chats * size.per_chat,
        "webhook_requests": size.bots * size.per_bot,
        "partitions": PARTITIONS,
        "workers": 3,
        "session_timeout_s": {v.label: _session_s(size, v) for v in variants},
        "app_limits": f"{APP_PER_S}/s, {APP_PER_MIN}/min",
    }
    data = {label: {k: v for k, v in d.items() if k != "sim_kill_at"} for label, d in runs.items()}
    return report("pool", "9. Pool of workers", params, data, tbl, targets)
