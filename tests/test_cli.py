"""The command line as a user meets it: real processes, real broker, real simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cardq.cli import _parser, main
from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import TansuBroker, free_port, running_worker
from tests import helpers

ROOT = Path(__file__).parent.parent
INVALID = helpers.found(ROOT / "schemas/examples/invalid")
EXPECTED = json.loads((ROOT / "schemas/examples/expected-errors.json").read_text())


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_validate_prints_the_field_path_and_fails(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"invalid: {EXPECTED[path.name]['field']}: " in out


def test_validate_accepts_the_valid_examples(capsys: pytest.CaptureFixture[str]) -> None:
    valid = [str(p) for p in helpers.found(ROOT / "schemas/examples/valid")]
    assert main(["validate", *valid]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(valid)


def test_bad_configuration_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("delivery:\n  max_attempts: many\n")
    assert main(["run", "--config", str(config), "--check"]) == 2
    assert "delivery.max_attempts: must be an integer" in capsys.readouterr().err


def test_run_check_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = helpers.write_config(tmp_path / "ok.yaml", "broker:9092", "http://sim")
    assert main(["run", "--config", str(config), "--check"], env=helpers.CREDENTIALS) == 0
    out = capsys.readouterr().out
    assert "kafka: broker:9092" in out and "bot hook: feishu_webhook" in out


def test_dev_once_delivers_every_sample() -> None:
    """The README's first command, as a process."""
    done = subprocess.run(
        [sys.executable, "-m", "cardq", "dev", "--once", "--timeout", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "0 not as expected" in done.stdout
    delivered = [line for line in done.stdout.splitlines() if "✓ delivered" in line]
    for backend in ("feishu_webhook", "feishu_message", "feishu_ephemeral", "mindoffice_group"):
        assert any(f" {backend}/" in line for line in delivered), backend
    (rejected,) = [line for line in done.stdout.splitlines() if "✗ rejected" in line]
    assert "demo-typo-expect-rejected  feishu_message/ops-app/(no destination)" in rejected
    assert "None" not in done.stdout


def test_dev_prints_what_it_knows_of_a_rejected_destination() -> None:
    from cardq.devtools.dev import _destination_text

    assert _destination_text({"destination": "mindoffice_group/mind/group:g1"}) == (
        "mindoffice_group/mind/group:g1"
    )
    assert _destination_text({"destination": None, "backend": "feishu_message", "bot": "x"}) == (
        "feishu_message/x/(no destination)"
    )
    assert _destination_text({"destination": None, "backend": None}) == "(no destination)"


def test_the_expected_status_rule_of_samples_is_documented() -> None:
    from cardq.devtools.dev import EXPECTABLE_STATUSES, _expected

    readme = (ROOT / "worker/cardq/samples/README.md").read_text(encoding="utf-8")
    assert "`expect-STATUS`" in readme
    for status in EXPECTABLE_STATUSES:
        assert f"`{status}`" in readme
        assert _expected(json.dumps({"request_id": f"x-expect-{status}"}).encode()) == status
    assert _expected(b'{"request_id": "sample-01"}') == "delivered"


@contextlib.asynccontextmanager
async def sending(
    broker: TansuBroker, tmp_path: Path, request_id: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Simulator]]:
    """``cardq send REQUEST --wait 20`` as a process, with a worker and the simulator
    answering it."""
    topics = Topics()
    await broker.create_topics([topics.requests, topics.results, topics.dead_letters])
    async with Simulator() as sim:
        helpers.register(sim)
        config = helpers.write_config(tmp_path / "c.yaml", broker.bootstrap_servers, sim.base_url)
        request = tmp_path / "req.json"
        request.write_text(json.dumps(helpers.mind(request_id, "g1")))
        async with running_worker(helpers.settings(broker.bootstrap_servers, sim.base_url)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cardq", "send", str(request),
                "--config", str(config), "--wait", "20",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            yield proc, sim


async def test_send_waits_for_its_result(broker: TansuBroker, tmp_path: Path) -> None:
    async with sending(broker, tmp_path, "via-cli") as (proc, _):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "sent via-cli to cardq.requests" in text
    assert '"status": "delivered"' in text


# --------------------------------------------------------------------------- every command


def _commands() -> list[str]:
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


def test_the_command_list_is_complete() -> None:
    assert _commands() == ["dev", "replay", "results", "run", "send", "simulate", "validate"]


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cardq", command, "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: cardq {command}")
    assert done.stderr == ""


def test_simulate_takes_its_options() -> None:
    """`cardq simulate --port 0 …` serves until SIGTERM, then exits 0."""
    with subprocess.Popen(
        [sys.executable, "-m", "cardq", "simulate", "--port", "0", "--summary-every", "0",
         "--no-limits"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("cardq simulator listening on http://127.0.0.1:"), first
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()


def test_simulate_refuses_a_bad_option_as_usage() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["simulate", "--port", "eighty"])
    assert caught.value.code == 2


# --------------------------------------------------------------------------- run --check


def _without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in helpers.CREDENTIALS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("check", [True, False], ids=["run --check", "run"])
def test_run_and_check_both_refuse_an_unset_credential(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    check: bool,
) -> None:
    """The README's example of a caught error: `--check` passes nothing `run` refuses."""
    config = helpers.write_config(tmp_path / "c.yaml", "127.0.0.1:1", "http://127.0.0.1:1")
    _without_credentials(monkeypatch)
    argv = ["run", "--config", str(config), "--loop", "asyncio"] + (["--check"] if check else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bots.app.credentials.app_secret: environment variable T_APP_SECRET is not set" in err


def test_run_check_without_any_configuration_refuses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("CARDQ_"):
            monkeypatch.delenv(name)
    assert main(["run", "--check"]) == 2
    captured = capsys.readouterr()
    assert "no configuration: give --config FILE or set CARDQ_CONFIG" in captured.err
    assert captured.out == ""


def test_run_check_on_environment_only_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--check"], env={"CARDQ_KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9092"}) == 0
    out = capsys.readouterr().out
    assert "configuration: no file (built-in defaults) + environment: " in out
    assert "CARDQ_KAFKA__BOOTSTRAP_SERVERS" in out
    assert "kafka: kafka-1:9092" in out
    assert "bots: none configured: every request would be rejected (unknown_bot)" in out


def test_run_check_summary_covers_delivery_http_and_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = helpers.write_config(
        tmp_path / "ok.yaml", "broker:9092", "http://sim",
        http={"timeout_s": 4}, delivery={"max_attempts": 5},
    )  # fmt: skip
    data = yaml.safe_load(config.read_text())
    data["bots"]["app"]["limits"] = {"destination": [{"limit": 3, "seconds": 1}], "app": []}
    data["bots"]["app"]["timeout_s"] = 2.5
    config.write_text(yaml.safe_dump(data))
    assert main(["run", "--config", str(config), "--check"], env=helpers.CREDENTIALS) == 0
    out = capsys.readouterr().out
    assert f"configuration: {config}" in out
    assert "delivery: max_in_flight=512 " in out and " max_attempts=5 " in out
    assert "http: timeout_s=4 max_connections=512" in out
    assert "idempotency: store=memory " in out
    assert "bot app: feishu_message http://sim app_id=cli_test_app timeout_s=2.5" in out
    assert "limits.destination=3/1s limits.app=none" in out
    assert "credentials: 5 read (" in out
    for secret in helpers.CREDENTIALS.values():
        assert secret not in out


# --------------------------------------------------------------------------- send, validate


def test_send_a_missing_file_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cardq", "send", "nope.json", "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "cardq send: cannot read nope.json (No such file or directory)\n"


@pytest.mark.parametrize("wait", ["0", "-1", "soon"])
def test_send_refuses_a_wait_that_is_not_positive(
    wait: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["send", "req.json", "--wait", wait])
    assert caught.value.code == 2
    assert "argument --wait:" in capsys.readouterr().err


def _request_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "req.json"
    path.write_text(json.dumps({**helpers.mind("r1", "g1"), **changes}))
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"bot": "nobody"},
            "bot: no bot named 'nobody' is configured in this worker [unknown_bot]",
        ),
        (
            {"bot": "hook"},
            "backend: bot 'hook' is a feishu_webhook bot, not mindoffice_group [backend_mismatch]",
        ),
    ],
)
def test_send_and_validate_check_the_bot_as_the_worker_does(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    expected: str,
) -> None:
    config = helpers.write_config(tmp_path / "c.yaml", "127.0.0.1:1", "http://sim")
    request = _request_file(tmp_path, **changes)
    assert main(["validate", str(request), "--config", str(config)]) == 1
    assert f"invalid: {expected}" in capsys.readouterr().out
    # Checked before any connection: the broker address is a closed port.
    assert main(["send", str(request), "--config", str(config)]) == 1
    assert f"invalid: {expected}" in capsys.readouterr().err


