"""The console's parts: pauses in the scheduler, the activity it shows, budgets, its HTTP
API (token, refusals), its configuration, and pool-wide pauses through real Redis.

The browser test (tests/test_console_browser.py) runs the whole of it against a real
``cardq run``; these pin each rule on its own, with the platform faked (MockTransport).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from cardq import config
from cardq.backends.transport import HttpRequest, MockTransport, Response
from cardq.console.activity import Activity
from cardq.console.pauses import Pauses
from cardq.console.pool import PoolPauses
from cardq.console.state import Console, budget_sources
from cardq.console.web import application
from cardq.health import HealthServer
from cardq.job import Job
from cardq.metrics import Metrics
from cardq.models import Result, Status
from cardq.pipeline import Pipeline
from cardq.ratelimit import RateLimiter, RateScope, Window
from cardq.scheduler import Scheduler
from cardq.testing import FakeClock, free_port, job
from tests import helpers
from tests.test_pipeline import hook_request, make_pipeline

HOOK = "feishu_webhook/hook/webhook"
TOKEN = "console-secret-4411"
OK = (200, {"code": 0, "msg": "success", "data": {"message_id": "om_1"}})
APP_TOKEN = {"code": 0, "msg": "ok", "tenant_access_token": "t-console-test", "expire": 7200}


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds (the scheduler has no event for what we wait on)."""
    await helpers.until(condition, "the scheduler got there", timeout, every=0.005)


def scripted(*bodies: tuple[int, Mapping[str, object]]) -> MockTransport:
    """Answers in order, then the last one for ever; records each request's text."""
    queue = list(bodies)

    def handler(request: HttpRequest) -> Response:
        if "tenant_access_token" in request.url:
            return Response(200, {}, orjson.dumps(APP_TOKEN))
        status, data = queue.pop(0) if len(queue) > 1 else queue[0]
        return Response(status, {}, orjson.dumps(data))

    return MockTransport(handler)


def sent_texts(transport: MockTransport) -> list[str]:
    texts = []
    for sent in transport.requests:
        decoded = orjson.loads(sent.body)
        content = decoded.get("content")
        if isinstance(content, str):  # the IM API's content is a JSON string
            content = orjson.loads(content)
        if isinstance(content, dict):
            texts.append(content.get("text", ""))
    return texts


def text_request(rid: str, text: str, bot: str = "hook") -> dict[str, object]:
    req = hook_request(rid)
    req["content"] = {"text": text}
    if bot == "app":
        req.update(
            backend="feishu_message",
            bot="app",
            target={"receive_id_type": "chat_id", "receive_id": "oc_1"},
        )
    return req


class Lanes:
    """A scheduler over a pipeline with a scripted platform, collecting results in order."""

    def __init__(self, transport: MockTransport) -> None:
        self.pipeline: Pipeline
        self.pipeline, _ = make_pipeline(transport)
        self.transport = transport
        self.results: list[Result] = []
        self.changed = asyncio.Event()
        self.scheduler = Scheduler(self.pipeline, self._publish)
        self.pauses = Pauses()
        self.scheduler.pauses = self.pauses

    async def _publish(self, _: Job, result: Result | None) -> None:
        assert result is not None
        self.results.append(result)
        self.changed.set()

    async def wait_results(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.results) < n:
                self.changed.clear()
                await self.changed.wait()

    async def wait_held(self, destination: str) -> None:
        await eventually(
            lambda: any(
                v.destination == destination and v.held is not None and v.current is None
                for v in self.scheduler.views()
            )
        )


# --------------------------------------------------------------------------- pauses


