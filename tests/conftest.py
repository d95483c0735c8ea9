"""Shared fixtures: a real Tansu broker, real Redis (own server, own key prefix), the simulator.

Redis: ``CARDQ_TEST_REDIS_URL`` when given, else a ``redis-server`` this session starts on a
free port and stops at the end. No test depends on a server at a fixed address.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests import helpers
from worker.backends.transport import AiohttpTransport
from worker.devtools.redis_server import RedisServer, RedisUnavailable
from worker.simulator import Simulator
from worker.testing import TansuBroker

# The "image test: ..." line of the terminal summary (tests/image_summary.py).
pytest_plugins = ["tests.image_summary"]


@pytest.fixture
async def broker() -> AsyncIterator[TansuBroker]:
    async with TansuBroker() as running:
        yield running


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The session's Redis: the one ``CARDQ_TEST_REDIS_URL`` names, or one started here."""
    given = os.environ.get("CARDQ_TEST_REDIS_URL")
    if given:
        yield given
        return
    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        pytest.skip(f"Redis tests skipped: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of our own; only keys under it are deleted afterwards.

    Synchronous on purpose: an async fixture cannot be asked for by ``getfixturevalue``
    from inside another one, and the store fixtures ask for Redis only when they need it.
    """
    prefix = f"cardq-test:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The simulator over real HTTP, knowing the credentials of ``helpers.config_dict``."""
    async with Simulator() as simulator:
        helpers.register(simulator)
        yield simulator


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    """The worker's real HTTP transport, closed after the test."""
    client = AiohttpTransport()
    yield client
    await client.aclose()
