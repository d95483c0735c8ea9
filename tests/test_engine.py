"""The delivery engine's promises, over a real broker (Tansu and Apache Kafka) and the
simulator over HTTP: no head-of-line blocking, limits kept, nothing lost or sent twice
through crashes and rebalances, poison input isolated, faults survived."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

from cardq.config import Settings
from cardq.idempotency import Partition
from cardq.idempotency.memory import MemoryStore
from cardq.job import Phase
from cardq.simulator import Simulator, SimulatorConfig
from cardq.testing import ResultCollector, produce, running_worker
from tests import helpers
from tests.brokers import BrokerUnderTest

pytestmark = pytest.mark.both_brokers


async def start_sim(**config: object) -> Simulator:
    sim = Simulator(SimulatorConfig(**config))  # type: ignore[arg-type]
    await sim.start()
    helpers.register(sim)
    return sim


def accepted_for(sim: Simulator, destination: str) -> list[float]:
    return [a.at for a in sim.accepted if a.destination == destination]


def texts_for(sim: Simulator, destination: str) -> list[str]:
    out = []
    for a in sim.accepted:
        if a.destination == destination:
            content = a.body.get("content")
            out.append(content if isinstance(content, str) else str(content))
    return out


def member(
    broker: BrokerUnderTest, sim: Simulator, name: str, redis_url: str, prefix: str
) -> Settings:
    """The settings of pool member ``name``: the Redis store shared by the pool."""
    return broker.settings(
        sim.base_url, worker_id=name, idempotency=helpers.redis_idempotency(redis_url, prefix)
    )


def quiet_accepted(sim: Simulator) -> list[float]:
    return [a.at for a in sim.accepted if a.destination.startswith("chat_id:oc_q")]


@pytest.mark.tansu_only(
    "lanes are the scheduler's: the broker only delivers one partition in order"
)
async def test_no_head_of_line_blocking(broker: BrokerUnderTest) -> None:
    """500 requests for a 5/s chat queued in front of 50 quiet chats (3 each), one partition:
    the quiet chats are all delivered, in order, while the busy chat is still at its first
    few sends (blocked behind it, they would come after all 500), and it keeps its 5/s.

    Counted in the busy chat's sends, not in seconds: a loaded machine slows both alike."""
    sim = await start_sim(app_limits=((1000, 1.0),))
    try:
        await broker.create_all()
        settings = broker.settings(
            sim.base_url,
            bots={"app": {"limits": {"app": [{"limit": 1000, "seconds": 1.0}]}}},
        )
        busy = [helpers.im(f"a{i}", "oc_busy", text=f"a{i:03}") for i in range(500)]
        quiet = [
            helpers.im(f"q{c}-{i}", f"oc_q{c}", text=f"q{c}-{i}")
            for c in range(50)
            for i in range(3)
        ]
        await produce(broker.bootstrap_servers, broker.topics.requests, busy + quiet)
        async with running_worker(settings):
            await sim.wait_for(lambda: len(quiet_accepted(sim)) >= 150, timeout=30)
            await sim.wait_for(lambda: len(accepted_for(sim, "chat_id:oc_busy")) >= 16, 30)
        order = [a.destination for a in sim.accepted]
        last_quiet = max(i for i, d in enumerate(order) if d.startswith("chat_id:oc_q"))
        busy_before = order[:last_quiet].count("chat_id:oc_busy")
        assert busy_before <= 25, f"the quiet chats waited for {busy_before} busy sends"
        for c in range(50):
            assert [t for t in texts_for(sim, f"chat_id:oc_q{c}")] == [
                f'{{"text":"q{c}-{i}"}}' for i in range(3)
            ]
        busy_texts = texts_for(sim, "chat_id:oc_busy")
        assert busy_texts == [f'{{"text":"a{i:03}"}}' for i in range(len(busy_texts))]
        times = accepted_for(sim, "chat_id:oc_busy")
        assert max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)) <= 5
        assert sim.stats.throttle_answers.total() == 0
    finally:
        await sim.stop()


