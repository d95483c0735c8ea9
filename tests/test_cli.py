"""The command line as a user meets it: real processes, real broker, real simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers
from worker.cli import main
from worker.config import Topics
from worker.simulator import Simulator
from worker.testing import TansuBroker, running_worker

ROOT = Path(__file__).parent.parent
INVALID = sorted((ROOT / "schemas/examples/invalid").glob("*.json"))
EXPECTED = json.loads((ROOT / "schemas/examples/expected-errors.json").read_text())


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_validate_prints_the_field_path_and_fails(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"invalid: {EXPECTED[path.name]['field']}: " in out


def test_validate_accepts_the_valid_examples(capsys: pytest.CaptureFixture[str]) -> None:
    valid = sorted(str(p) for p in (ROOT / "schemas/examples/valid").glob("*.json"))
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
    assert main(["run", "--config", str(config), "--check"]) == 0
    out = capsys.readouterr().out
    assert "kafka: broker:9092" in out and "bot hook: feishu_webhook" in out


def test_dev_once_delivers_every_sample() -> None:
    """The README's first command, as a process."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "dev", "--once", "--timeout", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "0 not as expected" in done.stdout
    delivered = [line for line in done.stdout.splitlines() if "✓ delivered" in line]
    for backend in ("feishu_webhook", "feishu_message", "feishu_ephemeral", "mindoffice_group"):
        assert any(f" {backend}/" in line for line in delivered), backend


async def test_send_waits_for_its_result(broker: TansuBroker, tmp_path: Path) -> None:
    topics = Topics()
    await broker.create_topics([topics.requests, topics.results, topics.dead_letters])
    async with Simulator() as sim:
        helpers.register(sim)
        config = helpers.write_config(tmp_path / "c.yaml", broker.bootstrap_servers, sim.base_url)
        request = tmp_path / "req.json"
        request.write_text(json.dumps(helpers.mind("via-cli", "g1")))
        async with running_worker(helpers.settings(broker.bootstrap_servers, sim.base_url)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "send", str(request),
                "--config", str(config), "--wait", "20",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "sent via-cli to cardq.requests" in text
    assert '"status": "delivered"' in text
