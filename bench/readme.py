"""``python -m bench.readme``: rewrite the README's Performance section from bench/results.

Replaces what lies between ``<!-- performance:start -->`` and ``<!-- performance:end -->``
with the latest full run: machine and date, the summary table, and each scenario's table.
Run it after ``make bench``; a quick run is refused (its numbers mean nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from .__main__ import SCENARIOS

START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def section(results: Path) -> str:
    summary: dict[str, Any] = orjson.loads((results / "summary.json").read_bytes())
    if summary.get("quick"):
        raise SystemExit("bench.readme: the results are from a --quick run; run `make bench`")
    m = summary["machine"]
    lines = [
        START,
        "The benchmarks are in [`bench/`](bench) ([method, profiles and findings]"
        "(bench/README.md)). `make bench` runs them all: a real Tansu broker, the simulator "
        "in its own process, the worker as `cardq run`, and two baselines in the same run, a "
        "bare loop (aiokafka `getmany` → HTTP POST, nothing else: the most one Python process "
        "moves here) and a partition-ordered consumer (one record at a time per partition, "
        "commit after each: what the HTTP sink connector and FastStream do by default).",
        "",
        f"Latest run: **{m['date']}**, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB, Python {m['python']}, Linux {m['kernel']}; one worker "
        f"process; the worker, simulator, broker and harness share the two cores. All five "
        f"scenarios took {summary['total_s'] / 60:.1f} min. JSON: "
        "[bench/results/](bench/results).",
        "",
        "| scenario | target | goal | measured | met |",
        "|---|---|---|---|---|",
    ]
    titles = {}
    for name in SCENARIOS:
        path = results / f"{name}.json"
        if path.exists():
            titles[name] = orjson.loads(path.read_bytes())["title"]
    for t in summary["targets"]:
        met = "yes" if t["met"] else "**no**"
        measured = str(t["measured"]).replace("|", "/")
        title = titles.get(t["scenario"], t["scenario"])
        lines.append(f"| {title} | {t['target']} | {t['goal']} | {measured} | {met} |")
    for name in SCENARIOS:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        rep = orjson.loads(path.read_bytes())
        table = rep["table"]
        if name == "limit_fidelity":  # one row per bot: the summary line says it all
            table = table.split("\n\n")[-1] + " (every bot: bench/results/limit_fidelity.json)"
        lines += ["", f"**{rep['title']}**", "", table]
    lines += [
        "",
        "Scenario 5's targets are out of reach for any consumer here: the bare loop, with the "
        "same 5 ms fetch wait, misses them as well, because Tansu and a simulator sharing two "
        "cores take more than 10 ms before any worker code runs. cardq's own share is the "
        '"to send" stage and its distance from the bare loop\'s row. The numbers also move '
        "from run to run on this VM. See [bench/README.md](bench/README.md), "
        '"Latency (scenario 5) on Tansu" and "Variability".',
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
