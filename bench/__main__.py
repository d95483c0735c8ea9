"""``make bench`` (``python -m bench``): the scenarios and both baselines, one table
per scenario and broker, one summary table; JSON per scenario, ``summary.json`` and
``summary.md``.

Throughput, head-of-line, latency and the pool run on Apache Kafka and on Tansu
(``--broker``): users run cardq on Kafka, which is where the latency target is judged;
Tansu starts in 20 ms and needs no Java. The other scenarios measure the worker's pacing,
memory, scrubbing and endurance, which no broker changes, and run on Tansu.

The benchmarks are not part of the test suite; ``tests/test_bench_smoke.py`` runs each
scenario with ``--quick`` (tiny sizes, no timing assertions).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from . import harness as h
from .pool import RUNS as POOL_RUNS
from .pool import pool
from .scenarios import (
    Options,
    backlog_memory,
    head_of_line,
    latency_under_load,
    limit_fidelity,
    throughput,
)
from .scrub import scrub_cost
from .slow_platform import slow_platform
from .soak import soak
from .storm import RUNS as STORM_RUNS
from .storm import storm

SCENARIOS = (
    "throughput",
    "head_of_line",
    "limit_fidelity",
    "backlog_memory",
    "latency_under_load",
    "slow_platform",
    "scrub",
    "soak",
    "pool",
    "storm",
)
#: The scenarios ``--broker`` applies to; the others run on Tansu.
ON_BOTH = ("throughput", "head_of_line", "latency_under_load", "pool")


def on_brokers(name: str, brokers: list[str]) -> list[str]:
    """The soak runs once, on Apache Kafka when it is among ``brokers``: twenty minutes on
    Tansu would measure its in-memory log, which slows down as it grows, as much as the
    worker. The scenarios of ``ON_BOTH`` run on each; the others on Tansu."""
    if name in ON_BOTH:
        return brokers
    if name == "soak" and "kafka" in brokers:
        return ["kafka"]
    return ["tansu"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all of them)",
    )
    p.add_argument(
        "--broker",
        choices=("tansu", "kafka", "both"),
        default=None,
        help="the broker(s) throughput, head-of-line, latency and pool run on (default: both "
        "where Java can start Apache Kafka, else tansu, saying why), and the soak on Kafka when "
        "it is among them; the others always run on Tansu",
    )
    p.add_argument("--quick", action="store_true", help="smoke sizes: seconds, not minutes")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where JSON goes (default: bench/results; with --quick: bench/results/quick, so a "
        "smoke run never replaces the real numbers)",
    )
    p.add_argument(
        "--capacity",
        type=float,
        default=None,
        help="delivered/s that scenarios 5 and 8 halve, on every broker (default: scenario 1's "
        "result on the same broker, from this run or OUT/throughput.json)",
    )
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="how long the soak scenario runs (default: 20; with --quick: 0.5)",
    )
    for scenario, known, rest in (
        ("storm", STORM_RUNS, "all); the others keep their numbers from OUT/storm.json"),
        ("pool", POOL_RUNS, "all; a second look at one run, its JSON written to OUT/pool.json"),
    ):
        p.add_argument(
            f"--{scenario}-runs",
            type=lambda text: tuple(text.split(",")),
            default=None,
            help=f"the {scenario} runs to measure, comma-separated, of {', '.join(known)} "
            f"(default: {rest}",
        )
    return p


async def run(
    names: list[str], brokers: list[str], opts: Options, capacity: float | None
) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    capacities: dict[str, float | None] = {b: capacity for b in h.BROKERS}
    try:
        for name in names:
            started = time.monotonic()
            per_broker: dict[str, dict[str, Any]] = {}
            for broker in on_brokers(name, brokers):
                print(
                    f"\n== {name} on {h.BROKER_NAMES[broker]}{' (quick)' if opts.quick else ''} ==",
                    flush=True,
                )
                rep = await _one(name, broker, opts, capacities)
                if "table" in rep:
                    print(rep["table"], flush=True)
                per_broker[broker] = rep
            combined = combine(name, per_broker)
            combined["quick"] = opts.quick
            combined["seconds"] = round(time.monotonic() - started, 1)
            combined["machine"] = h.machine()
            if opts.brokers.kafka_start_s is not None and "kafka" in per_broker:
                combined["kafka_start_s"] = round(opts.brokers.kafka_start_s, 1)
            print(f"({combined['seconds']:.0f} s)", flush=True)
            opts.out.mkdir(parents=True, exist_ok=True)
            (opts.out / f"{name}.json").write_bytes(
                orjson.dumps(combined, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            )
            reports.append(combined)
    finally:
        opts.brokers.close()
    return reports


async def _one(
    name: str, broker: str, opts: Options, capacities: dict[str, float | None]
) -> dict[str, Any]:
    """One scenario on one broker; an exception becomes a report that says so."""
    try:
        if name == "throughput":
            rep = await throughput(opts, broker)
            if capacities[broker] is None:
                capacities[broker] = rep["measured"]["runs"]["cardq"]["delivered_per_s"]
        elif name == "head_of_line":
            rep = await head_of_line(opts, broker)
        elif name == "limit_fidelity":
            rep = await limit_fidelity(opts)
        elif name == "backlog_memory":
            rep = await backlog_memory(opts)
        elif name == "slow_platform":
            rep = await slow_platform(opts)
        elif name == "scrub":
            rep = await asyncio.to_thread(scrub_cost, opts)
        elif name == "pool":
            rep = await pool(opts, broker)
        elif name == "storm":
            rep = await storm(opts)
        elif name == "soak":
            if capacities[broker] is None and not opts.quick:
                capacities[broker] = _previous_capacity(opts.out, broker)
            rep = await soak(opts, capacities[broker], broker)
        else:
            if capacities[broker] is None:
                capacities[broker] = _previous_capacity(opts.out, broker)
            rep = await latency_under_load(opts, broker, capacities[broker])
    except Exception as exc:
        traceback.print_exc()
        rep = {
            "scenario": name,
            "title": name,
            "error": f"{type(exc).__name__}: {exc}",
            "targets": [
                {
                    "target": name,
                    "goal": "runs",
                    "measured": "error",
                    "met": False,
                    "judged": True,
                    "note": "",
                }
            ],
        }
    return rep


def combine(name: str, per_broker: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One scenario's report over the brokers it ran on: each broker's own report under
    ``brokers``, every target tagged with its broker, and the tables one after the other."""
    first = next(iter(per_broker.values()))
    combined: dict[str, Any] = {
        "scenario": name,
        "title": first["title"],
        "brokers": per_broker,
        "targets": [
            {"broker": broker, **t} for broker, rep in per_broker.items() for t in rep["targets"]
        ],
        "table": "\n\n".join(
            f"{h.BROKER_NAMES[broker]}:\n\n{rep.get('table', rep.get('error', ''))}"
            for broker, rep in per_broker.items()
        ),
    }
    errors = {b: rep["error"] for b, rep in per_broker.items() if "error" in rep}
    if errors:
        combined["error"] = "; ".join(f"{h.BROKER_NAMES[b]}: {e}" for b, e in errors.items())
    return combined