@pytest.mark.tansu_only(
    "the limiter and the simulator keep the windows; the broker is not involved"
)
async def test_limits_kept_over_three_windows(broker: BrokerUnderTest) -> None:
    """Simulator and worker share shrunk windows; three long windows of traffic: zero
    throttle answers, never more than a window's limit in any window, and the traffic
    was really paced (it spans the windows its count needs). That the limiter uses the
    full rate is asserted on a fake clock (tests/test_ratelimit.py), not on this machine's
    time, which a loaded CI runner stretches."""
    sim = await start_sim(webhook_limits=((5, 0.1), (20, 1.0)), im_target_limits=((4, 0.2),))
    try:
        await broker.create_all()
        settings = broker.settings(
            sim.base_url,
            bots={
                "hook": {
                    "limits": {
                        "destination": [{"limit": 5, "seconds": 0.1}, {"limit": 20, "seconds": 1.0}]
                    }
                },
                "app": {"limits": {"destination": [{"limit": 4, "seconds": 0.2}]}},
            },
        )
        hooks = [helpers.hook(f"h{i}") for i in range(75)]
        chats = [helpers.im(f"c{i}", "oc_paced") for i in range(75)]
        await produce(broker.bootstrap_servers, broker.topics.requests, hooks + chats)
        async with running_worker(settings):
            await sim.wait_for(lambda: len(sim.accepted) >= 150, timeout=15)
        assert sim.stats.throttle_answers.total() == 0
        for destination, limit, window in (("webhook", 20, 1.0), ("chat_id:oc_paced", 4, 0.2)):
            times = sorted(a.at for a in sim.accepted if a.destination.startswith(destination))
            assert len(times) == 75
            # send k * limit goes at least k windows after the first (less arrival jitter)
            k = (len(times) - 1) // limit
            assert times[-1] - times[0] >= 0.9 * k * window, destination
            assert (
                max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)) <= limit
            )
    finally:
        await sim.stop()


async def test_poison_input_is_rejected_and_isolated(
    broker: BrokerUnderTest, sim: Simulator
) -> None:
    await broker.create_all()
    settings = broker.settings(sim.base_url)
    good = [helpers.mind(f"ok{i}", "g1") for i in range(10)]
    wrong_schema = helpers.im("bad-schema", "oc_1")
    del wrong_schema["target"]["receive_id"]
    unknown_bot = {**helpers.hook("bad-bot"), "bot": "nobody"}
    huge = helpers.hook("too-big", text="x" * (2 * 1024 * 1024))
    poison: list[object] = [b"\x00\xffgarbage", wrong_schema, unknown_bot, huge]
    mixed: list[object] = []
    for i, item in enumerate(good):
        mixed.append(item)
        if i < len(poison):
            mixed.append(poison[i])
    async with (
        ResultCollector(broker.bootstrap_servers, broker.topics) as results,
        running_worker(settings),
    ):
        await produce(broker.bootstrap_servers, broker.topics.requests, mixed)  # type: ignore[arg-type]
        await results.wait_for(lambda c: len(c.results) >= 14, timeout=20)
        await results.wait_for(lambda c: len(c.dead_letters) >= 4, timeout=10)
    by_id = results.by_request()
    assert all(by_id[f"ok{i}"][0]["status"] == "delivered" for i in range(10))
    expected = {
        "bad-schema": ("target.receive_id", "required"),
        "bad-bot": ("bot", "no bot named 'nobody'"),
        "too-big": ("$", "more than the"),
    }
    for rid, (field, reason) in expected.items():
        (result,) = by_id[rid]
        assert result["status"] == "rejected"
        assert result["error"]["field"] == field and reason in result["error"]["message"]
    garbage = [r for r in results.results if r["request_id"] is None]
    assert garbage[0]["error"]["code"] == "invalid_json"
    letters = {dl["result"]["request_id"]: dl for dl in results.dead_letters}
    assert set(letters) == {None, "bad-schema", "bad-bot", "too-big"}
    assert letters["too-big"]["original"]["truncated"] is True
    assert letters["too-big"]["original"]["size"] > 2 * 1024 * 1024
    assert len(sim.accepted) == 10


