"""Smoke versions of the benchmarks (``make bench``): every scenario runs end to end with
tiny sizes (``--quick``) and writes a well-formed report in which every request is
accounted for. No timing is asserted: the numbers of a quick run mean nothing.

Every scenario on Tansu runs in one ``python -m bench`` process (``tansu_reports``), as
``make bench`` runs them, and each test checks its scenario's report: ten processes of
their own cost the suite ten interpreter starts and imports for nothing they check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.harness import kafka_missing
from bench.scenarios import LATENCY_RUNS

ROOT = Path(__file__).resolve().parent.parent
#: The soak's length here: five 5 s intervals, enough for its Redis restart (interval 1) and
#: its worker restart (interval 2) to fall in intervals of their own with one after them.
SOAK_MINUTES = 0.4
#: The whole Tansu run: the sum of its scenarios' quick runs (about 290 s on a loaded
#: 2-core machine) with room for a slower CI runner; a hang still ends it.
TANSU_RUN_TIMEOUT_S = 600
#: Whichever Tansu test runs first waits for the whole run (``-k`` may select any of them).
pytestmark = pytest.mark.timeout(TANSU_RUN_TIMEOUT_S + 30)


def run_bench(out: Path, scenarios: list[str], *extra: str, timeout: float) -> int:
    """Run the named scenarios in one bench process; its exit code (-1: timed out)."""
    argv = [sys.executable, "-m", "bench", "--quick", "--out", str(out), *extra]
    for name in scenarios:
        argv += ["--scenario", name]
    with (out / "bench.log").open("w") as sink:
        try:
            return subprocess.run(
                argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return -1


def log_tail(out: Path) -> str:
    return (out / "bench.log").read_text()[-4000:]


def read_report(out: Path, name: str, broker: str) -> dict[str, Any]:
    """The scenario's report on one broker, after checking the combined report's shape."""
    path = out / f"{name}.json"
    assert path.exists(), f"no report for {name}:\n{log_tail(out)}"
    combined: dict[str, Any] = json.loads(path.read_text())
    assert combined["scenario"] == name and combined["quick"] is True
    assert "error" not in combined, (combined.get("error"), log_tail(out))
    assert combined["table"] and combined["machine"]["cpus"]
    for target in combined["targets"]:
        assert set(target) >= {"broker", "target", "goal", "measured", "met", "judged"}
        assert isinstance(target["met"], bool) and isinstance(target["judged"], bool)
    assert broker in combined["brokers"], list(combined["brokers"])
    report: dict[str, Any] = combined["brokers"][broker]
    assert report["scenario"] == name and report["table"]
    assert any(t["broker"] == broker for t in combined["targets"])
    return report


@pytest.fixture(scope="module")
def tansu_reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Every scenario on Tansu (which needs no Java), with tiny sizes, in one bench process:
    the folder of its reports and its exit code. ``--capacity 100`` sets what the latency
    scenario and the soak halve (50 requests/s each)."""
    from bench.__main__ import SCENARIOS

    out = tmp_path_factory.mktemp("bench-tansu")
    code = run_bench(
        out,
        list(SCENARIOS),
        "--broker",
        "tansu",
        "--capacity",
        "100",
        "--soak-minutes",
        str(SOAK_MINUTES),
        timeout=TANSU_RUN_TIMEOUT_S,
    )
    return out, code


def run_scenario(name: str, reports: tuple[Path, int]) -> dict[str, Any]:
    """The scenario's report from the Tansu run."""
    return read_report(reports[0], name, "tansu")


