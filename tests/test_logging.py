"""Library log lines (aiokafka, aiohttp, asyncio, redis log through the standard library)
come out as the worker's own JSON lines, scrubbed the same way.

The real-process test in test_observability.py cannot count on aiokafka writing a line (it
shuffles its bootstrap list), so this one writes the library's own words through its own
logger, deterministically, into the configured set-up.
"""

from __future__ import annotations

import logging

import orjson
import pytest

from cardq import secrets
from tests import helpers


@pytest.mark.parametrize("logger_name", ["aiokafka.consumer.group_coordinator", "asyncio"])
def test_a_library_warning_is_a_scrubbed_json_line(logger_name: str) -> None:
    token = "t-library-7f3a9c2d51"
    secrets.remember(token, ttl_s=60)
    with helpers.json_log("info") as buffer:
        logging.getLogger(logger_name).warning(
            "Heartbeat failed for group %s because it is rebalancing (token %s)", "g1", token
        )
        logging.getLogger(logger_name).info("below the libraries' level: not written")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1, lines
    event = orjson.loads(lines[0])
    assert event["logger"] == logger_name
    assert event["level"] == "warning"
    assert "timestamp" in event
    assert event["event"].startswith("Heartbeat failed for group g1 because it is rebalancing")
    assert token not in lines[0]


def test_a_library_exception_is_one_json_line_with_its_traceback() -> None:
    with helpers.json_log("info") as buffer:
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError:
            logging.getLogger("aiohttp.client").exception("Unclosed connection")
    (line,) = buffer.getvalue().splitlines()
    event = orjson.loads(line)
    assert event["event"] == "Unclosed connection"
    assert "ConnectionResetError: peer went away" in event["exception"]