async def test_a_paused_destination_waits_then_sends_everything_in_order() -> None:
    lanes = Lanes(scripted(OK))
    lanes.pauses.pause("destination", HOOK)
    for i in range(5):
        lanes.scheduler.submit(job(text_request(f"r{i}", f"n{i}"), offset=i))
    lanes.scheduler.submit(job(text_request("other", "x", bot="app"), offset=9))
    await lanes.wait_results(1)  # another destination is not held
    await lanes.wait_held(HOOK)
    assert [r.request_id for r in lanes.results] == ["other"]
    assert sent_texts(lanes.transport) == ["x"]
    (view,) = [v for v in lanes.scheduler.views() if v.destination == HOOK]
    assert view.queued == 5 and view.held is not None and view.oldest is not None

    assert lanes.pauses.resume("destination", HOOK)
    await lanes.wait_results(6)
    assert sent_texts(lanes.transport)[1:] == [f"n{i}" for i in range(5)]
    assert all(r.status is Status.DELIVERED for r in lanes.results)
    await lanes.scheduler.close()


async def test_a_paused_bot_holds_its_lanes_and_a_pause_between_requests_holds_the_rest() -> None:
    lanes = Lanes(scripted(OK))
    lanes.scheduler.submit(job(text_request("r0", "n0"), offset=0))
    await lanes.wait_results(1)  # running before the pause: the lane exists and ends
    lanes.pauses.pause("bot", "hook")
    for i in (1, 2):
        lanes.scheduler.submit(job(text_request(f"r{i}", f"n{i}"), offset=i))
    await lanes.wait_held(HOOK)
    assert sent_texts(lanes.transport) == ["n0"]
    lanes.pauses.resume("bot", "hook")
    await lanes.wait_results(3)
    assert sent_texts(lanes.transport) == ["n0", "n1", "n2"]
    await lanes.scheduler.close()


async def test_draining_a_paused_lane_drops_its_queue_and_ends_the_lane() -> None:
    lanes = Lanes(scripted(OK))
    lanes.pauses.pause("destination", HOOK)
    for i in range(3):
        lanes.scheduler.submit(job(text_request(f"r{i}", f"n{i}"), offset=i))
    await lanes.wait_held(HOOK)
    finished, left = await lanes.scheduler.drain({None}, grace_s=1.0)  # job().tp is None
    assert (finished, left) == (0, 3)
    lanes.pauses.resume("destination", HOOK)  # the gate opens on an empty lane: it ends
    await eventually(lambda: lanes.scheduler.lanes == 0)
    assert lanes.transport.requests == []


# --------------------------------------------------------------------------- what it shows


async def test_activity_keeps_throttles_failures_and_dead_letters_with_platform_codes() -> None:
    throttle = (200, {"code": 11232, "msg": "frequency limited"})
    refused = (200, {"code": 19002, "msg": "params error"})
    lanes = Lanes(scripted(throttle, OK, refused))
    activity = Activity()
    lanes.pipeline.on_attempt_failed = activity.attempt_failed
    lanes.scheduler.submit(job(text_request("r1", "n1"), offset=0))
    lanes.scheduler.submit(job(text_request("r2", "n2"), offset=1))
    await lanes.wait_results(2)
    for result in lanes.results:
        activity.finished(result)
    (trouble,) = activity.troubled()
    assert trouble["destination"] == HOOK
    assert trouble["throttled"] == 1 and trouble["failed"] == 1
    assert trouble["state"] == "failing" and trouble["platform_code"] == 19002
    (failure,) = activity.latest_failures()
    assert failure["request_id"] == "r2" and failure["platform_code"] == 19002
    assert failure["dead_letter"] is True
    assert activity.dead_letters == {"rejected": 1}
    assert activity.results == {"delivered": 1, "failed": 1}
    assert activity.troubled(now=10**12) == []  # old troubles leave the view
    await lanes.scheduler.close()


def test_limiter_snapshot_counts_each_window_and_puts_cooling_scopes_first() -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter(margin=0.0, clock=clock)
    chat = RateScope("chat-1", "destination", (Window(5, 1.0), Window(100, 60.0)))
    app = RateScope("app-1", "app", (Window(50, 1.0),))
    for _ in range(3):
        assert limiter.try_acquire((chat,)) == 0
        limiter.release((chat,))
    assert limiter.try_acquire((app,)) == 0  # still on the wire: counted as used
    limiter.cool_down((app,), 2.0)
    snap = limiter.snapshot()
    assert [s["key"] for s in snap["scopes"]] == ["app-1", "chat-1"]
    assert snap["scopes"][0]["cooling_s"] == 2.0
    assert snap["scopes"][0]["windows"] == [{"limit": 50, "seconds": 1.0, "used": 1}]
    assert [w["used"] for w in snap["scopes"][1]["windows"]] == [3, 3]
    clock.advance(1.5)  # the 1 s window has passed, the minute has not
    used = [w["used"] for w in limiter.snapshot()["scopes"][-1]["windows"]]
    assert used == [0, 3]


