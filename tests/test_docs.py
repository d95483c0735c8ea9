"""The README is the configuration and metrics reference: keep it complete."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from cardq import config
from cardq.metrics import Metrics
from tests.helpers import found

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _keys(cls: type, prefix: str) -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind) and kind is not config.SecretRef:
            out += _keys(kind, f"{prefix}{field.name}.")  # type: ignore[arg-type]
        else:
            out.append(prefix + field.name)
    return out


def test_every_configuration_key_is_documented() -> None:
    keys = _keys(config.Settings, "") + _keys(config.BotSettings, "bots.NAME.")
    keys.remove("bots")
    # The full dotted key, quoted: a bare last part (``timeout_s``, ``enabled``) is in the
    # README many times over, so it would pass a new key nobody documented.
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing, f"README.md does not document {missing}"


def test_every_metric_is_documented() -> None:
    names = {m.name for m in Metrics().registry.collect()}
    documented = set(re.findall(r"`(cardq_[a-z_]+)", README))
    missing = {n for n in names if n not in documented and f"{n}_total" not in documented}
    assert not missing


def test_alert_runbook_anchors_exist() -> None:
    rules = (Path(__file__).parent.parent / "helm/cardq/templates/prometheusrule.yaml").read_text()
    for alert in re.findall(r"alert: (\w+)", rules):
        assert f"#### Alert: {alert}" in README, alert


# --------------------------------------------------------------------------- what docs cite

ROOT = Path(__file__).parent.parent
#: The project's own documentation: everything these cite must be in the repository.
DOCS = [
    ROOT / "README.md",
    *found(ROOT / "docs", "*.md"),
    ROOT / "helm/cardq/README.md",
    ROOT / "schemas/README.md",
    ROOT / "bench/README.md",
    ROOT / "worker/cardq/samples/README.md",
    ROOT / "worker/cardq/simulator/README.md",
]
TOP_LEVEL = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}


def _cited_paths(doc: Path) -> list[tuple[str, Path]]:
    """Markdown links (relative to the document) and `code` spans naming a repository path
    (relative to the root, or to the document); globs and placeholders are skipped."""
    text = doc.read_text(encoding="utf-8")
    cited = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        target = target.split("#")[0]
        if target and not re.match(r"[a-z][a-z0-9+.-]*:", target):
            cited.append((target, doc.parent / target))
    for span in re.findall(r"`([^`\s]+)`", text):
        first = span.split("/")[0]
        if "/" not in span or any(c in span for c in "*<>{}…$"):
            continue
        if first in TOP_LEVEL:
            # `examples/…` in schemas/README.md means schemas/examples/, not the top-level
            # examples/ folder: a span the document's own folder holds counts as that.
            path = span.split("#")[0].split(":")[0]
            local = doc.parent / path
            cited.append((span, local if local.exists() else ROOT / path))
        elif first == "..":
            cited.append((span, doc.parent / span))
    return cited


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_cited_path_exists(doc: Path) -> None:
    missing = [shown for shown, path in _cited_paths(doc) if not path.exists()]
    assert not missing, f"{doc.relative_to(ROOT)} cites what the repository lacks: {missing}"
    # and nothing outside it: the repository must stand on its own
    for path in (p for _, p in _cited_paths(doc)):
        assert path.resolve().is_relative_to(ROOT), path


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_no_document_points_outside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for phrase in ("../shared", "shared/docs", "shared/seeds", "seed documents"):
        assert phrase not in text, f"{doc.relative_to(ROOT)} mentions {phrase!r}"


def test_the_path_check_catches_a_missing_file(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "see [facts](../shared/docs/facts.md) and `worker/nope.py`, `worker/cardq/cli.py`"
    )
    shown = [s for s, p in _cited_paths(doc) if not p.exists()]
    assert shown == ["../shared/docs/facts.md", "worker/nope.py"]


def test_readme_make_run_output_matches_the_samples() -> None:
    """The sample output's counts are what `cardq dev` produces from the packaged samples:
    the first pass, then the follow-ups with the two demonstrations."""
    from cardq.devtools.dev import packaged_samples

    first = len(list(packaged_samples().glob("*.json")))
    followups = len(list((packaged_samples() / "followups").glob("*.json")))
    produced = [int(n) for n in re.findall(r"^produced +(\d+) requests", README, re.M)]
    assert produced == [first, followups + 2]
    (summary,) = re.findall(
        r"^summary +(\d+) results, (\d+) delivered, (\d+) accepted", README, re.M
    )
    assert tuple(map(int, summary)) == (first + followups + 2, first + followups, first + followups)


def _options(command: str) -> set[str]:
    from cardq.cli import _parser
    from cardq.simulator.cli import parser as simulator_parser

    parser = _parser()
    if command == "simulate":
        sub = simulator_parser()
    else:
        (subs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub = subs.choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def test_every_cardq_option_the_readme_shows_exists() -> None:
    shown = re.findall(r"cardq (run|dev|send|validate|simulate)\b([^`\n]*)", README)
    assert len(shown) > 10
    for command, rest in shown:
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert option in _options(command), f"README: cardq {command} {option}"


def test_the_largest_dead_letter_fits_the_topic_size_the_readme_recommends() -> None:
    """README, "Create the topics": a dead letter always fits Kafka's default 1 MiB."""
    from datetime import UTC, datetime

    from cardq.config import DeliverySettings
    from cardq.models import ErrorInfo, ErrorKind, Result, Source, Status, encode_dead_letter

    kafka_default_max_message_bytes = 1_048_588
    original = b"x" * DeliverySettings().max_record_bytes
    now = datetime.now(UTC)
    long = "r" * 256
    result = Result(
        status=Status.REJECTED,
        source=Source("cardq.requests", 11, 2**40, 1_700_000_000_000, b"k" * 1024),
        worker_id=long, received_at=now, finished_at=now, request_id=long,
        idempotency_key=long, backend=long, bot=long, operation=long, destination=long * 4,
        error=ErrorInfo(ErrorKind.INVALID, "record_too_large", "m" * 1000, field="$"),
    )  # fmt: skip
    assert len(encode_dead_letter(original, result)) < kafka_default_max_message_bytes
    assert "fits Kafka's default 1 MiB `max.message.bytes`" in README
