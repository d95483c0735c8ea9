"""Smoke versions of the benchmarks (``make bench``): every scenario runs end to end with
tiny sizes (``--quick``) and writes a well-formed report in which every request is
accounted for. No timing is asserted: the numbers of a quick run mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_scenario(name: str, out: Path, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench", "--quick", "--scenario", name, "--out", str(out)]
    log = out / "bench.log"
    with log.open("w") as sink:
        try:
            code = subprocess.run(
                [*argv, *extra], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=140
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    assert code == 0, log.read_text()[-4000:]
    report: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert report["scenario"] == name and report["quick"] is True
    assert "error" not in report, report.get("error")
    assert report["table"] and report["machine"]["cpus"]
    for target in report["targets"]:
        assert set(target) >= {"target", "goal", "measured", "met"}
        assert isinstance(target["met"], bool)
    return report


@pytest.mark.timeout(150)
def test_throughput(tmp_path: Path) -> None:
    report = run_scenario("throughput", tmp_path)
    n = report["params"]["requests"]
    runs = report["measured"]["runs"]
    assert set(runs) == {"cardq", "bare", "ordered"}
    for run in runs.values():
        assert run["delivered"] == n
        assert run["cpu_s_per_1000"] > 0 and run["delivered_per_s"] > 0
    assert runs["cardq"]["results_by_status"] == {"delivered": n}
    assert runs["cardq"]["distinct_requests"] == n


@pytest.mark.timeout(150)
def test_head_of_line(tmp_path: Path) -> None:
    runs = run_scenario("head_of_line", tmp_path)["measured"]["runs"]
    cardq = runs["cardq"]
    assert cardq["quiet_delivered"] == cardq["quiet_total"] > 0
    assert cardq["flood_delivered"] == cardq["flood_total"] > 0
    assert cardq["throttle_answers"] == 0
    burst = runs["cardq_burst"]
    assert burst["quiet_delivered"] == burst["quiet_total"] == cardq["quiet_total"]
    ordered = runs["ordered"]
    assert ordered["quiet_total"] == cardq["quiet_total"]
    assert 0 <= ordered["quiet_delivered"] <= ordered["quiet_total"]


@pytest.mark.timeout(150)
def test_limit_fidelity(tmp_path: Path) -> None:
    data = run_scenario("limit_fidelity", tmp_path)["measured"]
    assert data["accepted_total"] == data["requests_total"] > 0
    assert len(data["bots"]) == 2


@pytest.mark.timeout(150)
def test_backlog_memory(tmp_path: Path) -> None:
    report = run_scenario("backlog_memory", tmp_path)
    data = report["measured"]
    assert data["queued"] == report["params"]["queued_requests"]
    assert data["peak_rss_mb"] > 0 and data["exit_code"] == 0


@pytest.mark.timeout(150)
def test_latency_under_load(tmp_path: Path) -> None:
    runs = run_scenario("latency_under_load", tmp_path, "--capacity", "200")["measured"]["runs"]
    assert set(runs) == {
        "broker_only_wait_500",
        "broker_only_wait_5",
        "cardq",
        "cardq_short_wait",
        "bare_short_wait",
    }
    for name, run in runs.items():
        assert run["measured"] == run["produced"] > 0, name
        if not name.startswith("broker"):
            assert run["accepted"] == run["produced"], name
    for name in ("cardq", "cardq_short_wait"):
        assert runs[name]["results_by_status"] == {"delivered": runs[name]["produced"]}


@pytest.mark.timeout(150)
def test_slow_platform(tmp_path: Path) -> None:
    report = run_scenario("slow_platform", tmp_path)
    data = report["measured"]
    assert data["queued"] == report["params"]["queued_requests"]
    assert data["delivered_during_run"] > 0 and data["exit_code"] == 0
    assert data["in_flight_peak"] > 0


@pytest.mark.timeout(150)
def test_scrub(tmp_path: Path) -> None:
    data = run_scenario("scrub", tmp_path)["measured"]
    assert data["remembered_values"] == 2000
    assert set(data["us_per_field"]) >= {"event", "error", "traceback"}
    assert all(us > 0 for us in data["us_per_field"].values())


@pytest.mark.timeout(150)
def test_soak(tmp_path: Path) -> None:
    report = run_scenario("soak", tmp_path, "--capacity", "100")
    data = report["measured"]
    assert report["params"]["minutes"] == 0.5
    assert data["produced"] > 0 and data["answered"] == data["produced"] and data["lost"] == 0
    assert data["exit_code"] == 0
    assert data["server_errors"] > 0 and data["token_requests"] >= 1
    events = [row["event"] for row in data["intervals"]]
    assert any("redis" in e for e in events) and any("worker restarted" in e for e in events)
    assert len(data["intervals"]) == 6
