"""The card and post rules the platform enforces (platform facts §5), in cardq and the simulator.

cardq refuses what the platform would refuse, before sending, naming the field; the simulator,
sent the same bodies directly over HTTP (no cardq validation in between), answers them as the
platform does. Both let components they do not know through, and a card JSON 1.0 card keeps
the components only 2.0 removed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cardq.backends import feishu_errors
from cardq.backends.cards import CARD_V2_REMOVED_PROPERTIES, CARD_V2_REMOVED_TAGS
from cardq.errors import Rejected
from cardq.simulator import Simulator
from cardq.simulator._feishu_content import V2_REMOVED_PROPERTIES, V2_REMOVED_TAGS
from cardq.validation import ValidationError, from_dict

FACTS = (Path(__file__).resolve().parent.parent / "docs" / "platform-facts.md").read_text()
HOOK, APP, APP_SECRET = "hook-plain", "cli_rules", "rules-secret"

#: What facts §5 lists as removed in card JSON 2.0, with the path cardq names for it.
REMOVED = ["action", "i18n_elements"]
MARKDOWN = {"tag": "markdown", "content": "**db-2** /var at 91%"}
BUTTON_V2 = {
    "tag": "button",
    "text": {"tag": "plain_text", "content": "Runbook"},
    "behaviors": [{"type": "open_url", "default_url": "https://example.com/runbook"}],
}
BUTTON_V1 = {
    "tag": "button",
    "text": {"tag": "plain_text", "content": "Runbook"},
    "url": "https://example.com/runbook",
}
ACTION = {"tag": "action", "actions": [BUTTON_V2]}


def card_v2(*elements: Any, **top: Any) -> dict[str, Any]:
    return {"schema": "2.0", "body": {"elements": list(elements)}, **top}


#: A removed component in a 2.0 card, where real senders put it, and the path cardq names.
V2_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("action", card_v2(MARKDOWN, ACTION), "content.body.elements[1].tag"),
    (
        "action",
        card_v2(
            {
                "tag": "column_set",
                "columns": [{"tag": "column", "elements": [MARKDOWN, ACTION]}],
            }
        ),
        "content.body.elements[0].columns[0].elements[1].tag",
    ),
    (
        "action",
        card_v2(MARKDOWN, {"tag": "collapsible_panel", "elements": [ACTION]}),
        "content.body.elements[1].elements[0].tag",
    ),
    (
        "i18n_elements",
        card_v2(MARKDOWN, i18n_elements={"zh_cn": [MARKDOWN], "en_us": [MARKDOWN]}),
        "content.i18n_elements",
    ),
]
V2_IDS = ["action-in-body", "action-in-column", "action-in-panel", "i18n-elements"]

#: A 2.0 card and a post made of components neither cardq nor the simulator knows.
UNKNOWN_V2 = card_v2(
    MARKDOWN,
    BUTTON_V2,
    {"tag": "future_chart_v9", "spec": {"type": "line", "values": [1, 2, 3]}},
    {"tag": "collapsible_panel", "elements": [{"tag": "unknown_widget", "inner": {"tag": "x"}}]},
)
V1_WITH_V2_REMOVED = {
    "config": {"wide_screen_mode": True, "update_multi": True},
    "elements": [MARKDOWN, {"tag": "action", "actions": [BUTTON_V1]}],
    "i18n_elements": {"en_us": [MARKDOWN, {"tag": "action", "actions": [BUTTON_V1]}]},
}
POST_LOCALE_OK = {
    "title": "Release",
    "content": [
        [{"tag": "text", "text": "v2: "}, {"tag": "a", "text": "notes", "href": "https://e.x"}],
        [{"tag": "future_node", "text": "node kinds we do not know pass"}],
        [],
    ],
}
TEXT = {"tag": "text", "text": "v2 is out"}
#: Malformed post bodies (one locale's ``content``), the path under that locale, the reason.
BAD_POSTS: list[tuple[Any, str, str]] = [
    ([TEXT, TEXT], "content", "a flat list of nodes"),
    ([[TEXT], TEXT], "content[1]", "must be a paragraph"),
    ([[TEXT, "see the notes"]], "content[0][1]", "must be a node"),
    ("v2 is out", "content", "must be a list of paragraphs"),
]
BAD_POST_IDS = ["flat", "one-paragraph-flat", "node-a-string", "content-a-string"]


def request(backend: str, content: Any, msg_type: str = "interactive", **extra: Any) -> Any:
    targets = {
        "feishu_webhook": None,
        "feishu_message": {"receive_id_type": "chat_id", "receive_id": "oc_1"},
        "feishu_ephemeral": {"chat_id": "oc_1", "open_id": "ou_1"},
    }
    target = extra.pop("target", targets[backend])
    data = {"version": 1, "request_id": "r1", "backend": backend, "bot": "b", **extra}
    if target is not None:
        data["target"] = target
    return {**data, "msg_type": msg_type, "content": content}


def refusal(data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        from_dict(data)
    return caught.value


# ----------------------------------------------------------------- the list is the facts' list


def test_the_removed_components_are_the_facts_list_in_cardq_and_the_simulator() -> None:
    section = FACTS.split("## 5. Card JSON", 1)[1].split("\n## ", 1)[0]
    listed = re.search(r"Components that 2\.0\s+removed(.*?)Check these", section, re.S)
    assert listed is not None
    assert set(re.findall(r"`([a-z_0-9]+)`", listed.group(1))) == set(REMOVED)
    assert {*CARD_V2_REMOVED_TAGS, *CARD_V2_REMOVED_PROPERTIES} == set(REMOVED)
    assert {*V2_REMOVED_TAGS, *V2_REMOVED_PROPERTIES} == set(REMOVED)


# ------------------------------------------------------------------------------------- cardq


@pytest.mark.parametrize("backend", ["feishu_webhook", "feishu_message", "feishu_ephemeral"])
@pytest.mark.parametrize(("removed", "card", "field"), V2_CASES, ids=V2_IDS)
def test_cardq_refuses_a_removed_component_in_a_v2_card(
    backend: str, removed: str, card: dict[str, Any], field: str
) -> None:
    error = refusal(request(backend, card))
    assert (error.field, error.code) == (field, "card_v2_removed")
    assert "card JSON 2.0 removed" in error.reason and removed in error.reason


@pytest.mark.parametrize(("removed", "card", "field"), V2_CASES, ids=V2_IDS)
def test_cardq_refuses_it_in_an_update_and_inside_a_content_string(
    removed: str, card: dict[str, Any], field: str
) -> None:
    update = request("feishu_message", card, operation="update", target={"message_id": "om_1"})
    assert refusal(update).field == field
    as_string = request("feishu_message", orjson.dumps(card).decode())
    assert refusal(as_string).field == field


@pytest.mark.parametrize(("post", "path", "reason"), BAD_POSTS, ids=BAD_POST_IDS)
def test_cardq_refuses_a_malformed_post_with_its_path(post: Any, path: str, reason: str) -> None:
    webhook = request("feishu_webhook", {"post": {"en_us": {"content": post}}}, "post")
    error = refusal(webhook)
    assert error.field == f"content.post.en_us.{path}"
    assert reason in error.reason
    im = request("feishu_message", {"zh_cn": {"title": "t", "content": post}}, "post")
    assert refusal(im).field == f"content.zh_cn.{path}"


def test_cardq_refuses_a_post_locale_that_is_not_an_object() -> None:
    error = refusal(request("feishu_message", {"zh_cn": [[TEXT]]}, "post"))
    assert error.field == "content.zh_cn"


@pytest.mark.parametrize("backend", ["feishu_webhook", "feishu_message", "feishu_ephemeral"])
def test_cardq_passes_unknown_components_and_v1_cards_with_what_only_v2_removed(
    backend: str,
) -> None:
    for card in (UNKNOWN_V2, V1_WITH_V2_REMOVED):
        sent = copy.deepcopy(card)
        assert from_dict(request(backend, sent)).content == card


def test_cardq_passes_a_post_of_paragraphs_with_unknown_nodes() -> None:
    from_dict(request("feishu_webhook", {"post": {"en_us": POST_LOCALE_OK}}, "post"))
    from_dict(request("feishu_message", {"en_us": POST_LOCALE_OK}, "post"))


# ------------------------------------------------------------ the simulator, directly over HTTP


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        simulator.add_webhook(HOOK)
        simulator.add_app(APP, APP_SECRET)
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Platform:
    """Wire bodies straight to the simulator, as a client that skips cardq's checks would."""

    def __init__(self, http: aiohttp.ClientSession, sim: Simulator) -> None:
        self.http, self.sim, self.token = http, sim, ""
        self.shared_id = ""  # a shared card this app sent, to update

    async def post(self, path: str, body: Any, method: str = "POST") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(
            method, self.sim.base_url + path, json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def login(self) -> None:
        path = "/open-apis/auth/v3/tenant_access_token/internal"
        _, answer = await self.post(path, {"app_id": APP, "app_secret": APP_SECRET})
        self.token = answer["tenant_access_token"]
        _, sent = await self.im("interactive", V1_WITH_V2_REMOVED)
        assert sent["code"] == 0, sent
        self.shared_id = sent["data"]["message_id"]

    async def webhook(self, msg_type: str, content: Any) -> tuple[int, Any]:
        key = "card" if msg_type == "interactive" else "content"
        return await self.post(
            f"/open-apis/bot/v2/hook/{HOOK}", {"msg_type": msg_type, key: content}
        )

    async def im(self, msg_type: str, content: Any) -> tuple[int, Any]:
        body = {
            "receive_id": "oc_1",
            "msg_type": msg_type,
            "content": orjson.dumps(content).decode(),
        }
        return await self.post("/open-apis/im/v1/messages?receive_id_type=chat_id", body)

    async def update(self, card: Any) -> tuple[int, Any]:
        body = {"content": orjson.dumps(card).decode()}
        return await self.post(f"/open-apis/im/v1/messages/{self.shared_id}", body, "PATCH")

    async def ephemeral(self, card: Any) -> tuple[int, Any]:
        body = {"chat_id": "oc_1", "open_id": "ou_1", "msg_type": "interactive", "card": card}
        return await self.post("/open-apis/ephemeral/v1/send", body)


@pytest.fixture
async def platform(http: aiohttp.ClientSession, sim: Simulator) -> Platform:
    """Logged in, with one shared card JSON 1.0 card sent (holding action and i18n_elements)."""
    client = Platform(http, sim)
    await client.login()
    assert len(sim.accepted) == 1
    return client


@pytest.mark.parametrize(("removed", "card", "field"), V2_CASES, ids=V2_IDS)
async def test_the_simulator_refuses_a_removed_component_as_the_platform_does(
    platform: Platform, sim: Simulator, removed: str, card: dict[str, Any], field: str
) -> None:
    kind = "tag" if removed in V2_REMOVED_TAGS else "property"
    for status, answer in [
        await platform.im("interactive", card),
        await platform.ephemeral(card),
        await platform.update(card),
    ]:
        assert (status, answer["code"]) == (400, 230099), answer
        assert f"ErrorValue: unsupported {kind} {removed}" in answer["msg"]
        error = feishu_errors.classify(status, {}, answer)
        assert isinstance(error, Rejected)
        assert error.platform_subcode == 200861
    status, answer = await platform.webhook("interactive", card)
    assert answer["code"] == 19002, answer
    assert f"unsupported {kind} {removed}" in answer["msg"]
    assert len(sim.accepted) == 1  # only the fixture's card


@pytest.mark.parametrize(("post", "path", "reason"), BAD_POSTS, ids=BAD_POST_IDS)
async def test_the_simulator_refuses_a_malformed_post(
    platform: Platform, sim: Simulator, post: Any, path: str, reason: str
) -> None:
    status, answer = await platform.webhook("post", {"post": {"en_us": {"content": post}}})
    assert answer["code"] == 19002, answer
    status, answer = await platform.im("post", {"zh_cn": {"title": "t", "content": post}})
    assert (status, answer["code"]) == (400, 230001), answer
    assert "post zh_cn" in answer["msg"]
    assert len(sim.accepted) == 1  # only the fixture's card


async def test_the_simulator_passes_unknown_components_and_v1_cards_with_what_v2_removed(
    platform: Platform, sim: Simulator
) -> None:
    for card in (UNKNOWN_V2, V1_WITH_V2_REMOVED):
        for status, answer in [
            await platform.webhook("interactive", card),
            await platform.im("interactive", card),
            await platform.ephemeral(card),
            await platform.update(card),
        ]:
            assert (status, answer["code"]) == (200, 0), answer
    assert (await platform.webhook("post", {"post": {"en_us": POST_LOCALE_OK}}))[1]["code"] == 0
    assert (await platform.im("post", {"en_us": POST_LOCALE_OK}))[1]["code"] == 0
    assert len(sim.accepted) == 1 + 8 + 2
    assert [m.content_decoded for m in sim.accepted if m.operation == "update"] == [
        UNKNOWN_V2,
        V1_WITH_V2_REMOVED,
    ]
