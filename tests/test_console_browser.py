"""The live console in a real browser, against a real ``cardq run`` process.

Debian's ``chromium`` driven headless by Playwright (its Python package only: no browser
is downloaded), a Tansu broker and the simulator over HTTP. The page must show what real
traffic did (a chat the platform throttled, a request it refused), and its pause button
must stop a destination's sends until resume, with nothing lost or reordered.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import TansuBroker, free_port, produce
from tests import helpers

CHROMIUM = "/usr/bin/chromium"
if shutil.which(CHROMIUM) is None:
    pytest.skip(
        "console browser test skipped: /usr/bin/chromium is missing", allow_module_level=True
    )
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="console browser test skipped: playwright is not installed"
)

TOPICS = Topics()
TOKEN = "console-token-9f2e71"
HOT = "feishu_message/app/chat_id:oc_hot"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Where the test leaves its screenshot for a person to look at (also under tmp_path).
SCREENSHOT = Path("/tmp/cardq-console.png")


async def ready(port: int) -> bool:
    return await helpers.http_status(port) == 200


async def state(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/console/api/state?top=100") as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


def update_unknown(rid: str) -> dict[str, Any]:
    """An update of a message the platform never sent: refused for good (230110)."""
    card = {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "x"}]}}
    return {
        "version": 1,
        "request_id": rid,
        "backend": "feishu_message",
        "bot": "app",
        "operation": "update",
        "target": {"message_id": "om_never_sent"},
        "msg_type": "interactive",
        "content": card,
    }


async def test_console_shows_troubles_and_pauses_a_destination(
    broker: TansuBroker, sim: Simulator, tmp_path: Path
) -> None:
    await broker.create_topics([TOPICS.requests, TOPICS.results, TOPICS.dead_letters])
    port = free_port()
    config = helpers.write_config(
        tmp_path / "cardq.yaml",
        broker.bootstrap_servers,
        sim.base_url,
        observability={
            "port": port,
            "host": "127.0.0.1",
            "console": {"actions": True, "token": {"env": "T_CONSOLE_TOKEN"}},
        },
        # The worker believes a chat takes 100/s; the platform allows 5/s: it throttles.
        bots={"app": {"limits": {"destination": [{"limit": 100, "seconds": 1}]}}},
        delivery={"max_attempts": 100},  # every throttled request is retried until it goes
    )
    hot = [helpers.im(f"hot-{i}", chat="oc_hot") for i in range(30)]
    with helpers.worker_process(config, env={"T_CONSOLE_TOKEN": TOKEN}) as proc:
        await helpers.until(lambda: ready(port), "the worker is ready")
        await produce(broker.bootstrap_servers, TOPICS.requests, [*hot, update_unknown("bad-1")])

        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"http://127.0.0.1:{port}/console/")

            # What real traffic did: a throttled chat (Feishu's 230020), a refused request.
            throttled = page.locator(f'#troubled tr[data-destination="{HOT}"]')
            await throttled.filter(has_text="throttled").wait_for(timeout=30_000)
            assert "230020" in await throttled.inner_text()
            failed = page.locator('#failures tr[data-request="bad-1"]')
            await failed.wait_for(timeout=30_000)
            text = await failed.inner_text()
            assert "230110" in text and "failed" in text
            await page.locator('#dead-letters tr[data-reason="rejected"]').wait_for()
            await helpers.until(lambda: len(sim.accepted) >= 30, "the hot chat is delivered")

            # Pause a busy destination through the page: its lane waits, nothing is sent.
            slow = [helpers.hook(f"slow-{i}", text=f"n{i}") for i in range(40)]
            await produce(broker.bootstrap_servers, TOPICS.requests, slow)

            def hooks() -> list[str]:
                return [
                    a.body["content"]["text"] for a in sim.accepted if a.backend == "feishu_webhook"
                ]

            await helpers.until(lambda: len(hooks()) >= 3, "the webhook lane started")
            await page.fill("#token", TOKEN)
            lane = page.locator('#lanes tr[data-destination^="feishu_webhook/hook"]')
            await lane.locator('button[data-action="pause"]').click()
            await lane.filter(has_text="paused").wait_for(timeout=10_000)
            # The request already started ends as it would have; then nothing more.
            at_pause = len(hooks())
            await helpers.until(lambda: _lane_held(port), "the lane waits at the pause", timeout=10)
            settled = len(hooks())
            assert settled <= at_pause + 1
            await page.locator("#lanes").screenshot(path=str(tmp_path / "lanes-paused.png"))
            await helpers.holds_for(
                lambda: len(hooks()) == settled, "a paused destination was sent to", 3.0
            )
            row = next(
                r
                for r in (await state(port))["lanes"]["top"]
                if r["destination"].startswith("feishu_webhook/hook")
            )
            assert row["phase"] == "paused" and row["queued"] == 40 - settled
            await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            shutil.copy(tmp_path / "console.png", SCREENSHOT)

            # Without the token the page's action is refused, and nothing changes.
            await page.fill("#token", "wrong")
            await page.locator('#pauses button[data-action="resume"]').click()
            await page.locator("#act-result", has_text="401").wait_for()
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{port}/console/api/resume",
                    json={"kind": "destination", "name": row["destination"]},
                ) as resp,
            ):
                assert resp.status == 401
            assert len(hooks()) == settled

            # Resume: the lane goes on where it stopped, every request once, in order.
            await page.fill("#token", TOKEN)
            await page.locator('#pauses button[data-action="resume"]').click()
            await page.locator("#pauses tr.empty").wait_for()
            await helpers.until(lambda: len(hooks()) == 40, "every paused request is delivered")
            assert hooks() == [f"n{i}" for i in range(40)]
            await browser.close()
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def _lane_held(port: int) -> bool:
    for row in (await state(port))["lanes"]["top"]:
        if row["destination"].startswith("feishu_webhook/hook"):
            return bool(row["phase"] == "paused" and not row["in_progress"])
    return False
