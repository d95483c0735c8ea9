"""Shared fixtures: a real Tansu broker, real Redis (own key prefix), the simulator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests import helpers
from worker.backends.transport import AiohttpTransport
from worker.simulator import Simulator
from worker.testing import TansuBroker

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def broker() -> AsyncIterator[TansuBroker]:
    async with TansuBroker() as running:
        yield running


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of our own; only keys under it are deleted afterwards."""
    prefix = f"cardq-test:{uuid.uuid4().hex}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


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
