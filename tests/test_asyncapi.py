"""docs/asyncapi.yaml parses with the official AsyncAPI parser, payloads resolved from schemas/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.toolchains import ROOT, npm_install

FOLDER = ROOT / "tests" / "asyncapi"


def check(document: Path, schemas: Path) -> subprocess.CompletedProcess[str]:
    installed = npm_install(FOLDER, copy=("check.mjs",))
    return subprocess.run(
        ["node", str(installed / "check.mjs"), str(document), str(schemas)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(660)  # the first run installs the parser from npm
def test_asyncapi_document_parses_with_the_official_parser() -> None:
    done = check(ROOT / "docs" / "asyncapi.yaml", ROOT / "schemas")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith(("error", "warning"))], done.stdout
    assert (
        "OK asyncapi 3.0.0: channels requests=cardq.requests, results=cardq.results, "
        "deadLetters=cardq.dead-letters"
    ) in lines
    # The payloads are the contract's own schemas, followed down to the $id reference.
    assert (
        'message sendRequest: payload "cardq send request, contract v1" '
        "requires version,request_id,backend,bot" in lines
    )
    assert any(line.startswith('deadLetter result: "cardq result, contract v1"') for line in lines)


@pytest.mark.timeout(660)
def test_the_check_fails_on_a_document_with_a_broken_reference(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "docs").mkdir()
    text = (ROOT / "docs" / "asyncapi.yaml").read_text()
    broken = text.replace("../schemas/result.v1.json", "../schemas/result.v9.json")
    assert broken != text
    (tmp_path / "docs" / "asyncapi.yaml").write_text(broken)
    done = check(tmp_path / "docs" / "asyncapi.yaml", tmp_path / "schemas")
    assert done.returncode == 1
    assert "invalid-ref" in done.stdout and "FAILED" in done.stdout