@pytest.mark.tansu_only("retries of platform faults happen after intake, whatever the broker")
async def test_faults_everything_delivered_once(broker: BrokerUnderTest) -> None:
    """30% 5xx, some timeouts and a throttle storm: all delivered, attempts reported."""
    sim = await start_sim()
    try:
        await broker.create_all()
        settings = broker.settings(
            sim.base_url,
            http={"timeout_s": 0.5},
            delivery={"max_attempts": 30, "backoff_base_s": 0.02, "backoff_cap_s": 0.2},
        )
        sim.faults.error_ratio = 0.3
        sim.faults.timeout_ratio = 0.05
        sim.faults.hang_s = 1.0
        sim.faults.throttle_until = time.monotonic() + 1.0
        requests = [helpers.im(f"f{i}", f"oc_{i % 10}") for i in range(60)] + [
            helpers.mind(f"m{i}", f"g{i % 10}") for i in range(60)
        ]
        async with (
            ResultCollector(broker.bootstrap_servers, broker.topics) as results,
            running_worker(settings),
        ):
            await produce(broker.bootstrap_servers, broker.topics.requests, requests)
            await results.wait_for_count(120, timeout=60)
        by_id = results.by_request()
        assert all(len(v) == 1 and v[0]["status"] == "delivered" for v in by_id.values())
        assert sum(v[0]["attempts"] for v in by_id.values()) > 120  # retries happened
        counts = sim.accepted_by_idempotency()
        assert len(counts) == 120 and max(counts.values()) == 1
    finally:
        await sim.stop()


