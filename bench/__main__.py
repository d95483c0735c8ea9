"""``make bench`` (``python -m bench``): the scenarios and both baselines, one table
per scenario, one summary table; JSON per scenario, ``summary.json`` and ``summary.md``.

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

SCENARIOS = (
    "throughput",
    "head_of_line",
    "limit_fidelity",
    "backlog_memory",
    "latency_under_load",
    "slow_platform",
    "scrub",
    "soak",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all of them)",
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
        help="delivered/s that scenarios 5 and 8 halve (default: scenario 1's result, from this "
        "run or OUT/throughput.json)",
    )
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="how long the soak scenario runs (default: 20; with --quick: 0.5)",
    )
    return p


async def run(names: list[str], opts: Options, capacity: float | None) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    for name in names:
        started = time.monotonic()
        print(f"\n== {name}{' (quick)' if opts.quick else ''} ==", flush=True)
        try:
            if name == "throughput":
                rep = await throughput(opts)
                if capacity is None:
                    capacity = rep["measured"]["runs"]["cardq"]["delivered_per_s"]
            elif name == "head_of_line":
                rep = await head_of_line(opts)
            elif name == "limit_fidelity":
                rep = await limit_fidelity(opts)
            elif name == "backlog_memory":
                rep = await backlog_memory(opts)
            elif name == "slow_platform":
                rep = await slow_platform(opts)
            elif name == "scrub":
                rep = await asyncio.to_thread(scrub_cost, opts)
            elif name == "soak":
                if capacity is None and not opts.quick:
                    capacity = _previous_capacity(opts.out)
                rep = await soak(opts, capacity)
            else:
                if capacity is None:
                    capacity = _previous_capacity(opts.out)
                rep = await latency_under_load(opts, capacity)
        except Exception as exc:
            traceback.print_exc()
            rep = {
                "scenario": name,
                "title": name,
                "error": f"{type(exc).__name__}: {exc}",
                "targets": [
                    {"target": name, "goal": "runs", "measured": "error", "met": False, "note": ""}
                ],
            }
        rep["quick"] = opts.quick
        rep["seconds"] = round(time.monotonic() - started, 1)
        rep["machine"] = h.machine()
        if "table" in rep:
            print(rep["table"], flush=True)
        print(f"({rep['seconds']:.0f} s)", flush=True)
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / f"{name}.json").write_bytes(
            orjson.dumps(rep, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
        reports.append(rep)
    return reports


def _previous_capacity(out: Path) -> float | None:
    try:
        data = orjson.loads((out / "throughput.json").read_bytes())
        return float(data["measured"]["runs"]["cardq"]["delivered_per_s"])
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
                [rep["title"], t["target"], t["goal"], t["measured"], "yes" if t["met"] else "NO"]
            )
    tbl = h.table(["scenario", "target", "goal", "measured", "met"], rows)
    head = (
        f"cardq benchmarks{' (quick sizes: not the real numbers)' if quick else ''}: "
        f"{m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, Linux {m['kernel']}; one worker process; "
        f"all scenarios in {total_s / 60:.1f} min"
    )
    data = {
        "machine": m,
        "quick": quick,
        "total_s": round(total_s, 1),
        "targets": [{"scenario": rep["scenario"], **t} for rep in reports for t in rep["targets"]],
        "all_met": all(t["met"] for rep in reports for t in rep["targets"]),
    }
    return f"{head}\n\n{tbl}\n", data


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        args.out = Path("bench/results/quick" if args.quick else "bench/results")
    names = [n for n in SCENARIOS if n in (args.scenario or SCENARIOS)]
    opts = Options(quick=args.quick, out=args.out, soak_minutes=args.soak_minutes)
    started = time.monotonic()
    reports = asyncio.run(run(names, opts, args.capacity))
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
