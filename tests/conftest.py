"""Shared fixtures: real brokers, real Redis (own server, own key prefix), the simulator.

Brokers: ``broker`` is a fresh Tansu per test; in modules marked ``both_brokers`` it is
parametrised over ``tansu`` and ``kafka``, the latter an Apache Kafka started once per session
(only when a selected test needs it) and shared, each test with its own topics and group
(see tests/brokers.py). Where Java or Maven is missing the ``kafka`` tests skip, with the
reason printed once in the summary.

Redis: ``CARDQ_TEST_REDIS_URL`` when given, else a ``redis-server`` this session starts on a
free port and stops at the end. No test depends on a server at a fixed address.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from cardq.backends.transport import AiohttpTransport
from cardq.devtools.kafka import KafkaBroker
from cardq.devtools.redis_server import RedisServer, RedisUnavailable
from cardq.simulator import Simulator
from cardq.testing import TansuBroker
from tests import helpers
from tests.brokers import PARTS, BrokerUnderTest, kafka_problem, require_kafka

# The "image test: ..." line of the terminal summary (tests/image_summary.py).
pytest_plugins = ["tests.image_summary"]

BROKER_KINDS = ("tansu", "kafka")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_brokers: run the module's tests on Tansu and Kafka")
    config.addinivalue_line(
        "markers",
        "tansu_only(why): in a both_brokers module, this test runs on Tansu only (say why the "
        "broker changes nothing it checks)",
    )
    for marker, part in PARTS.items():
        config.addinivalue_line("markers", f"{marker}: the test runs on {part.title}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_brokers") is None:
        return
    only = metafunc.definition.get_closest_marker("tansu_only")
    if only is not None:
        # Each test on Apache Kafka costs seconds to a minute; one that checks nothing the
        # broker decides (the limiter, the log format, retries) runs once, and says why.
        if not (only.args and isinstance(only.args[0], str) and only.args[0].strip()):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: tansu_only needs a reason")
        return
    metafunc.parametrize("broker", BROKER_KINDS, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(marker) for marker in PARTS):
            continue  # the module says where it runs
        if "broker" in getattr(item, "fixturenames", ()):
            callspec = getattr(item, "callspec", None)
            kind = callspec.params.get("broker", "tansu") if callspec else "tansu"
            item.add_marker(f"on_{kind}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Fetch Kafka's jars (once per machine, up to a minute) before the first test, so the
    fetch does not count against that test's timeout; only if a selected test needs it."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("on_kafka") for item in session.items):
        kafka_problem()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for marker, part in PARTS.items():
        if marker not in report.keywords:
            continue
        if report.when == "call" and (report.outcome != "skipped" or hasattr(report, "wasxfail")):
            part.ran += 1  # an expected failure ran too
        elif report.skipped:
            part.skipped_tests += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many tests each part ran, and one line per part that was skipped, with why."""
    write = terminalreporter.write_line
    if not any(p.ran or p.skipped_tests or p.skip_reason for p in PARTS.values()):
        return
    terminalreporter.section("cardq parts")
    for part in PARTS.values():
        if part.ran or part.skipped_tests or part.skip_reason:
            notes = "".join(f"; {note}" for note in part.notes)
            write(f"{part.title}: {part.ran} tests ran{notes}")
        if part.skip_reason:
            write(f"SKIPPED {part.title} ({part.skipped_tests} tests): {part.skip_reason}")


@pytest.fixture(scope="session")
def kafka_session() -> Iterator[KafkaBroker]:
    """One Apache Kafka for the session, started the first time a test asks for it."""
    require_kafka()
    running = KafkaBroker().start_blocking()
    part = PARTS["on_kafka"]
    part.notes.append(f"broker started in {running.start_seconds:.1f} s")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerUnderTest]:
    """Tansu fresh for this test, or the session's Kafka; either way topics and a group of
    this test's own."""
    kind = getattr(request, "param", "tansu")
    if kind == "kafka":
        shared: KafkaBroker = request.getfixturevalue("kafka_session")
        yield BrokerUnderTest("kafka", shared.bootstrap_servers)
        return
    async with TansuBroker() as running:
        yield BrokerUnderTest("tansu", running.bootstrap_servers)


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
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start again (on the same port):
    an outage without touching the session's server."""
    server = RedisServer().start()
    try:
        yield server
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
