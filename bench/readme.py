"""``python -m bench.readme``: rewrite the README's Performance section from bench/results.

Replaces what lies between ``<!-- performance:start -->`` and ``<!-- performance:end -->``
with the latest full run: machine and date, the summary table (one row per target and
broker), and each scenario's table on each broker it ran on. Run it after ``make bench``;
a quick run is refused (its numbers mean nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from .__main__ import SCENARIOS

START, END = "<!-- performance:start -->", "<!-- performance:end -->"
BROKER_NAMES = {"kafka": "Apache Kafka", "tansu": "Tansu"}


def section(results: Path) -> str:
    summary: dict[str, Any] = orjson.loads((results / "summary.json").read_bytes())
    if summary.get("quick"):
        raise SystemExit("bench.readme: the results are from a --quick run; run `make bench`")
    m = summary["machine"]
    # Results from before the benchmarks ran on Kafka name no broker: they were on Tansu.
    brokers = sorted({t.get("broker", "tansu") for t in summary["targets"]})
    on = " and ".join(BROKER_NAMES[b] for b in brokers)
    load = m.get("load_average_1m")
    lines = [
        START,
        "The benchmarks are in [`bench/`](bench) ([method, profiles and findings]"
        "(bench/README.md)). `make bench` runs them all: real brokers (throughput, "
        "head-of-line, latency and a pool of three workers on Apache Kafka, a single-node "
        "KRaft broker, and on Tansu; the soak on Apache Kafka; the other scenarios on Tansu), "
        "the simulator in its "
        "own process, the worker as `cardq run`, and two baselines in the same run, a bare "
        "loop (aiokafka `getmany` → HTTP POST, nothing else: the most one Python process "
        "moves here) and a partition-ordered consumer (one record at a time per partition, "
        "commit after each: what the HTTP sink connector and FastStream do by default).",
        "",
        f"Latest run: **{m['date']}** on {on}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB, Python {m['python']}, Linux {m['kernel']}"
        + (f", load average {load:g} at the end" if load is not None else "")
        + "; one worker process (three in the pool); the worker, simulator, broker and "
        "harness share the two "
        f"cores. All scenarios took {summary['total_s'] / 60:.1f} min"
        + (f"; {summary['note']}" if summary.get("note") else "")
        + ". JSON: [bench/results/](bench/results).",
        "",
        "| scenario | broker | target | goal | measured | met |",
        "|---|---|---|---|---|---|",
    ]
    titles = {}
    for name in SCENARIOS:
        path = results / f"{name}.json"
        if path.exists():
            titles[name] = orjson.loads(path.read_bytes())["title"]
    for t in summary["targets"]:
        if not t.get("judged", True):
            met = f"not judged here ({'yes' if t['met'] else 'no'})"
        else:
            met = "yes" if t["met"] else "**no**"
        measured = str(t["measured"]).replace("|", "/")
        title = titles.get(t["scenario"], t["scenario"])
        broker = BROKER_NAMES[t.get("broker", "tansu")]
        lines.append(f"| {title} | {broker} | {t['target']} | {t['goal']} | {measured} | {met} |")
    for name in SCENARIOS:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        rep = orjson.loads(path.read_bytes())
        lines += ["", f"**{rep['title']}**"]
        for broker, one in (rep.get("brokers") or {"tansu": rep}).items():
            table = one.get("table", one.get("error", ""))
            if name == "limit_fidelity":  # one row per bot: the summary line says it all
                table = table.split("\n\n")[-1] + " (every bot: bench/results/limit_fidelity.json)"
            lines += ["", f"On {BROKER_NAMES[broker]}:", "", table]
    lines += [
        "",
        "The latency target (scenario 5) is judged on Apache Kafka, as users run cardq: "
        "default settings. On Tansu every fetch is held for the whole fetch wait, so its rows "
        'are reported for comparison only, with the wait cut to 5 ms as well. The "p50 ms: to '
        "intake / to send / send\" column splits cardq's latency: produce → the worker has "
        "decoded the record (broker and fetch), → the first send starts (the worker's "
        "queues), → the platform answered. The numbers move from run to run on this VM. See "
        '[bench/README.md](bench/README.md), "Latency (scenario 5)" and "Variability".',
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    results = Path(argv[0]) if argv else Path("bench/results")
    readme = Path("README.md")
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"bench.readme: {readme} has no {START} … {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + section(results) + tail)
    print(f"bench.readme: {readme} Performance section updated from {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
