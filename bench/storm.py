"""Scenario 10, storm (issue 13): an incident storm through one Feishu app, judged by what
the chats end up showing.

20,000 alert events arrive in 60 s for 300 groups (one chat each) of one app: 10,000
alerts, each firing and later resolved, 10% of them urgent. The simulator enforces the
platform's real limits (the app's 50/s and 1,000/min, 5/s per chat), so sending every
event as its own card takes 20 minutes; the storm is exactly where cardq has to do better
than pace.

The same events run twice, each run with a fresh broker, simulator and worker:

- **plain**: every event is a card of its own (``priority`` set, nothing else);
- **digest and lifecycle**: each request also names its alert group (``digest_key``) and
  its alert (``subject_key``), so a backlog may be merged into digest cards and a resolved
  alert may update its firing card (Feishu IM PATCH) instead of sending a new one.

A field the contract (``schemas/send-request.v1.json``) does not list yet is left out of
the requests, and the report says which: until the worker knows them the second run is a
second plain run, and its targets are reported, not judged.

"What a chat shows" comes from the simulator's record of accepted calls: each message's
content after its latest update. A group shows the latest state of all its alerts once
every one of its alerts is shown as resolved by some message in its chat; the time from the
group's last event being produced until then is that group's lag.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from cardq.devtools.broker import free_port

from . import harness as h
from .pool import Results
from .scenarios import Options, report, target

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "send-request.v1.json"
#: What the digest-and-lifecycle run adds to each request (plain sends only ``priority``).
NEW_FIELDS = ("priority", "digest_key", "subject_key")
MODES = ("plain", "digest_lifecycle")
#: The runs: the issue's two, and the issue's storm with urgent traffic that fits the
#: urgent share of the app budget (``urgent_fits``: digest and lifecycle, 2% urgent).
RUNS = ("plain", "digest_lifecycle", "urgent_fits")
MODE_OF = {
    "plain": "plain",
    "digest_lifecycle": "digest_lifecycle",
    "urgent_fits": "digest_lifecycle",
}
MODE_TITLES = {
    "plain": "plain",
    "digest_lifecycle": "digest and lifecycle",
    "urgent_fits": "digest and lifecycle, 2% urgent",
}
#: The urgent share of ``urgent_fits``: ~400 urgent events in 60 s, 6.7/s, under the 13.3/s
#: that ``priority.urgent_share`` (0.8) reserves of the app's 1,000/min.
FITTING_URGENT_SHARE = 0.02
#: ``a123 resolved`` anywhere in a card: its header, a digest's item title, a markdown line.
STATE = re.compile(rb"\b(a\d+) (firing|resolved)\b")
FINAL = "resolved"


@dataclass(frozen=True)
class Size:
    events: int
    seconds: float
    groups: int
    urgent_share: float
    partitions: int
    #: how long after the last event is produced the run waits for every result
    drain_s: float


FULL = Size(20_000, 60.0, 300, 0.1, 6, 1200.0)
QUICK = Size(200, 3.0, 10, 0.1, 2, 90.0)


@dataclass(frozen=True)
class Event:
    rid: str
    alert: str
    group: int
    state: str
    #: seconds after the stream starts
    at: float
    urgent: bool


def chat(group: int) -> str:
    return f"oc_storm_{group:03d}"


def plan(size: Size, seed: int = 13) -> list[Event]:
    """Half the events fire an alert in the first three quarters of the stream; the other
    half resolve them 1 s to a quarter of the stream later (never past its end)."""
    rng = random.Random(seed)
    timed: list[tuple[float, str, int, str, bool]] = []
    for k in range(size.events // 2):
        group = rng.randrange(size.groups)
        fire = rng.uniform(0.0, 0.75 * size.seconds)
        resolve = min(size.seconds, fire + rng.uniform(1.0, 0.25 * size.seconds))
        urgent = rng.random() < size.urgent_share
        timed.append((fire, f"a{k}", group, "firing", urgent))
        timed.append((resolve, f"a{k}", group, FINAL, urgent))
    timed.sort()
    return [
        Event(f"e{i:05d}", alert, group, state, at, urgent)
        for i, (at, alert, group, state, urgent) in enumerate(timed)
    ]


def known_fields() -> frozenset[str]:
    """The top-level request fields the contract lists today."""
    schema = orjson.loads(SCHEMA.read_bytes())
    return frozenset(schema["properties"])


def request(event: Event, mode: str, allowed: frozenset[str]) -> dict[str, Any]:
    """A shared card (``update_multi``: a later state may update it) naming the alert and
    its state in the header, which is also what a digest lists per item."""
    title = f"{event.alert} {event.state}"
    card = {
        "config": {"update_multi": True},
        "header": {
            "title": {"tag": "plain_text", "content": title},
            "template": "red" if event.state == "firing" else "green",
        },
        "elements": [
            {"tag": "markdown", "content": f"**{title}** in group {event.group} ({event.rid})"}
        ],
    }
    extra: dict[str, Any] = {"priority": "urgent" if event.urgent else "normal"}
    if mode == "digest_lifecycle":
        extra["digest_key"] = f"group-{event.group:03d}"
        extra["subject_key"] = event.alert
    return {
        "version": 1,
        "request_id": event.rid,
        "backend": "feishu_message",
        "bot": "app",
        "target": {"receive_id_type": "chat_id", "receive_id": chat(event.group)},
        "msg_type": "interactive",
        "content": card,
        **{k: v for k, v in extra.items() if k in allowed},
    }


async def produce(
    bootstrap: str, events: list[Event], mode: str, allowed: frozenset[str]
) -> dict[str, float]:
    """Each event at its time, keyed by its chat (so a chat's events stay in order);
    returns when each was handed to the producer (``time.monotonic``)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    produced: dict[str, float] = {}
    try:
        started = time.monotonic()
        for event in events:
            wait = started + event.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            key = f"feishu_message/app/chat_id:{chat(event.group)}".encode()
            value = orjson.dumps(request(event, mode, allowed))
            await producer.send(h.REQUESTS, value, key=key)
            produced[event.rid] = time.monotonic()
        await producer.flush()
    finally:
        await producer.stop()
    return produced


async def until_answered(results: Results, rids: set[str], deadline: float) -> None:
    seen: set[str] = set()
    read = 0
    while time.monotonic() < deadline:
        items = results.items
        seen.update(str(r.get("request_id")) for r in items[read:])
        read = len(items)
        if rids <= seen:
            return
        await asyncio.sleep(0.5)


async def run_mode(
    size: Size, mode: str, events: list[Event], allowed: frozenset[str]
) -> dict[str, Any]:
    work = h.Workdir(f"storm-{mode}")
    async with h.broker(size.partitions) as broker:
        bootstrap = broker.bootstrap_servers
        # the platform's real limits: no --no-limits, no time scale
        sim = await h.SimulatorProc.start(h.SimulatorSpec(latency_ms=5, record=True), work)
        try:
            port = free_port()
            config = h.worker_config(
                bootstrap,
                sim.base_url,
                work,
                group=f"cardq-storm-{mode}",
                metrics_port=port,
                bots={"app": h.APP_BOT},
            )
            worker = await h.start_worker(config, work, port)
            try:
                async with Results(bootstrap, h.RESULTS) as results:
                    started = time.monotonic()
                    produced = await produce(bootstrap, events, mode, allowed)
                    produce_s = time.monotonic() - started
                    rids = {e.rid for e in events}
                    await until_answered(results, rids, time.monotonic() + size.drain_s)
                    drained_s = time.monotonic() - started
                    await results.quiet(1.0)
                accepted = await sim.accepted()
                stats = await sim.stats()
            finally:
                code = await worker.stop()
        finally:
            await sim.stop()
    data = measure(events, produced, accepted, results.items, stats)
    data.update(
        {
            "produce_s": round(produce_s, 1),
            "run_s": round(drained_s, 1),
            "exit_code": code,
            "workdir": str(work.path),
        }
    )
    return data


class Chats:
    """What each chat shows, replayed from the simulator's accepted calls in order: every
    message's states after its latest update, and when each alert's final state became
    (and stayed) visible in its own chat."""

    def __init__(self, group_of: dict[str, int]) -> None:
        self.group_of = group_of
        self.chat_of: dict[str, str] = {}  # message id -> chat id
        self.showing: dict[str, set[tuple[str, str]]] = {}  # message id -> (alert, state)
        self.final_count: Counter[str] = Counter()  # alert -> messages showing it resolved
        self.final_since: dict[str, float] = {}
        self.first_shown: dict[tuple[str, str], float] = {}

    def apply(self, item: dict[str, Any]) -> None:
        message = item.get("message_id")
        if item.get("backend") != "feishu_message" or not message:
            return
        if item["operation"] == "send":
            self.chat_of[message] = str(item["destination"]).partition(":")[2]
        where = self.chat_of.get(message)
        if where is None:
            return
        at = float(item["at"])
        found = {
            (m.group(1).decode(), m.group(2).decode())
            for m in STATE.finditer(orjson.dumps(item.get("content_decoded")))
        }
        # only alerts of this chat's group count: a card in the wrong chat shows nothing
        now = {(a, s) for a, s in found if chat(self.group_of.get(a, -1)) == where}
        before = self.showing.get(message, set())
        self.showing[message] = now
        for alert, state in now:
            self.first_shown.setdefault((alert, state), at)
        for alert, state in before - now:
            if state == FINAL:
                self.final_count[alert] -= 1
        for alert, state in now - before:
            if state == FINAL:
                self.final_count[alert] += 1
                if self.final_count[alert] == 1:
                    self.final_since[alert] = at

    def settled_at(self, alert: str) -> float | None:
        """Since when its final state is shown, or None if it is not shown at the end."""
        return self.final_since.get(alert) if self.final_count[alert] > 0 else None


def measure(
    events: list[Event],
    produced: dict[str, float],
    accepted: list[dict[str, Any]],
    results: list[dict[str, Any]],
    stats: dict[str, Any],
) -> dict[str, Any]:
    group_of = {e.alert: e.group for e in events}
    chats = Chats(group_of)
    operations: Counter[str] = Counter()
    for item in sorted(accepted, key=lambda i: float(i["at"])):
        if item.get("backend") == "feishu_message":
            operations[str(item["operation"])] += 1
        chats.apply(item)
    # a group's lag: from its last event produced until every alert of it shows "resolved"
    last_event: dict[int, float] = {}
    alerts_of: dict[int, set[str]] = {}
    for e in events:
        if e.rid in produced:
            last_event[e.group] = max(last_event.get(e.group, 0.0), produced[e.rid])
        alerts_of.setdefault(e.group, set()).add(e.alert)
    lags: list[float] = []
    never = 0
    for group, alerts in alerts_of.items():
        settled = [chats.settled_at(a) for a in alerts]
        if any(s is None for s in settled) or group not in last_event:
            never += 1
            lags.append(float("inf"))
        else:
            lags.append(max(0.0, max(s for s in settled if s is not None) - last_event[group]))
    urgent: list[float] = []
    urgent_unseen = 0
    for e in events:
        if not e.urgent or e.rid not in produced:
            continue
        shown = chats.first_shown.get((e.alert, e.state))
        if shown is None:
            urgent_unseen += 1
        else:
            urgent.append(max(0.0, shown - produced[e.rid]))
    answered = {str(r.get("request_id")) for r in results}
    statuses = Counter(str(r.get("status")) for r in results)
    sends = sum(operations.values())
    return {
        "events": len(events),
        "produced": len(produced),
        "platform_calls": sends,
        "platform_calls_by_operation": dict(operations),
        "sends_per_event": round(sends / len(events), 4) if events else float("nan"),
        "throttle_answers": sum(stats["throttle_answers"].values()),
        "groups": len(alerts_of),
        "groups_never_settled": never,
        "latest_state_p50_s": _seconds(h.percentile(lags, 50)),
        "latest_state_p99_s": _seconds(h.percentile(lags, 99)),
        "urgent_events": sum(1 for e in events if e.urgent),
        "urgent_never_shown": urgent_unseen,
        "urgent_p50_s": _seconds(h.percentile(urgent, 50)),
        "urgent_p90_s": _seconds(h.percentile(urgent, 90)),
        "urgent_p99_s": _seconds(h.percentile(urgent, 99)),
        "without_result": sum(1 for e in events if e.rid not in answered),
        "results_by_status": dict(statuses),
    }


def _seconds(value: float) -> float:
    return round(value, 3) if value == value else value


async def storm(opts: Options) -> dict[str, Any]:
    size = QUICK if opts.quick else FULL
    events = plan(size)
    fitting = plan(replace(size, urgent_share=FITTING_URGENT_SHARE))
    allowed = known_fields()
    missing = [f for f in NEW_FIELDS if f not in allowed]
    params = {
        "events": len(events),
        "alerts": len(events) // 2,
        "stream_s": size.seconds,
        "groups": size.groups,
        "urgent_share": size.urgent_share,
        "urgent_fits_urgent_share": FITTING_URGENT_SHARE,
        "partitions": size.partitions,
        "drain_s": size.drain_s,
        "backend": "feishu_message, one app, the simulator at the platform's real limits",
        "fields_not_in_contract_yet": missing,
    }
    chosen = opts.storm_runs or RUNS
    runs = {} if opts.quick else _previous_runs(opts.out)
    for run in RUNS:
        if run not in chosen:
            continue
        print(f"storm: {MODE_TITLES[run]} run", flush=True)
        planned = fitting if run == "urgent_fits" else events
        runs[run] = await run_mode(size, MODE_OF[run], planned, allowed)
        runs[run]["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return _report(params, runs, missing)


def _previous_runs(out: Path) -> dict[str, dict[str, Any]]:
    """The runs of the last full-size storm in ``out``: ``--storm-runs`` re-measures some
    runs and keeps the others' numbers (each run says when it was measured)."""
    try:
        data = orjson.loads((out / "storm.json").read_bytes())
        runs: dict[str, dict[str, Any]] = data["brokers"]["tansu"]["measured"]
    except (OSError, KeyError, ValueError, TypeError):
        return {}
    for run in runs.values():  # JSON has no infinity: "never" was written as null
        for key in ("latest_state_p50_s", "latest_state_p99_s"):
            if run.get(key) is None:
                run[key] = float("inf")
    return {name: run for name, run in runs.items() if name in RUNS}


HEADERS = [
    "run",
    "throttle answers",
    "platform calls ÷ events",
    "latest state p99 s",
    "urgent p99 s",
    "without a result",
    "groups never settled",
]


def _report(
    params: dict[str, Any], runs: dict[str, dict[str, Any]], missing: list[str]
) -> dict[str, Any]:
    rows = [
        [
            MODE_TITLES[run],
            d["throttle_answers"],
            d["sends_per_event"],
            d["latest_state_p99_s"],
            d["urgent_p99_s"],
            d["without_result"],
            d["groups_never_settled"],
        ]
        for run, d in ((run, runs[run]) for run in RUNS if run in runs)
    ]
    tbl = h.table(HEADERS, rows)
    if missing:
        tbl += (
            f"\n\nThe contract does not list {', '.join(missing)} yet: those fields were left "
            "out, so the digest-and-lifecycle run is a plain run and its targets are not judged."
        )
    judged = not missing
    targets: list[dict[str, Any]] = []
    if "plain" in runs and "digest_lifecycle" in runs:
        tbl += "\n\n" + _urgent_note(runs["digest_lifecycle"], params)
        targets += _issue_targets(runs["plain"], runs["digest_lifecycle"], judged)
    when = {d.get("measured_at", "an earlier run") for d in runs.values()}
    if len(when) > 1:  # --storm-runs kept some runs' numbers
        tbl += (
            "\n\nMeasured: "
            + "; ".join(
                f"{MODE_TITLES[run]}, {runs[run].get('measured_at', 'an earlier run')}"
                for run in RUNS
                if run in runs
            )
            + "."
        )
    if "urgent_fits" in runs:
        fits = runs["urgent_fits"]
        targets += [
            target(
                "storm, 2% urgent: urgent produce → platform p99",
                "<= 2 s",
                f"{fits['urgent_p99_s']:.2f} s",
                fits["urgent_p99_s"] <= 2.0,
                f"{fits['urgent_events']} urgent events, within priority.urgent_share",
                judged=judged,
            ),
            target(
                "storm, 2% urgent: throttle answers, events without a result",
                "0, 0",
                f"{fits['throttle_answers']}, {fits['without_result']}",
                fits["throttle_answers"] == fits["without_result"] == 0,
            ),
        ]
    return report("storm", "10. Storm", params, runs, tbl, targets)


def _urgent_note(merged: dict[str, Any], params: dict[str, Any]) -> str:
    """Why the issue's urgent target cannot hold in its own storm, from the run's numbers."""
    per_s = merged["urgent_events"] / max(merged["produce_s"], 1e-9)
    return (
        f"Urgent p99 in the issue's storm: {merged['urgent_events']:,} urgent events in "
        f"{merged['produce_s']} s need {per_s:.1f} sends/s, while the app's 1,000/min allows "
        f"16.7/s sustained (its updates included): the urgent queue alone outgrows the app, so "
        f"no order meets 2 s there. The 2%-urgent run ({params['urgent_fits_urgent_share']:.0%}"
        " of the alerts) keeps urgent traffic inside `priority.urgent_share` (0.8 × 16.7/s)."
    )


def _issue_targets(
    plain: dict[str, Any], merged: dict[str, Any], judged: bool
) -> list[dict[str, Any]]:
    ratio = plain["latest_state_p99_s"] / merged["latest_state_p99_s"]
    ratio = ratio if ratio == ratio else float("nan")  # inf/inf: nothing settled in either
    throttles = plain["throttle_answers"] + merged["throttle_answers"]
    unanswered = plain["without_result"] + merged["without_result"]
    return [
        target("storm: throttle answers", "0", str(throttles), throttles == 0, "both runs"),
        target(
            "storm: platform calls ÷ events",
            "<= 25%",
            f"{100 * merged['sends_per_event']:.1f}%",
            merged["sends_per_event"] <= 0.25,
            "digest and lifecycle",
            judged=judged,
        ),
        target(
            "storm: latest state p99, plain ÷ digest",
            ">= 4x",
            f"{ratio:.2f}x",
            ratio >= 4.0,
            "each group: last event produced → all its alerts shown resolved",
            judged=judged,
        ),
        target(
            "storm: urgent produce → platform p99",
            "<= 2 s",
            f"{merged['urgent_p99_s']:.2f} s",
            merged["urgent_p99_s"] <= 2.0,
            "digest and lifecycle; out of reach in this storm (the table's note)",
            judged=judged,
        ),
        target("storm: events without a result", "0", str(unanswered), unanswered == 0, "both"),
    ]