def test_validate_with_a_config_applies_its_record_size_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate --config` reads a request as that worker would: its size limit too."""
    config = helpers.write_config(
        tmp_path / "c.yaml", "127.0.0.1:1", "http://sim", delivery={"max_record_bytes": 1024}
    )
    request = _request_file(tmp_path, content={"text": "x" * 2000})
    assert main(["validate", str(request)]) == 0  # the contract alone allows it
    capsys.readouterr()
    assert main(["validate", str(request), "--config", str(config)]) == 1
    assert "[record_too_large]" in capsys.readouterr().out


def test_validate_reports_the_worker_code_for_an_unknown_bot(tmp_path: Path) -> None:
    """The same request, rejected by a running worker and by `validate`: the same code."""
    from cardq.validation import ValidationError, check_bot, decode

    request = decode(_request_file(tmp_path, bot="nobody").read_bytes())
    with pytest.raises(ValidationError) as caught:
        check_bot(request, None)
    assert caught.value.code == "unknown_bot"


async def test_send_into_a_closed_pipe_exits_quietly(broker: TansuBroker, tmp_path: Path) -> None:
    """`cardq send … --wait | head -1`: the reader leaves after the first line."""
    async with sending(broker, tmp_path, "via-pipe") as (proc, sim):
        assert proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert first.startswith(b"sent via-pipe to cardq.requests")
        # Like `head -1`: close the read end, so the result has nowhere to go.
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()
        err = await asyncio.wait_for(proc.stderr.read(), 30)
        code = await proc.wait()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert err == b""
    assert code == 1  # the output was cut short (README, "Command line")
    assert sim.accepted


# --------------------------------------------------------------------------- signals


async def test_sigterm_while_joining_the_group_ends_the_worker_at_once(
    broker: TansuBroker, tmp_path: Path
) -> None:
    """With the default session timeout Tansu holds the first JoinGroup for ~23 s; a worker
    told to stop meanwhile has nothing to drain and must not wait for that answer."""
    topics = Topics()
    await broker.create_topics([topics.requests, topics.results, topics.dead_letters])
    config = helpers.write_config(
        tmp_path / "c.yaml", broker.bootstrap_servers, "http://127.0.0.1:1",
        kafka={"session_timeout_ms": 45_000, "heartbeat_interval_ms": 3_000},
        observability={"log_level": "info", "log_format": "json"},
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *helpers.worker_command(config),
        env={**os.environ, **helpers.CREDENTIALS},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while not any(e.get("event") == "joining_group" for e in events):
                line = await proc.stderr.readline()
                assert line, "the worker exited before joining"
                if line.startswith(b"{"):
                    events.append(json.loads(line))
        joining = events[-1]
        assert joining["group"] == "cardq-test"
        assert joining["bootstrap_servers"] == broker.bootstrap_servers
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 15)
        code = await asyncio.wait_for(proc.wait(), 5)
        took = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events += [json.loads(line) for line in rest.splitlines() if line.startswith(b"{")]
    names = [e["event"] for e in events]
    assert "partitions_assigned" not in names, "the join finished first: nothing was tested"
    assert names[-1] == "worker_stopped"
    assert code == 0  # README, "Shutdown"
    assert took < 5, f"SIGTERM during the join took {took:.1f} s"
    assert b"Traceback" not in rest and b"Error sending JoinGroup" not in rest, rest.decode()


async def test_a_slow_join_is_reported_until_it_ends(
    broker: TansuBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`still_joining_group` lines while the broker holds the join, then a prompt stop."""
    from structlog.testing import capture_logs

    from cardq import consumer

    monkeypatch.setattr(consumer, "JOIN_NOTE_EVERY_S", 0.2)
    topics = Topics()
    await broker.create_topics([topics.requests, topics.results, topics.dead_letters])
    settings = helpers.settings(
        broker.bootstrap_servers, "http://127.0.0.1:1",
        kafka={"session_timeout_ms": 45_000, "heartbeat_interval_ms": 3_000},
    )  # fmt: skip
    worker = consumer.Worker(settings, serve_health=False)
    with capture_logs() as logs:
        task = asyncio.create_task(worker.run())
        try:

            def noted_twice() -> bool:
                assert not task.done(), [e["event"] for e in logs]
                return sum(e["event"] == "still_joining_group" for e in logs) >= 2

            await helpers.until(noted_twice, "two still_joining_group notes", 15)
        finally:
            worker.stop()
            stopping = time.monotonic()
            await asyncio.wait_for(task, 10)
    assert time.monotonic() - stopping < 3
    notes = [e for e in logs if e["event"] == "still_joining_group"]
    assert notes[0]["group"] == "cardq-test"
    assert notes[0]["bootstrap_servers"] == broker.bootstrap_servers
    assert 0 < notes[0]["waited_s"] < notes[1]["waited_s"]
    events = [e["event"] for e in logs]
    assert "partitions_assigned" not in events
    assert events.index("joining_group") < events.index("still_joining_group")
    assert events[-1] == "worker_stopped"


@pytest.mark.parametrize("how", ["run", "send", "send --bootstrap-servers"])
def test_no_broker_at_the_address_is_one_line_and_exit_2(how: str, tmp_path: Path) -> None:
    """Nothing listens at the address: one line naming the key (or the flag) and the
    address, exit 2, quickly; no aiokafka traceback, no unclosed-client warning."""
    address = f"127.0.0.1:{free_port()}"
    config = helpers.write_config(tmp_path / "c.yaml", address, "http://127.0.0.1:9")
    request = tmp_path / "req.json"
    request.write_text(json.dumps(helpers.hook("nobody-home")))
    command, key = {
        "run": (helpers.worker_command(config), "kafka.bootstrap_servers"),
        "send": (
            [sys.executable, "-m", "cardq", "send", str(request), "--config", str(config)],
            "kafka.bootstrap_servers",
        ),
        "send --bootstrap-servers": (
            [sys.executable, "-m", "cardq", "send", str(request), "--config", str(config),
             "--bootstrap-servers", address],
            "--bootstrap-servers",
        ),
    }[how]  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **helpers.CREDENTIALS, "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    took = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"configuration error at {key}: no Kafka broker answers at {address}" in done.stderr
    assert "connection refused" in done.stderr
    assert "Traceback" not in output and "Unclosed" not in output, output
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    # The check gives up after its own 5 s; the bound leaves room for a loaded machine, where
    # the interpreter alone can take 20 s to start, and still fails a run that hangs.
    assert took < 45, f"took {took:.1f} s to say so"