class SharedBudgets:
    """What a limiter sharing budgets through Redis shows (a unit-test stand-in)."""

    def __init__(self, local: RateLimiter) -> None:
        self.local = local

    def snapshot(self) -> dict[str, Any]:
        window = {"limit": 50, "seconds": 1.0, "used": 7}
        scope = {"key": "feishu-app/x", "windows": [window], "cooling_s": 0.0, "fill": 0.14}
        return {"reach": "pool", "scopes": [scope]}


def test_budget_sources_place_a_limiter_by_the_reach_it_reports() -> None:
    local = RateLimiter()
    assert budget_sources(local) == (local, None)
    shared = SharedBudgets(local)
    assert budget_sources(shared) == (local, shared)
    assert budget_sources(object()) == (None, None)  # a limiter that shows nothing


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Lanes, Console]]:
    lanes = Lanes(scripted(OK))
    console = Console(
        worker_id="w1",
        bots=["app", "hook"],
        scheduler=lanes.scheduler,
        budgets=lanes.pipeline.limiter,
        activity=Activity(),
        pauses=lanes.pauses,
        token=TOKEN,
    )
    server = HealthServer(Metrics(), lambda: True, application(console))
    port = await server.start("127.0.0.1", free_port())
    try:
        yield f"http://127.0.0.1:{port}", lanes, console
    finally:
        await server.stop()
        await lanes.scheduler.close()