def _previous_capacity(out: Path, broker: str) -> float | None:
    try:
        data = orjson.loads((out / "throughput.json").read_bytes())
        runs = data["brokers"][broker]["measured"]["runs"]
        return float(runs["cardq"]["delivered_per_s"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def summary(
    reports: list[dict[str, Any]], total_s: float, quick: bool
) -> tuple[str, dict[str, Any]]:
    m = h.machine()
    rows = []
    for rep in reports:
        for t in rep["targets"]:
            rows.append(
                [
                    rep["title"],
                    h.BROKER_NAMES[t["broker"]],
                    t["target"],
                    t["goal"],
                    t["measured"],
                    met_label(t),
                ]
            )
    tbl = h.table(["scenario", "broker", "target", "goal", "measured", "met"], rows)
    head = (
        f"cardq benchmarks{' (quick sizes: not the real numbers)' if quick else ''}: "
        f"{m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, Linux {m['kernel']}; one worker process (three in the pool); "
        f"all scenarios in {total_s / 60:.1f} min"
    )
    data = {
        "machine": m,
        "quick": quick,
        "total_s": round(total_s, 1),
        "targets": [{"scenario": rep["scenario"], **t} for rep in reports for t in rep["targets"]],
        "all_met": all(t["met"] for rep in reports for t in rep["targets"] if t["judged"]),
    }
    return f"{head}\n\n{tbl}\n", data


def met_label(t: dict[str, Any]) -> str:
    """yes / NO, or, for a target reported but judged on another broker, what it would be."""
    if not t.get("judged", True):
        return f"not judged here ({'yes' if t['met'] else 'no'})"
    return "yes" if t["met"] else "NO"


def choose_brokers(asked: str | None) -> list[str]:
    """The brokers scenarios 1, 2 and 5 run on; exits 2 if Kafka is asked for and cannot run."""
    missing = h.kafka_missing()
    if asked is None:
        if missing is None:
            return list(h.BROKERS)
        print(f"bench: throughput, head-of-line and latency on Tansu only: {missing}", flush=True)
        return ["tansu"]
    wanted = list(h.BROKERS) if asked == "both" else [asked]
    if "kafka" in wanted and missing is not None:
        print(f"bench: --broker {asked}: Apache Kafka cannot run here: {missing}", file=sys.stderr)
        raise SystemExit(2)
    return wanted


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        args.out = Path("bench/results/quick" if args.quick else "bench/results")
    names = [n for n in SCENARIOS if n in (args.scenario or SCENARIOS)]
    brokers = choose_brokers(args.broker)
    for option, asked, known in (
        ("--storm-runs", args.storm_runs, STORM_RUNS),
        ("--pool-runs", args.pool_runs, POOL_RUNS),
    ):
        unknown = sorted(set(asked or ()) - set(known))
        if unknown:
            print(
                f"bench: {option}: no run {', '.join(unknown)}; the runs: {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    opts = Options(
        quick=args.quick,
        out=args.out,
        soak_minutes=args.soak_minutes,
        pool_runs=args.pool_runs,
        storm_runs=args.storm_runs,
    )
    started = time.monotonic()
    reports = asyncio.run(run(names, brokers, opts, args.capacity))
    text, data = summary(reports, time.monotonic() - started, args.quick)
    print("\n== summary ==\n" + text, flush=True)
    if names == list(SCENARIOS):
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_bytes(
            orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
        (args.out / "summary.md").write_text(text)
    return 0 if all("error" not in r for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
