"""The pieces of ``cardq replay``/``results`` that need no broker: times, filters, decoding."""

from __future__ import annotations

import base64
import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cardq.config import ConfigError
from cardq.replay import Filters, Progress, bar, candidate
from cardq.results_cli import ResultFilters, human
from cardq.topic_reader import parse_time

EXAMPLES = Path(__file__).parent.parent / "schemas" / "examples" / "results"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def letter(name: str = "dead-letter-failed-throttled.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", datetime(2026, 12, 1, 11, 30, tzinfo=UTC)),
        ("2h", datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
        ("1d", datetime(2026, 11, 30, 12, 0, tzinfo=UTC)),
        ("2026-12-01T09:30:00Z", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
        ("2026-12-01T17:30:00+08:00", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
    ],
)
def test_times_are_durations_ago_or_iso_with_an_offset(text: str, expected: datetime) -> None:
    assert parse_time(text, "--since", now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-12-01T09:30:00", "5 weeks"])
def test_a_time_that_cannot_be_read_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_time(text, "--until", now=NOW)
    assert "--until" in str(caught.value)


def test_reasons_match_kind_code_or_platform_code_and_filters_combine() -> None:
    dead = letter()  # failed / throttled / retries_exhausted / 99991400, bot ops-app
    at = 1_000
    assert Filters(reasons=frozenset({"throttled"})).matches_letter(dead, at)
    assert Filters(reasons=frozenset({"retries_exhausted"})).matches_letter(dead, at)
    assert Filters(reasons=frozenset({"99991400"})).matches_letter(dead, at)
    assert not Filters(reasons=frozenset({"rejected"})).matches_letter(dead, at)
    both = Filters(reasons=frozenset({"throttled"}), bots=frozenset({"other-bot"}))
    assert not both.matches_letter(dead, at)
    assert Filters(since_ms=1_000, until_ms=1_001).matches_letter(dead, at)
    assert not Filters(until_ms=1_000).matches_letter(dead, at)
    assert Filters().empty and not Filters(until_ms=5).empty


def test_a_candidate_carries_the_original_bytes_key_and_origin() -> None:
    dead = letter()
    found = candidate(dead, 1_746_091_841_000)
    assert found.value == base64.b64decode(dead["original"]["value_b64"])
    assert found.key == base64.b64decode(dead["original"]["key_b64"])
    assert found.origin == "cardq.requests/3/1042"
    assert found.reason == "failed/throttled/retries_exhausted/99991400"
    assert "order-42-shipped" in found.describe() and not found.truncated


def test_an_unreadable_original_is_replayable_by_position_and_a_truncated_one_is_not() -> None:
    unreadable = candidate(letter("dead-letter-unreadable.json"), 0)
    assert unreadable.request_id is None and unreadable.identity == unreadable.origin
    big = copy.deepcopy(letter())
    big["original"]["truncated"] = True
    assert "cannot replay" in candidate(big, 0).describe()


def test_the_bar_fills_with_what_was_sent() -> None:
    assert bar(0, 4, width=8) == "[........]"
    assert bar(3, 4, width=8) == "[######..]"
    assert bar(4, 4, width=8) == "[########]"


def test_progress_is_one_final_line_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    progress.update("replay: sent 1/2")
    progress.update("replay: sent 2/2", final=True)
    assert stream.getvalue() == "replay: sent 2/2\n"


def test_results_filters_and_the_readable_line() -> None:
    failed = letter()["result"]
    assert ResultFilters(statuses=frozenset({"failed"}), bots=frozenset({"ops-app"})).matches(
        failed
    )
    assert not ResultFilters(request_ids=frozenset({"other"})).matches(failed)
    line = human(failed)
    assert "✗ failed" in line and "order-42-shipped" in line
    assert "error=throttled/retries_exhausted platform=99991400" in line
    assert line.endswith("@cardq.requests/3/1042")


def test_a_superseded_result_names_what_replaced_it() -> None:
    example = Path(__file__).parent.parent / "schemas/examples/results/result-v2-superseded.json"
    line = human(json.loads(example.read_text()))
    assert "» superseded" in line and "superseded_by=alert-7f3a-resolved" in line