async def call(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, Any, Mapping[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers, allow_redirects=False) as resp,
    ):
        text = await resp.read()
        try:
            data: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = text.decode()
        return resp.status, data, dict(resp.headers)


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(
    served: tuple[str, Lanes, Console],
) -> None:
    url, _, _ = served
    status, _, headers = await call("GET", f"{url}/console")
    assert status == 302 and headers["Location"] == "/console/"
    status, page, headers = await call("GET", f"{url}/console/")
    assert status == 200 and "static/console.js" in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        status, _, headers = await call("GET", f"{url}/console/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
    assert (await call("GET", f"{url}/console/static/..%2fstate.py"))[0] == 404
    assert (await call("GET", f"{url}/metrics"))[0] == 200  # the rest of the port is intact


async def test_state_shows_a_paused_lane_with_its_queue(
    served: tuple[str, Lanes, Console],
) -> None:
    url, lanes, console = served
    status, body, _ = await call(
        "POST", f"{url}/console/api/pause", {"kind": "destination", "name": HOOK}, TOKEN
    )
    assert status == 200 and body["pauses"][0]["name"] == HOOK
    for i in range(4):
        lanes.scheduler.submit(job(text_request(f"r{i}", f"n{i}"), offset=i))
    await lanes.wait_held(HOOK)
    status, state, headers = await call("GET", f"{url}/console/api/state?top=5")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert state["actions"] is True and state["pool"] is False
    assert state["lanes"]["queued"] == 4 and state["lanes"]["paused"] == 1
    (row,) = state["lanes"]["top"]
    assert row["destination"] == HOOK and row["phase"] == "paused" and row["queued"] == 4
    assert state["budgets"]["pool"] is None
    console.pool_budgets = SharedBudgets(RateLimiter())
    console.budgets = None
    _, state, _ = await call("GET", f"{url}/console/api/state")
    assert state["budgets"]["pod"] is None
    assert state["budgets"]["pool"]["scopes"][0]["windows"][0]["used"] == 7
    status, body, _ = await call(
        "POST", f"{url}/console/api/resume", {"kind": "destination", "name": HOOK}, TOKEN
    )
    assert status == 200 and body == {"ok": True, "changed": True, "pauses": []}
    await lanes.wait_results(4)
    assert (await call("GET", f"{url}/console/api/state?top=x"))[0] == 400


@pytest.mark.parametrize(
    ("token", "body", "status", "says"),
    [
        (None, {"kind": "destination", "name": HOOK}, 401, "bearer token"),
        ("wrong", {"kind": "destination", "name": HOOK}, 401, "bearer token"),
        (TOKEN, {"kind": "chat", "name": HOOK}, 400, "kind must be"),
        (TOKEN, {"kind": "bot", "name": "nope"}, 400, "unknown bot 'nope'"),
        (TOKEN, {"kind": "destination", "name": ""}, 400, "name must be"),
        (TOKEN, {"kind": "destination", "name": HOOK, "reach": "pool"}, 409, "redis"),
        (TOKEN, ["destination"], 400, "JSON object"),
    ],
)
async def test_actions_are_refused_without_the_token_or_with_a_bad_body(
    served: tuple[str, Lanes, Console], token: str | None, body: Any, status: int, says: str
) -> None:
    url, lanes, _ = served
    got, answer, headers = await call("POST", f"{url}/console/api/pause", body, token)
    assert got == status and says in answer["error"]
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert lanes.pauses.all() == []


async def test_actions_are_off_unless_configured(served: tuple[str, Lanes, Console]) -> None:
    url, lanes, console = served
    console.token = None
    body = {"kind": "destination", "name": HOOK}
    status, answer, _ = await call("POST", f"{url}/console/api/pause", body, TOKEN)
    assert status == 403 and "observability.console.actions" in answer["error"]
    assert lanes.pauses.all() == []


# --------------------------------------------------------------------------- configuration


def test_actions_need_a_token_from_a_secret() -> None:
    with pytest.raises(config.ConfigError, match=r"observability\.console\.token: required"):
        config.from_mapping({"observability": {"console": {"actions": True}}}, env={})
    with pytest.raises(config.ConfigError, match="never read from the configuration"):
        config.from_mapping({"observability": {"console": {"token": "plain"}}}, env={})
    data = {"observability": {"console": {"actions": True, "token": {"env": "CONSOLE_T"}}}}
    with pytest.raises(config.ConfigError, match="CONSOLE_T is not set"):
        config.check_credentials(config.from_mapping(data, env={}))
    settings = config.from_mapping(data, env={"CONSOLE_T": "x" * 8})
    assert config.check_credentials(settings) == ["observability.console.token"]
    defaults = config.from_mapping({}, env={}).observability.console
    assert defaults.enabled and not defaults.actions
    off = config.from_mapping({}, env={"CARDQ_OBSERVABILITY__CONSOLE__ENABLED": "false"})
    assert off.observability.console.enabled is False


# --------------------------------------------------------------------------- the pool


async def test_a_pool_pause_reaches_every_pod_through_redis(
    redis_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}console:paused"
    pods = []
    for _ in range(2):
        lanes = Lanes(scripted(OK))
        pool = PoolPauses(aioredis.Redis.from_url(redis_url), key, lanes.pauses, interval_s=0.05)
        pool.start()
        pods.append((lanes, pool))
    (first, first_pool), (second, second_pool) = pods
    try:
        await first_pool.pause("destination", HOOK, by="test")
        assert first.pauses.holds(HOOK, "hook") is not None  # here at once
        await eventually(lambda: second.pauses.holds(HOOK, "hook") is not None)  # there soon
        for i in range(3):
            second.scheduler.submit(job(text_request(f"r{i}", f"n{i}"), offset=i))
        await second.wait_held(HOOK)
        assert second.transport.requests == []
        (pause,) = second.pauses.all()
        assert (pause.reach, pause.by) == ("pool", "test")
        assert await second_pool.resume("destination", HOOK)
        await second.wait_results(3)
        assert sent_texts(second.transport) == ["n0", "n1", "n2"]
        await eventually(lambda: not first.pauses.all())
    finally:
        for lanes, pool in pods:
            await pool.stop()
            await lanes.scheduler.close()
