"""The samples ``cardq dev`` produces (``worker/cardq/samples``) are valid requests, named as
documented.

``worker/cardq/samples/*.json`` are sent first, in file order;
``worker/cardq/samples/followups/*.json`` then act on messages those created: a follow-up's
``target.message_id`` holds the ``request_id`` of an earlier sample, which the dev runner
replaces with that sample's result ``message_id`` (see ``worker/cardq/samples/README.md``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from cardq import validation
from cardq.backends import REGISTRY
from tests.helpers import found

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "worker" / "cardq" / "samples"
FIRST = found(SAMPLES)
FOLLOWUPS = found(SAMPLES / "followups")
ALL = FIRST + FOLLOWUPS
SCHEMA = json.loads((ROOT / "schemas" / "send-request.v1.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())
NAME = re.compile(r"(?P<num>[0-9]{2})-(?P<backend>[a-z_]+)-(?P<what>[a-z0-9-]+)\.json")
BOTS = {
    "feishu_webhook": "alerts-webhook",
    "feishu_message": "ops-app",
    "feishu_ephemeral": "ops-ephemeral",
    "mindoffice_group": "mind-robot",
}


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def rel(path: Path) -> str:
    return str(path.relative_to(SAMPLES))


@pytest.mark.parametrize("path", ALL, ids=[rel(p) for p in ALL])
def test_sample_passes_worker_and_schema(path: Path) -> None:
    data = load(path)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(data)]
    assert errors == []
    request = validation.from_dict(data)
    assert request.bot == BOTS[request.backend]


@pytest.mark.parametrize("path", ALL, ids=[rel(p) for p in ALL])
def test_sample_is_named_after_its_request(path: Path) -> None:
    match = NAME.fullmatch(path.name)
    assert match, f"{path.name} is not NN-<backend>-<what>.json"
    data = load(path)
    assert match["backend"] in tuple(REGISTRY)
    assert data["backend"] == match["backend"]
    assert data["request_id"] == f"sample-{path.stem}"


def test_samples_are_numbered_once_and_followups_come_last() -> None:
    numbers = [int(p.name[:2]) for p in ALL]
    assert len(set(numbers)) == len(numbers)
    assert max(int(p.name[:2]) for p in FIRST) < min(int(p.name[:2]) for p in FOLLOWUPS)


def test_every_seed_and_backend_has_samples() -> None:
    names = " ".join(p.name for p in FIRST)
    for seed in ("seed000", "seed001", "seed002", "seed003", "seed004"):
        assert seed in names
    assert {load(p)["backend"] for p in FIRST} == set(tuple(REGISTRY))
    assert len(FIRST) >= 25


def test_first_pass_samples_need_no_earlier_result() -> None:
    for path in FIRST:
        data = load(path)
        assert data.get("operation", "send") == "send", path.name
        assert "message_id" not in data.get("target", {}), path.name


@pytest.mark.parametrize("path", FOLLOWUPS, ids=[rel(p) for p in FOLLOWUPS])
def test_followup_names_an_earlier_sample_of_its_backend(path: Path) -> None:
    data = load(path)
    assert data["operation"] in ("reply", "update", "delete")
    by_id = {load(p)["request_id"]: load(p) for p in FIRST}
    origin = by_id.get(data["target"]["message_id"])
    assert origin is not None, "target.message_id must be the request_id of a first-pass sample"
    assert origin["backend"] == data["backend"]
    assert origin["bot"] == data["bot"]
    if data["operation"] == "update":
        # Only a shared card can be updated: the original must be a card with update_multi.
        assert origin["msg_type"] == "interactive"
        assert origin["content"]["config"]["update_multi"] is True