async def test_crash_with_redis_store_never_sends_a_key_twice(
    broker: BrokerUnderTest, sim: Simulator, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    await broker.create_all(partitions=2)
    sim.faults.latency_s = 0.02
    config = broker.write_config(
        tmp_path / "cardq.yaml",
        sim.base_url,
        idempotency=helpers.redis_idempotency(redis_url, redis_prefix, claim_timeout_s=2.0),
        delivery={"commit_interval_s": 2.0},
        observability={"log_level": "info"},
    )
    logs = tmp_path / "workers.log"  # both processes' lines, for a failure's story
    ids = [f"x{i}" for i in range(200)]
    requests = [helpers.im(rid, f"oc_{i % 40}") for i, rid in enumerate(ids)]
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        await produce(broker.bootstrap_servers, broker.topics.requests, requests)
        with helpers.worker_process(config, logs) as first:
            await results.wait_for(lambda c: len(c.results) >= 30, timeout=30)
            first.kill()  # SIGKILL: no drain, no commit
            first.wait()
        with helpers.worker_process(config, logs) as second:
            await results.wait_for(lambda c: set(ids) <= set(c.by_request()), timeout=60)
            second.terminate()  # SIGTERM: drain, commit, leave, exit 0
            assert await asyncio.to_thread(second.wait, 30) == 0
    counts = sim.accepted_by_idempotency()
    assert len(counts) == len(ids) and max(counts.values()) == 1
    # The second process re-read everything above the (2 s old) commit point; the
    # records whose results were on the broker got no second one.
    per_record = Counter((r["source"]["partition"], r["source"]["offset"]) for r in results.results)
    assert len(per_record) == len(ids)
    twice = sorted(where for where, n in per_record.items() if n > 1)
    assert not twice, f"records with two results: {twice} (logs: {logs})"


async def test_pool_join_and_leave_loses_nothing_and_sends_nothing_twice(
    broker: BrokerUnderTest, sim: Simulator, redis_url: str, redis_prefix: str
) -> None:
    await broker.create_all(partitions=6)
    sim.faults.latency_s = 0.01

    def pool_settings(name: str) -> Settings:
        return member(broker, sim, name, redis_url, redis_prefix)

    ids = [f"p{i}" for i in range(600)]
    requests = [helpers.mind(rid, f"g{i % 60}") for i, rid in enumerate(ids)]
    async with (
        ResultCollector(broker.bootstrap_servers, broker.topics) as results,
        running_worker(pool_settings("w1")) as w1,
        running_worker(pool_settings("w2")),
    ):
        await produce(broker.bootstrap_servers, broker.topics.requests, requests[:300])
        await results.wait_for(lambda c: len(c.results) >= 100, timeout=30)
        async with running_worker(pool_settings("w3")):
            await produce(broker.bootstrap_servers, broker.topics.requests, requests[300:])
            await results.wait_for(lambda c: len(c.results) >= 350, timeout=30)
            w1.stop()  # leaves by SIGTERM's path: drain, commit, leave the group
            await results.wait_for(lambda c: set(ids) <= set(c.by_request()), 60)
    by_id = results.by_request()
    assert all(by_id[rid][0]["status"] == "delivered" for rid in ids)
    assert len({r["worker_id"] for r in results.results}) == 3
    counts = sim.accepted_by_idempotency()
    assert len(counts) == len(ids) and max(counts.values()) == 1
    assert sim.stats.duplicates.total() == 0, "the platform had to drop a resend"
    twice = {rid: by_id[rid] for rid in ids if len(by_id[rid]) != 1}
    assert not twice, f"requests with two results: {twice}"


async def test_a_revocation_slower_than_the_session_timeout_gives_one_result(
    broker: BrokerUnderTest, sim: Simulator, redis_url: str, redis_prefix: str
) -> None:
    """Sends on the wire when a member joins: the old owner's revocation waits for them
    (up to ``drain_grace_s``, longer than the 3 s session timeout here) and publishes their
    results. The group must not hand the partitions on before that revocation ends, or the
    next owner re-reads those records and answers them a second time from the store (seen
    on Apache Kafka, which gives a member the rebalance timeout to rejoin and aiokafka
    set it to the session timeout)."""
    await broker.create_all(partitions=2)
    sim.faults.latency_s = 4.0  # > the 3 s session timeout, < the 5 s drain grace

    def pool_settings(name: str) -> Settings:
        return member(broker, sim, name, redis_url, redis_prefix)

    ids = [f"s{i}" for i in range(8)]
    requests = [helpers.mind(rid, f"g{i}") for i, rid in enumerate(ids)]
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        async with running_worker(pool_settings("w1")) as w1:
            await produce(broker.bootstrap_servers, broker.topics.requests, requests)
            await helpers.until(
                lambda: any(
                    v.current is not None and v.current.phase is Phase.SENDING
                    for v in (w1.parts.scheduler.views() if w1.parts is not None else ())
                ),
                "a send started",
                20,
            )
            async with running_worker(pool_settings("w2")) as w2:
                # every record read by either worker finished (a re-read one too)
                await helpers.until(
                    lambda: (
                        set(ids) <= set(results.by_request())
                        and w1.tracker.buffered == w2.tracker.buffered == 0
                    ),
                    "every record finished",
                    60,
                )
        published = w1.counts["results"] + w2.counts["results"]
        await results.wait_for(lambda c: len(c.results) >= published, timeout=20)
    counts = sim.accepted_by_idempotency()
    assert len(counts) == len(ids) and max(counts.values()) == 1
    by_id = results.by_request()
    twice = {rid: by_id[rid] for rid in ids if len(by_id[rid]) != 1}
    assert not twice, f"requests with two results: {twice}"


async def test_backpressure_bounds_memory_and_resumes(
    broker: BrokerUnderTest, sim: Simulator
) -> None:
    """With a small buffer the worker pauses, never holds more than the bound, resumes,
    and still delivers everything.

    Resuming is shown by what a paused partition read afterwards, not by catching a moment
    with nothing paused at a result: the loop re-plans once per fetch (up to 200 ms), so
    on a loaded machine the last records may all finish within one fetch while their
    partition is still paused, and no result need ever see both partitions running."""
    await broker.create_all(partitions=2)
    sim.faults.latency_s = 0.01
    settings = broker.settings(
        sim.base_url,
        delivery={"max_buffered_records": 20, "resume_ratio": 0.5},
    )
    requests = [helpers.mind(f"b{i}", f"g{i % 10}") for i in range(300)]
    await produce(broker.bootstrap_servers, broker.topics.requests, requests)
    held: list[int] = []
    #: per partition, the lowest next offset to read seen while it was paused
    paused_at: dict[int, int] = {}
    async with (
        ResultCollector(broker.bootstrap_servers, broker.topics) as results,
        running_worker(settings) as w,
    ):

        def sample(_: object) -> None:
            held.append(w.tracker.buffered)
            for tp in w.assignment.paused:
                offset = w.assignment.next_offset.get(tp, 0)
                paused_at[tp.partition] = min(offset, paused_at.get(tp.partition, offset))

        w.on_result(sample)
        await results.wait_for_count(300, timeout=60)
        # Once its records are done a partition holds nothing and resumes at the loop's
        # next fetch (<= 200 ms); 10 s is that many times over for a loaded machine.
        await helpers.until(lambda: not w.assignment.paused, "every partition resumed", 10)
    assert max(held) <= 20
    assert paused_at, "the bound was never reached"
    read = Counter(r["source"]["partition"] for r in results.results)
    # A paused partition reads nothing: records past where it was paused were read after
    # it resumed.
    assert any(read[p] > offset for p, offset in paused_at.items()), (paused_at, read)
    assert all(r["status"] == "delivered" for r in results.results)


class _StoreDownOnce(MemoryStore):
    """The store is unreachable for the first marking and the first trim of marks (a Redis
    restart between commits)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[tuple[str, int, int]] = set()
        self.written_after = 0  # marking calls that went through after the outage
        self.trim_failed = False

    async def mark_published(
        self,
        offsets: Mapping[Partition, Collection[int]],
        ttl_s: float,
        positions: Mapping[Partition, Mapping[int, int]] | None = None,
    ) -> None:
        flat = {(t, p, o) for (t, p), marks in offsets.items() for o in marks}
        if not self.failed and flat:
            self.failed = flat
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        await super().mark_published(offsets, ttl_s, positions)
        self.written_after += bool(self.failed)

    async def forget_published(self, below: Mapping[Partition, int]) -> None:
        if not self.trim_failed:
            self.trim_failed = True
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        await super().forget_published(below)


async def test_a_store_outage_at_commit_time_does_not_stop_the_worker(
    broker: BrokerUnderTest, sim: Simulator
) -> None:
    """Marking results published is retried (or, once committed, no longer needed); it used
    to end the worker (found by the soak benchmark's Redis restart)."""
    await broker.create_all(partitions=2)
    settings = broker.settings(sim.base_url)
    store = _StoreDownOnce()
    first = [helpers.mind(f"m{i}", f"g{i % 5}") for i in range(20)]
    then = [helpers.mind(f"n{i}", f"g{i % 5}") for i in range(20)]
    async with (
        ResultCollector(broker.bootstrap_servers, broker.topics) as results,
        running_worker(settings, store=store) as w,
    ):
        await produce(broker.bootstrap_servers, broker.topics.requests, first)
        await results.wait_for_count(20, timeout=30)
        await produce(broker.bootstrap_servers, broker.topics.requests, then)
        await results.wait_for_count(40, timeout=30)
        # (marks already committed are not needed)
        await helpers.until(
            lambda: store.written_after, "marking went through after the outage", 10
        )
        assert w.state.value == "running"
    assert store.failed and store.trim_failed, "the outage was never met"
    assert all(r["status"] == "delivered" for r in results.results)