def test_the_tansu_run_ends_well_and_sums_up_every_scenario(
    tansu_reports: tuple[Path, int],
) -> None:
    """Exit code 0 (no scenario ended in an error) and the run's summary names each one."""
    out, code = tansu_reports
    assert code == 0, log_tail(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True
    assert (out / "summary.md").read_text().startswith("cardq benchmarks (quick sizes")


def test_throughput(tansu_reports: tuple[Path, int]) -> None:
    check_throughput(run_scenario("throughput", tansu_reports))


def check_throughput(report: dict[str, Any]) -> None:
    n = report["params"]["requests"]
    runs = report["measured"]["runs"]
    assert set(runs) == {"cardq", "bare", "ordered"}
    for run in runs.values():
        assert run["delivered"] == n
        assert run["cpu_s_per_1000"] > 0 and run["delivered_per_s"] > 0
    assert runs["cardq"]["results_by_status"] == {"delivered": n}
    assert runs["cardq"]["distinct_requests"] == n


def test_head_of_line(tansu_reports: tuple[Path, int]) -> None:
    check_head_of_line(run_scenario("head_of_line", tansu_reports))


def check_head_of_line(report: dict[str, Any]) -> None:
    runs = report["measured"]["runs"]
    cardq = runs["cardq"]
    assert cardq["quiet_delivered"] == cardq["quiet_total"] > 0
    assert cardq["flood_delivered"] == cardq["flood_total"] > 0
    assert cardq["throttle_answers"] == 0
    burst = runs["cardq_burst"]
    assert burst["quiet_delivered"] == burst["quiet_total"] == cardq["quiet_total"]
    ordered = runs["ordered"]
    assert ordered["quiet_total"] == cardq["quiet_total"]
    assert ordered["flood_delivered"] + ordered["quiet_delivered"] > 0


def test_limit_fidelity(tansu_reports: tuple[Path, int]) -> None:
    data = run_scenario("limit_fidelity", tansu_reports)["measured"]
    assert data["accepted_total"] == data["requests_total"] > 0
    assert len(data["bots"]) == 2


def test_backlog_memory(tansu_reports: tuple[Path, int]) -> None:
    report = run_scenario("backlog_memory", tansu_reports)
    data = report["measured"]
    assert data["queued"] == report["params"]["queued_requests"]
    assert data["peak_rss_mb"] > 0 and data["exit_code"] == 0


def test_latency_under_load(tansu_reports: tuple[Path, int]) -> None:
    report = run_scenario("latency_under_load", tansu_reports)
    check_latency(report, "tansu")
    # On Tansu the latency target is reported, not judged: it is judged on Apache Kafka.
    assert not any(t["judged"] for t in report["targets"])


def check_latency(report: dict[str, Any], broker: str) -> None:
    runs = report["measured"]["runs"]
    assert set(runs) == set(LATENCY_RUNS[broker])
    for name, run in runs.items():
        assert run["measured"] == run["produced"] > 0, name
        if not name.startswith("broker"):
            assert run["accepted"] == run["produced"], name
        if name.startswith("cardq"):
            assert run["results_by_status"] == {"delivered": run["produced"]}, name
            assert set(run["stages_ms"]) == {"to_intake", "intake_to_send", "send"}


def test_slow_platform(tansu_reports: tuple[Path, int]) -> None:
    report = run_scenario("slow_platform", tansu_reports)
    data = report["measured"]
    assert data["queued"] == report["params"]["queued_requests"]
    assert data["delivered_during_run"] > 0 and data["exit_code"] == 0
    assert data["in_flight_peak"] > 0


def test_scrub(tansu_reports: tuple[Path, int]) -> None:
    data = run_scenario("scrub", tansu_reports)["measured"]
    assert data["remembered_values"] == 2000
    assert set(data["us_per_field"]) >= {"event", "error", "traceback"}
    assert all(us > 0 for us in data["us_per_field"].values())


def test_soak(tansu_reports: tuple[Path, int]) -> None:
    report = run_scenario("soak", tansu_reports)
    data = report["measured"]
    assert report["params"]["minutes"] == SOAK_MINUTES
    assert data["produced"] > 0 and data["answered"] == data["produced"] and data["lost"] == 0
    assert data["exit_code"] == 0
    assert data["server_errors"] > 0 and data["token_requests"] >= 1
    events = [row["event"] for row in data["intervals"]]
    assert any("redis" in e for e in events) and any("worker restarted" in e for e in events)
    assert len(data["intervals"]) == 5
    assert report["params"]["broker"] == "tansu"
    assert all("p99 to intake ms" in row for row in data["intervals"])


@pytest.mark.timeout(330)
def test_kafka_scenarios(tmp_path: Path) -> None:
    """The latency scenario on Apache Kafka at quick sizes: the one judged there, with its
    own runs (``LATENCY_RUNS["kafka"]``) and the broker's start time in the report.

    Throughput and head-of-line run on Tansu only here: their Kafka runs go through the
    same code with another bootstrap address (``Brokers.fresh``), which this run already
    covers, and took a minute of the suite. ``make bench`` runs them on both."""
    missing = kafka_missing()
    if missing is not None:
        pytest.skip(f"the benchmarks on Apache Kafka are skipped: {missing}")
    code = run_bench(
        tmp_path, ["latency_under_load"], "--broker", "kafka", "--capacity", "200", timeout=320
    )
    assert code == 0, log_tail(tmp_path)
    latency = read_report(tmp_path, "latency_under_load", "kafka")
    check_latency(latency, "kafka")
    assert all(t["judged"] for t in latency["targets"])
    assert "kafka_start_s" in json.loads((tmp_path / "latency_under_load.json").read_text())


def test_pool(tansu_reports: tuple[Path, int]) -> None:
    """Every run (Redis up, Redis stopped, static membership) ends with every record
    answered and every card delivered; with Redis up, also nothing failed, sent twice,
    answered twice or throttled. (The outage's counts are what the benchmark reports, not
    what this smoke run holds.)"""
    report = run_scenario("pool", tansu_reports)
    params = report["params"]
    produced = params["im_requests"] + params["webhook_requests"]
    runs = report["measured"]
    assert set(runs) == {"redis_up", "redis_outage", "static"}
    for label, data in runs.items():
        assert data["produced"] == produced, label
        assert data["records_unanswered"] == 0 and data["lost"] == 0, (label, data)
        assert data["im_sends"] >= params["im_requests"], label
        codes = {"w1": 0, "w2": -9, "w3": 0, "w2b": 0}
        if label == "static":
            codes["w1b"] = 0  # the SIGTERMed pod, back under its instance id
        assert data["exit_codes"] == codes, (label, data)
        events = [name for name, _ in data["events"]]
        assert {"w3 ready", "w1 exited", "w2 SIGKILL", "w2b (restarted) ready"} <= set(events)
    assert any(name == "redis started" for name, _ in runs["redis_outage"]["events"])
    assert "w1b (restarted as w1) ready" in [name for name, _ in runs["static"]["events"]]
    up = runs["redis_up"]
    assert up["failed"] == up["sent_twice"] == up["records_answered_twice"] == 0, up
    assert up["throttle_answers"] == 0, up
    assert up["statuses"] == {"delivered": produced}, up
    assert len(report["targets"]) == 15


def test_storm(tansu_reports: tuple[Path, int]) -> None:
    """The three runs (plain; digest and lifecycle; the same with 2% urgent) answer every
    event, and every group's chat ends up showing each of its alerts resolved. Until the
    contract lists the new fields, the second and third runs are plain ones and their
    targets are reported, not judged."""
    report = run_scenario("storm", tansu_reports)
    params = report["params"]
    runs = report["measured"]
    assert set(runs) == {"plain", "digest_lifecycle", "urgent_fits"}
    for label, data in runs.items():
        assert data["produced"] == data["events"] == params["events"], label
        assert data["without_result"] == 0 and data["groups_never_settled"] == 0, (label, data)
        assert data["groups"] == params["groups"] and data["exit_code"] == 0, (label, data)
        assert data["platform_calls"] > 0 and data["urgent_events"] > 0, label
    plain = runs["plain"]
    assert plain["platform_calls_by_operation"] == {"send": params["events"]}, plain
    assert plain["results_by_status"] == {"delivered": params["events"]}, plain
    judged = {t["target"]: t["judged"] for t in report["targets"]}
    assert judged["storm: events without a result"]
    assert judged["storm: platform calls ÷ events"] == (not params["fields_not_in_contract_yet"])
