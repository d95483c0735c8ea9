"""The backend simulator over real HTTP, as the worker's adapters will meet it.

Each platform's documented answers (``backend-facts.md``), the rate windows, the token
endpoint, server-side idempotency, faults, the control API, the CLI, and every JSON
example of the seed documents, sent as wire bodies and through the real adapters.
Time-dependent tests drive the simulator's clock (``FakeClock``) instead of sleeping;
one test per window kind runs on real time with ``time_scale`` to prove the wiring.
"""

# ruff: noqa: E501  (the seed documents below are quoted verbatim, long lines included)

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cardq.simulator import Faults, Simulator, SimulatorConfig
from cardq.simulator._windows import Windows
from cardq.simulator.cli import main as cli_main
from cardq.testing import FakeClock

HOOK = "hook-plain"
SIGNED = "hook-signed"
SECRET = "s3cr3t-signing"
KEYWORDED = "hook-keyword"
APP, APP_SECRET = "cli_app_a", "app-secret-a"
APP2, APP2_SECRET = "cli_app_b", "app-secret-b"
ROBOT, ROBOT_SECRET = "robot_1", "robot-secret-1"

WEBHOOK = "/open-apis/bot/v2/hook/"
TOKEN = "/open-apis/auth/v3/tenant_access_token/internal"
IM = "/open-apis/im/v1/messages"
EPHEMERAL = "/open-apis/ephemeral/v1/"
MINDOFFICE = "/open-platform/api/robot/group/send/card_message"
ROBOT_HEADERS = {"app-id": ROBOT, "app-secret": ROBOT_SECRET}
REPO = Path(__file__).resolve().parent.parent

SHARED_CARD = {"config": {"update_multi": True}, "elements": [{"tag": "markdown", "content": "v1"}]}
PRIVATE_CARD = {"elements": [{"tag": "markdown", "content": "not shared"}]}
CARD_V2 = {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "v2"}]}}


# --------------------------------------------------------------------------- seeds

SEED_000_CARD = r"""
{
  "config": {
    "wide_screen_mode": true
  },
  "elements": [
    {
      "alt": {
        "content": "",
        "tag": "plain_text"
      },
      "img_key": "img_v2_bfd72a81-1533-4699-995d-12a675708d0g",
      "tag": "img"
    },
    {
      "tag": "div",
      "text": {
        "content": "你是否曾因为一本书而产生心灵共振，开始感悟人生？\n你有哪些想极力推荐给他人的珍藏好书？\n\n加入 **4·23 飞书读书节**，分享你的**挚爱书单**及**读书笔记**，**赢取千元读书礼**！\n\n📬 填写问卷，晒出你的珍藏好书\n😍 想知道其他人都推荐了哪些好书？马上[入群围观](https://open.feishu.cn/)\n📝 用[读书笔记模板](https://open.feishu.cn/)（桌面端打开），记录你的心得体会\n🙌 更有惊喜特邀嘉宾 4月12日起带你共读",
        "tag": "lark_md"
      }
    },
    {
      "actions": [
        {
          "tag": "button",
          "text": {
            "content": "立即推荐好书",
            "tag": "plain_text"
          },
          "type": "primary",
          "url": "https://open.feishu.cn/"
        },
        {
          "tag": "button",
          "text": {
            "content": "查看活动指南",
            "tag": "plain_text"
          },
          "type": "default",
          "url": "https://open.feishu.cn/"
        }
      ],
      "tag": "action"
    }
  ],
  "header": {
    "template": "turquoise",
    "title": {
      "content": "📚晒挚爱好书，赢读书礼金",
      "tag": "plain_text"
    }
  }
}
"""

SEED_001_BODY_0 = r"""
{
    "group_id": "ccc",
    "content": "{\"text\":\" 1123222233333 \"}",
    "msg_type": "text"
}
"""

SEED_001_BODY_1 = r"""
{
  "group_id": "{{group-id}}",
  "content": "{\"text\":\"## firstline  second l    ne  <at user_id='all'>所有人</at> <at user_id='{{robot-team-user-id}}'>如易</at> \"}",
  "msg_type": "text"
}
"""

SEED_001_BODY_2 = r"""
{
    "group_id": "ccc",
    "content": "{\"text\":\" #### markdown格式的文本 \\n + 11111 \\n + 222233333 \"}",
    "msg_type": "markdown"
}
"""

SEED_001_BODY_3 = r"""
{
  "group_id": "{{group-id}}",
  "content": "{\"text\":\" firstline  second l    ne  <at user_id='all'>所有人</at> <at user_id='{{robot-team-user-id}}'>如易</at> \"}",
  "msg_type": "markdown"
}
"""

SEED_001_BODY_4 = r"""
{
    "group_id": "xxx",
    "content": "[{\"content\":[{\"text\":\"test\",\"type\":\"text\"}],\"type\":\"paragraph\"}]",
    "msg_type": "rich_text"
}
"""

SEED_001_BODY_5 = r"""
{
  "group_id": "{{group-id}}",
  "content": "[{\"type\":\"paragraph\",\"content\":[{\"type\":\"mention\",\"attrs\":{\"id\":\"all\",\"label\":\"所有人\"}},{\"type\":\"mention\",\"attrs\":{\"id\":\"{{robot-team-user-id}}\",\"label\":\"{{name}}\"}}]},{\"type\":\"paragraph\",\"content\":[{\"type\":\"text\",\"text\":\"文本\"}]},{\"type\":\"paragraph\",\"content\":[{\"type\":\"text\",\"marks\":[{\"type\":\"bold\"}],\"text\":\"加粗文本\"}]},{\"type\":\"image\",\"attrs\":{\"src\":\"https://new-mind-test-1252325870.cos.ap-beijing.myqcloud.com/xxxx/16692901972731669290196941/image.png\",\"alt\":null,\"title\":null}}]",
  "msg_type": "rich_text"
}
"""

SEED_001_BODY_6 = r"""
{
    "group_id": "xxx",
    "content": "{\"config\":{\"enable_forward\":true,\"wide_screen_mode\":true},\"elements\":[{\"tag\":\"markdown\",\"content\":\"触发时间:2024-07-2509:45:00\n 收到一条通知,请查看\n\n\",\"action\":null},{\"tag\":\"action\",\"content\":\"\",\"action\":[{\"tag\":\"button\",\"template\":\"red\",\"text\":{\"content\":\"未处理\",\"tag\":\"plain_text\"},\"type\":\"view\",\"url\":\"http:/?id=1\"}]}],\"header\":{\"template\":\"red\",\"title\":{\"content\":\"触发中\"}}}",
    "msg_type": "interactive"
}
"""

SEED_001_BODY_7 = r"""
{
    "group_id": "{{group-id}}",
    "content": "{\"elements\":[{\"action\":null,\"content\":\" ### 触发时间:2024-07-25 09:45:00  收到一条报警 <at user_id=\\\"all\\\">所有人</at> <at user_id=\\\"{{robot-team-user-id}}\\\">如易</at> \",\"tag\":\"markdown\"},{\"content\":[{\"attrs\":{\"id\":\"all\",\"label\":\"所有人\"},\"type\":\"mention\"},{\"attrs\":{\"id\":\"{{robot-team-user-id}}\",\"label\":\"{{name}}\"},\"type\":\"mention\"},{\"content\":[{\"text\":\"帖子发布人:\",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"FreakyFknTachy\",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"  \",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"帖子操作人:\",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"xxx\",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"  \",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"状态调整:\",\"type\":\"text\"}],\"type\":\"paragraph\"},{\"content\":[{\"text\":\"已接收\",\"type\":\"text\"}],\"type\":\"paragraph\"}],\"tag\":\"rich_text\"},{\"action\":[{\"tag\":\"button\",\"template\":\"red\",\"text\":{\"content\":\"未处理\",\"tag\":\"plain_text\"},\"type\":\"view\",\"url\":\"http:/?id=1\"}],\"content\":\"\",\"tag\":\"action\"}]}",
    "msg_type": "interactive"
}
"""

SEED_001_MENTION_NODE = r"""
{"type":"paragraph","content":[{"type":"mention","attrs":{"id":"all","label":"所有人"}},{"type":"mention","attrs":{"id":"xxxx","label":"如易"}}]}
"""

SEED_001_CURL = r"""
curl -X POST --location "https://open.mindoffice.cn/open-platform/api/robot/group/send/card_message" \
    -H "Content-Type: application/json" \
    -H "APP-ID: robot_xxx" \
    -H "APP-Secret: xxx" \
    -H "X-Request-Id: xxx" \
    -d "{
          \"group_id\": \"xxx\",
          \"content\": \"[{\\\"type\\\":\\\"paragraph\\\",\\\"content\\\":[{\\\"type\\\":\\\"text\\\",\\\"text\\\":\\\"文本\\\"}]},{\\\"type\\\":\\\"paragraph\\\",\\\"content\\\":[{\\\"type\\\":\\\"text\\\",\\\"marks\\\":[{\\\"type\\\":\\\"bold\\\"}],\\\"text\\\":\\\"加粗文本\\\"}]},{\\\"type\\\":\\\"image\\\",\\\"attrs\\\":{\\\"src\\\":\\\"https://new-mind-test-1252325870.cos.ap-beijing.myqcloud.com/xxxx/16692901972731669290196941/image.png\\\",\\\"alt\\\":null,\\\"title\\\":null}}]\",
          \"msg_type\": \"rich_text\"
        }"
"""

SEED_002_HEADER = r"""
{
//在header中描述卡片的标题
"header": {
"title": {
"content": "XX项目3日留存"//卡片标题文案内容
},
"template":"red"//卡片标题的主题色
}
}
"""

SEED_002_RICH_TEXT = r"""
{"elements": [
{
"tag": "rich_text",
"content": [
{
"type": "paragraph",
"content": [
{
"type": "text",
"marks": [
{
"type": "bold"
}
],
"text": "所有项目180天收入"
},
{ // @用户
"type": "mention",
"attrs": {
"id": "9h1y8qd933bwtkip_nf4xw6i763dqfmcw",
"label": "帆导2号"
}
}
]
},
{
"type": "paragraph",
"content": [
{
"type": "text",
"text": "最后更新时间:2023-7-7发布人:桃子(每月3日09:15 推送)"
}
]
}
]
}
]
}
"""

SEED_002_MARKDOWN = r"""
{
"elements":[{
"tag": "markdown",
"content": "**总结性分析总览**\n 哈哈哈哈 <at user_id='xxxx'>用户名</at> 解决了 <at user_id='all'>所有人</at> "
}]
}
"""

SEED_002_ACTION = r"""
{"elements":[
{
"tag": "action",
"action": [
{
"tag": "button",
"text": {
"content": "深度分析",
"tag": "plain_text"
},
"action_platform": "all",
"type": "view",
"template": "red",
"url": "https://mind.im30.net/"
},
{
"tag": "button",
"text": {
"content": "再次获取",
"tag": "plain_text"
},
"action_platform": "all",
"type": "click",
"template": "red",
"event": "mind.message.event.guide",
"value": {
"card_id":"$card_id",
"key": "value" //定义用户点击按钮后,POST回调地址的返回内容。参数中的key、value可以替换为任意值
}
}
]
}
]
}
"""

SEED_003_CARD = r"""
{
  "i18n_elements": {
    "zh_cn": [
      {
        "tag": "div",
        "text": {
          "content": "发布审核：",
          "tag": "plain_text"
        }
      },
      {
        "tag": "action",
        "actions": [
          {
            "tag": "button",
            "text": {
              "tag": "plain_text",
              "content": "完成「全量发布」"
            },
            "value": {
              "button_type": "public_publish",
              "button_id": "162695861xxxx"
            },
            "type": "primary"
          }
        ]
      }
    ]
  }
}
"""

SEED_003_BODY = r"""
{
    "receive_id": "ou_9e038156a0a7aaa29e6c58b6e1b2xxxx",
    "msg_type": "interactive",
    "content": "{\"i18n_elements\":{\"zh_cn\":[{\"tag\":\"div\",\"text\":{\"content\":\"发布审核：\",\"tag\":\"plain_text\"}},{\"tag\":\"action\",\"actions\":[{\"tag\":\"button\",\"text\":{\"tag\":\"plain_text\",\"content\":\"完成「全量发布」\"},\"value\":{\"button_type\":\"public_publish\",\"button_id\":\"162695861xxx\"},\"type\":\"primary\"}]}]}}"
}
"""

SEED_004_BODY_V2 = r"""
{
    "open_id": "ou_b9600a00cda86b8fad2378eafe3abcef",
    "chat_id": "oc_20aa1ed9b18ba49f73f5773453aabcef",
    "msg_type": "interactive",
    "card": {  // �处传入完整�片 JSON，支� 1.0 和 2.0 结�
        "schema": "2.0",
        "config": {
            "update_multi": true,
            "style": {
                "text_size": {
                    "normal_v2": {
                        "default": "normal",
                        "pc": "normal",
                        "mobile": "heading"
                    }
                }
            }
        },
        "body": {
            "direction": "vertical",
            "padding": "12px 12px 12px 12px",
            "elements": [
                {
                    "tag": "markdown",
                    "content": "西湖，���国浙江���市西湖区龙井路1�，��市区西部，汇水�积为21.22平方�米，湖��积为6.38平方�米。",
                    "text_align": "left",
                    "text_size": "normal_v2",
                    "margin": "0px 0px 0px 0px"
                },
                {
                    "tag": "button",
                    "text": {
                        "tag": "plain_text",
                        "content": "ğ��更多景点介�"
                    },
                    "type": "default",
                    "width": "default",
                    "size": "medium",
                    "behaviors": [
                        {
                            "type": "open_url",
                            "default_url": "https://baike.baidu.com/item/%E8%A5%BF%E6%B9%96/4668821",
                            "pc_url": "",
                            "ios_url": "",
                            "android_url": ""
                        }
                    ],
                    "margin": "0px 0px 0px 0px"
                }
            ]
        },
        "header": {
            "title": {
                "tag": "plain_text",
                "content": "今日旅游��"
            },
            "subtitle": {
                "tag": "plain_text",
                "content": ""
            },
            "template": "blue",
            "padding": "12px 12px 12px 12px"
        }
    }
}
"""

SEED_004_BODY_TEMPLATE = r"""
{
    "open_id": "ou_b9600a00cda86b8fad2378eafe3abcef",
    "chat_id": "oc_20aa1ed9b18ba49f73f5773453aabcef",
    "msg_type": "interactive",
    "card": {
        "type": "template",
        "data": {
            "template_id": "AAqigYkzabcef"  // �处填写�际�片模� ID
        }
    }
}
"""


def strip_comments(text: str) -> str:
    """Drop ``//`` comments outside JSON strings (a URL inside a string keeps its ``//``)."""
    out: list[str] = []
    in_string = escaped = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def seed(text: str) -> Any:
    return orjson.loads(strip_comments(text))


def curl_body(command: str) -> str:
    """The ``-d "…"`` argument of a curl command, unescaped as bash does in double quotes."""
    start = command.index('-d "') + len('-d "')
    end = command.rindex('"')
    return re.sub(r'\\([$`"\\])', r"\1", command[start:end])


SEED_001_BODIES = [
    SEED_001_BODY_0,
    SEED_001_BODY_1,
    SEED_001_BODY_2,
    SEED_001_BODY_3,
    SEED_001_BODY_4,
    SEED_001_BODY_5,
    SEED_001_BODY_6,
    SEED_001_BODY_7,
]


# --------------------------------------------------------------------------- harness


Start = Callable[..., Awaitable[Simulator]]
Answer = tuple[int, dict[str, Any], Mapping[str, str]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Simulator] = []

    async def factory(
        config: SimulatorConfig | None = None, clock: FakeClock | None = None
    ) -> Simulator:
        sim = Simulator(config) if clock is None else Simulator(config, clock=clock)
        sim.add_webhook(HOOK)
        sim.add_webhook(SIGNED, SECRET)
        sim.add_webhook(KEYWORDED, keywords=["alert", "告警"])
        sim.add_app(APP, APP_SECRET)
        sim.add_app(APP2, APP2_SECRET)
        sim.add_mindoffice_robot(ROBOT, ROBOT_SECRET)
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.stop()


@pytest.fixture
async def sim(start: Start) -> Simulator:
    return await start()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(10_000.0)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    data = raw if raw is not None else orjson.dumps(body)
    sent = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    async with http.request(method, url, data=data, headers=sent) as resp:
        return resp.status, orjson.loads(await resp.read()), resp.headers


async def hook(http: aiohttp.ClientSession, sim: Simulator, body: Any, token: str = HOOK) -> Answer:
    return await call(http, "POST", sim.base_url + WEBHOOK + token, body)


def signed(body: dict[str, Any], timestamp: int, secret: str = SECRET) -> dict[str, Any]:
    key = f"{timestamp}\n{secret}".encode()
    sign = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    return {**body, "timestamp": str(timestamp), "sign": sign}


async def tenant_token(
    http: aiohttp.ClientSession, sim: Simulator, app: str = APP, secret: str = APP_SECRET
) -> str:
    status, data, _ = await call(
        http, "POST", sim.base_url + TOKEN, {"app_id": app, "app_secret": secret}
    )
    assert (status, data["code"]) == (200, 0), data
    token = data["tenant_access_token"]
    assert isinstance(token, str)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def im_send(
    http: aiohttp.ClientSession,
    sim: Simulator,
    token: str,
    receive_id: str = "oc_chat",
    *,
    msg_type: str = "text",
    content: Any = None,
    uuid: str | None = None,
    id_type: str = "chat_id",
) -> Answer:
    if content is None:
        content = {"text": "hello"}
    body: dict[str, Any] = {
        "receive_id": receive_id,
        "msg_type": msg_type,
        "content": orjson.dumps(content).decode() if not isinstance(content, str) else content,
    }
    if uuid is not None:
        body["uuid"] = uuid
    url = f"{sim.base_url}{IM}?receive_id_type={id_type}"
    return await call(http, "POST", url, body, headers=bearer(token))


async def shared_card_sent(http: aiohttp.ClientSession, sim: Simulator, token: str) -> str:
    _, data, _ = await im_send(http, sim, token, msg_type="interactive", content=SHARED_CARD)
    assert data["code"] == 0, data
    return str(data["data"]["message_id"])


async def im_update(
    http: aiohttp.ClientSession, sim: Simulator, token: str, message_id: str, card: Any
) -> Answer:
    body = {"content": orjson.dumps(card).decode()}
    return await call(
        http, "PATCH", f"{sim.base_url}{IM}/{message_id}", body, headers=bearer(token)
    )


async def ephemeral(
    http: aiohttp.ClientSession, sim: Simulator, token: str, op: str, body: Any
) -> Answer:
    return await call(http, "POST", sim.base_url + EPHEMERAL + op, body, headers=bearer(token))


async def mindoffice(
    http: aiohttp.ClientSession,
    sim: Simulator,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    sent = dict(ROBOT_HEADERS if headers is None else headers)
    return await call(http, "POST", sim.base_url + MINDOFFICE, body, raw=raw, headers=sent)


def mo_body(msg_type: str, content: Any, group: str = "grp_1") -> dict[str, Any]:
    return {"group_id": group, "msg_type": msg_type, "content": orjson.dumps(content).decode()}


# --------------------------------------------------------------------------- windows


def test_window_admits_at_most_n_in_any_interval() -> None:
    windows = Windows()
    limits = ((3, 1.0),)
    for t in (0.0, 0.5, 0.9):
        assert windows.blocked("k", limits, 1.0, t) == (0, 0.0)
        windows.record("k", limits, 1.0, t)
    limit, wait = windows.blocked("k", limits, 1.0, 0.95)
    assert limit == 3
    assert wait == pytest.approx(0.05)
    # An arrival exactly one window ago has left; the other two have not.
    assert windows.blocked("k", limits, 1.0, 1.0) == (0, 0.0)
    windows.record("k", limits, 1.0, 1.0)
    assert windows.blocked("k", limits, 1.0, 1.2)[1] == pytest.approx(0.3)
    # time_scale shrinks the window; other keys are independent.
    assert windows.blocked("k", limits, 0.1, 1.2) == (0, 0.0)
    assert windows.blocked("other", limits, 1.0, 1.0) == (0, 0.0)


def test_window_reports_the_longest_wait_of_several() -> None:
    windows = Windows()
    limits = ((2, 1.0), (3, 60.0))
    for t in (0.0, 2.0, 4.0):
        windows.record("k", limits, 1.0, t)
    limit, wait = windows.blocked("k", limits, 1.0, 10.0)  # the 1 s window is free again
    assert limit == 3
    assert wait == pytest.approx(50.0)


# --------------------------------------------------------------------------- webhook


async def test_webhook_success(http: aiohttp.ClientSession, sim: Simulator) -> None:
    body = {"msg_type": "text", "content": {"text": "hi"}}
    status, data, _ = await hook(http, sim, body)
    assert status == 200
    assert data == {
        "code": 0,
        "msg": "success",
        "data": {},
        "StatusCode": 0,
        "StatusMessage": "success",
    }
    (accepted,) = sim.accepted
    assert accepted.backend == "feishu_webhook"
    assert accepted.operation == "send"
    assert accepted.destination == f"webhook:{HOOK}"
    assert accepted.idempotency is None
    assert accepted.message_id is None
    assert accepted.body == body
    assert accepted.content_decoded == {"text": "hi"}


@pytest.mark.parametrize(
    "body",
    [
        {
            "msg_type": "post",
            "content": {
                "post": {"zh_cn": {"title": "t", "content": [[{"tag": "text", "text": "x"}]]}}
            },
        },
        {"msg_type": "image", "content": {"image_key": "img_v2_1"}},
        {"msg_type": "share_chat", "content": {"share_chat_id": "oc_1"}},
        {"msg_type": "interactive", "card": CARD_V2},
        {"msg_type": "interactive", "card": {"type": "template", "data": {"template_id": "AAq1"}}},
    ],
)
async def test_webhook_msg_types(
    http: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]
) -> None:
    status, data, _ = await hook(http, sim, body)
    assert (status, data["code"]) == (200, 0), data


async def test_webhook_signature(http: aiohttp.ClientSession, sim: Simulator) -> None:
    body = {"msg_type": "text", "content": {"text": "signed"}}
    now = int(time.time())
    status, data, _ = await hook(http, sim, signed(body, now), SIGNED)
    assert (status, data["code"]) == (200, 0)
    for bad in (
        signed(body, now, secret="wrong"),
        signed(body, now - 3601),  # correctly signed, but over an hour old
        body,  # not signed at all
        {**signed(body, now), "timestamp": str(now + 1)},  # sign of another timestamp
    ):
        status, data, _ = await hook(http, sim, bad, SIGNED)
        assert (status, data["code"]) == (200, 19021), bad
    assert len(sim.accepted) == 1
    assert sim.stats.rejected[19021] == 4


async def test_webhook_unknown_token(http: aiohttp.ClientSession, sim: Simulator) -> None:
    status, data, _ = await hook(http, sim, {"msg_type": "text", "content": {"text": "x"}}, "nope")
    assert (status, data["code"]) == (200, 19001)


async def test_webhook_body_over_20_kb(http: aiohttp.ClientSession, sim: Simulator) -> None:
    filler = "x" * (20 * 1024)
    status, data, _ = await hook(http, sim, {"msg_type": "text", "content": {"text": filler}})
    assert (status, data["code"]) == (400, 9499)
    # Just under the limit is fine.
    text = "x" * (20 * 1024 - 60)
    status, data, _ = await hook(http, sim, {"msg_type": "text", "content": {"text": text}})
    assert (status, data["code"]) == (200, 0)


@pytest.mark.parametrize(
    "body",
    [
        {"msg_type": "markdown", "content": {"text": "x"}},
        {"msg_type": "text", "content": {"content": "x"}},
        {"msg_type": "text", "content": '{"text": "a string, not an object"}'},
        {"msg_type": "image", "content": {}},
        {"msg_type": "post", "content": {"post": {}}},
        {"msg_type": "interactive", "content": SHARED_CARD},  # a card goes in `card`
        {"msg_type": "interactive", "card": "{not json"},
        {"msg_type": "interactive", "card": {"header": {}}},
        {"msg_type": "interactive", "card": {"schema": "2.0", "elements": []}},
    ],
)
async def test_webhook_bad_shapes(
    http: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]
) -> None:
    status, data, _ = await hook(http, sim, body)
    assert (status, data["code"]) == (200, 19002), data
    assert sim.accepted == []


async def test_webhook_keywords(http: aiohttp.ClientSession, sim: Simulator) -> None:
    status, data, _ = await hook(
        http, sim, {"msg_type": "text", "content": {"text": "hi"}}, KEYWORDED
    )
    assert (status, data["code"]) == (200, 19024)
    for text in ("disk alert", "磁盘告警"):
        body = {"msg_type": "text", "content": {"text": text}}
        status, data, _ = await hook(http, sim, body, KEYWORDED)
        assert (status, data["code"]) == (200, 0)


async def test_webhook_rate_limit_on_real_time(http: aiohttp.ClientSession, start: Start) -> None:
    sim = await start(SimulatorConfig(time_scale=0.2))  # 5 per 0.2 s, 100 per 12 s
    body = {"msg_type": "text", "content": {"text": "x"}}
    answers = await asyncio.gather(*(hook(http, sim, body) for _ in range(7)))
    codes = sorted(data["code"] for _, data, _ in answers)
    assert codes == [0] * 5 + [11232] * 2
    assert all(status == 200 for status, _, _ in answers)
    assert sim.stats.throttle_answers["feishu_webhook"] == 2
    await asyncio.sleep(0.25)  # the window passing is the condition under test
    status, data, _ = await hook(http, sim, body)
    assert (status, data["code"]) == (200, 0)


async def test_webhook_minute_window(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(clock=clock)
    body = {"msg_type": "text", "content": {"text": "x"}}
    for _ in range(20):  # 100 sends in 20 s: never 6 in one second
        for _ in range(5):
            assert (await hook(http, sim, body))[1]["code"] == 0
        clock.advance(1.0)
    assert (await hook(http, sim, body))[1]["code"] == 11232  # 101st within the minute
    clock.advance(40.0)  # the first second's five leave the minute window
    assert (await hook(http, sim, body))[1]["code"] == 0


async def test_webhook_throttle_answer_variants(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(
        SimulatorConfig(webhook_limits=((1, 1.0),), webhook_throttle_answer="9499"), clock
    )
    body = {"msg_type": "text", "content": {"text": "x"}}
    await hook(http, sim, body)
    status, data, _ = await hook(http, sim, body)
    assert (status, data["code"], data["msg"]) == (400, 9499, "too many request")
    sim.config.webhook_throttle_answer = "alternate"
    seen = [(await hook(http, sim, body))[:2] for _ in range(2)]
    assert [(s, d["code"]) for s, d in seen] == [(200, 11232), (400, 9499)]


# --------------------------------------------------------------------------- tokens


async def test_token_issue_reuse_rotation_and_expiry(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(SimulatorConfig(token_lifetime_s=100.0), clock)
    url = sim.base_url + TOKEN
    creds = {"app_id": APP, "app_secret": APP_SECRET}
    _, first, _ = await call(http, "POST", url, creds)
    assert first["code"] == 0
    assert first["msg"] == "ok"
    assert first["expire"] == 100
    assert first["tenant_access_token"].startswith("t-")
    clock.advance(50.0)  # half its life left: the same token, with what is left
    _, again, _ = await call(http, "POST", url, creds)
    assert again["tenant_access_token"] == first["tenant_access_token"]
    assert again["expire"] == 50
    clock.advance(30.0)  # a fifth left: under the quarter, so a new one
    _, fresh, _ = await call(http, "POST", url, creds)
    assert fresh["tenant_access_token"] != first["tenant_access_token"]
    assert fresh["expire"] == 100
    old, new = first["tenant_access_token"], fresh["tenant_access_token"]
    assert (await im_send(http, sim, old))[1]["code"] == 0  # both valid for now
    clock.advance(21.0)
    status, data, _ = await im_send(http, sim, old)
    assert (status, data["code"]) == (400, 99991663)
    assert (await im_send(http, sim, new))[1]["code"] == 0
    assert sim.stats.token_requests[APP] == 3


async def test_token_refusals(http: aiohttp.ClientSession, sim: Simulator) -> None:
    url = sim.base_url + TOKEN
    _, data, _ = await call(http, "POST", url, {"app_id": APP, "app_secret": "wrong"})
    assert (data["code"], data["msg"]) == (10014, "app secret invalid")
    _, data, _ = await call(http, "POST", url, {"app_id": "cli_unknown", "app_secret": "x"})
    assert data["code"] == 10003
    assert "tenant_access_token" not in data


async def test_authorization_refusals_and_revocation(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    url = f"{sim.base_url}{IM}?receive_id_type=chat_id"
    body = {"receive_id": "oc_1", "msg_type": "text", "content": '{"text":"x"}'}
    for headers, code in (
        ({}, 99991661),
        ({"Authorization": "Bearer "}, 99991661),
        ({"Authorization": "Basic abc"}, 99991671),
        ({"Authorization": "Bearer t-never-issued"}, 99991663),
    ):
        status, data, _ = await call(http, "POST", url, body, headers=headers)
        assert (status, data["code"]) == (400, code)
    token = await tenant_token(http, sim)
    assert (await im_send(http, sim, token))[1]["code"] == 0
    sim.faults.revoke_tokens()
    status, data, _ = await im_send(http, sim, token)
    assert (status, data["code"]) == (400, 99991663)
    fresh = await tenant_token(http, sim)
    assert fresh != token
    assert (await im_send(http, sim, fresh))[1]["code"] == 0


# --------------------------------------------------------------------------- IM API


async def test_im_send(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    status, data, _ = await im_send(http, sim, token, "ou_user", id_type="open_id", uuid="u-1")
    assert (status, data["code"]) == (200, 0)
    message_id = data["data"]["message_id"]
    assert re.fullmatch(r"om_[0-9a-f]{32}", message_id)
    (accepted,) = sim.accepted
    assert accepted.backend == "feishu_message"
    assert accepted.destination == "open_id:ou_user"
    assert accepted.idempotency == "u-1"
    assert accepted.message_id == message_id
    assert accepted.body["content"] == '{"text":"hello"}'
    assert accepted.content_decoded == {"text": "hello"}
    assert accepted.sender == APP


@pytest.mark.parametrize(
    ("msg_type", "content", "code"),
    [
        ("text", {"text": "an object, not a string"}, 230001),
        ("text", "not json", 230001),
        ("text", '{"content": "no text"}', 230001),
        ("image", '{"file_key": "x"}', 230001),
        ("markdown", '{"text": "x"}', 230001),
        ("interactive", "{not json", 230099),
        ("interactive", '{"header": {}}', 230099),
        (
            "interactive",
            orjson.dumps({"schema": "2.0", "body": {"elements": [{"tag": "div"}] * 201}}).decode(),
            230099,
        ),
        ("interactive", orjson.dumps({"elements": [{"tag": "table"}] * 6}).decode(), 230099),
        (
            "interactive",
            orjson.dumps({"elements": [{"tag": "div", "text": "x" * 31_000}]}).decode(),
            230025,
        ),
        ("text", orjson.dumps({"text": "字" * 52_000}).decode(), 230025),
    ],
)
async def test_im_content_refusals(
    http: aiohttp.ClientSession, sim: Simulator, msg_type: str, content: Any, code: int
) -> None:
    token = await tenant_token(http, sim)
    body = {"receive_id": "oc_1", "msg_type": msg_type, "content": content}
    url = f"{sim.base_url}{IM}?receive_id_type=chat_id"
    status, data, _ = await call(http, "POST", url, body, headers=bearer(token))
    assert (status, data["code"]) == (400, code), data
    if content == "{not json":
        assert "ext=ErrCode: 200621" in data["msg"]
    assert sim.accepted == []


async def test_im_request_refusals(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    assert (await im_send(http, sim, token, uuid="u" * 51))[1]["code"] == 230001
    assert (await im_send(http, sim, token, id_type="phone"))[1]["code"] == 230001
    status, data, _ = await call(
        http,
        "POST",
        f"{sim.base_url}{IM}?receive_id_type=chat_id",
        {"msg_type": "text", "content": "{}"},
        headers=bearer(token),
    )
    assert (status, data["code"]) == (400, 230001)
    assert (await im_send(http, sim, token, uuid="u" * 50))[1]["code"] == 0


async def test_im_uuid_dedupe(http: aiohttp.ClientSession, start: Start, clock: FakeClock) -> None:
    sim = await start(clock=clock)
    token = await tenant_token(http, sim)
    _, first, _ = await im_send(http, sim, token, uuid="req-1")
    clock.advance(1.0)
    _, second, _ = await im_send(http, sim, token, uuid="req-1")
    assert second["code"] == 0
    assert second["data"]["message_id"] == first["data"]["message_id"]
    assert len(sim.accepted) == 1
    assert sim.accepted_by_idempotency() == {"req-1": 1}
    assert sim.stats.duplicates["feishu_message"] == 1
    # Only successful sends are remembered: a refused uuid can be used again.
    assert (await im_send(http, sim, token, content="bad", uuid="req-2"))[1]["code"] == 230001
    assert (await im_send(http, sim, token, uuid="req-2"))[1]["code"] == 0
    # The memory lasts one hour, unscaled.
    clock.advance(3600.0)
    _, later, _ = await im_send(http, sim, token, uuid="req-1")
    assert later["data"]["message_id"] != first["data"]["message_id"]
    assert sim.accepted_by_idempotency()["req-1"] == 2


async def test_im_target_limit_shared_by_apps(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(clock=clock)
    token_a = await tenant_token(http, sim)
    token_b = await tenant_token(http, sim, APP2, APP2_SECRET)
    for token in (token_a, token_a, token_a, token_b, token_b):
        assert (await im_send(http, sim, token, "oc_busy"))[1]["code"] == 0
    status, data, headers = await im_send(http, sim, token_b, "oc_busy")
    assert (status, data["code"]) == (400, 230020)
    assert "x-ogw-ratelimit-reset" not in headers
    assert (await im_send(http, sim, token_b, "oc_quiet"))[1]["code"] == 0  # other chats free
    clock.advance(1.0)
    assert (await im_send(http, sim, token_a, "oc_busy"))[1]["code"] == 0
    assert sim.stats.throttle_answers["feishu_message"] == 1


async def test_im_app_limit_answers_429_with_reset(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(SimulatorConfig(app_limits=((3, 1.0), (1000, 60.0))), clock)
    token = await tenant_token(http, sim)
    for chat in ("oc_1", "oc_2"):
        assert (await im_send(http, sim, token, chat))[1]["code"] == 0
    # The ephemeral API takes from the same app budget.
    card_body = {"chat_id": "oc_3", "open_id": "ou_1", "msg_type": "interactive", "card": CARD_V2}
    assert (await ephemeral(http, sim, token, "send", card_body))[1]["code"] == 0
    clock.advance(0.4)
    status, data, headers = await im_send(http, sim, token, "oc_4")
    assert (status, data["code"]) == (429, 99991400)
    assert headers["x-ogw-ratelimit-limit"] == "3"
    assert headers["x-ogw-ratelimit-reset"] == "1"  # 0.6 s, rounded up to whole seconds
    # Another app is not affected.
    other = await tenant_token(http, sim, APP2, APP2_SECRET)
    assert (await im_send(http, sim, other, "oc_4"))[1]["code"] == 0
    clock.advance(0.6)
    assert (await im_send(http, sim, token, "oc_4"))[1]["code"] == 0


async def test_im_app_limit_reset_is_scaled(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(SimulatorConfig(time_scale=0.1, app_limits=((2, 1.0),)), clock)
    token = await tenant_token(http, sim)
    for chat in ("oc_1", "oc_2"):
        await im_send(http, sim, token, chat)
    clock.advance(0.025)
    status, data, headers = await im_send(http, sim, token, "oc_3")
    assert (status, data["code"]) == (429, 99991400)
    assert headers["x-ogw-ratelimit-reset"] == "0.075"


async def test_im_reply(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    _, sent, _ = await im_send(http, sim, token)
    parent = sent["data"]["message_id"]
    url = f"{sim.base_url}{IM}/{parent}/reply"
    body = {
        "msg_type": "interactive",
        "content": orjson.dumps(SHARED_CARD).decode(),
        "reply_in_thread": True,
        "uuid": "reply-1",
    }
    status, data, _ = await call(http, "POST", url, body, headers=bearer(token))
    assert (status, data["code"]) == (200, 0)
    reply = sim.accepted[-1]
    assert (reply.operation, reply.destination) == ("reply", f"message:{parent}")
    assert reply.message_id == data["data"]["message_id"] != parent
    assert reply.idempotency == "reply-1"
    # The reply is a shared card: it can be updated.
    assert isinstance(reply.message_id, str)
    assert (await im_update(http, sim, token, reply.message_id, SHARED_CARD))[1]["code"] == 0
    _, bad, _ = await call(
        http, "POST", url, {**body, "reply_in_thread": "yes"}, headers=bearer(token)
    )
    assert bad["code"] == 230001


async def test_im_update_rules(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)

    async def sent_card(card: Any) -> str:
        _, data, _ = await im_send(http, sim, token, msg_type="interactive", content=card)
        assert data["code"] == 0, data
        return str(data["data"]["message_id"])

    shared = await sent_card(SHARED_CARD)
    status, data, _ = await im_update(http, sim, token, shared, SHARED_CARD)
    assert (status, data["code"]) == (200, 0)
    update = sim.accepted[-1]
    assert (update.operation, update.destination, update.message_id) == (
        "update",
        f"message:{shared}",
        shared,
    )
    # The new card must be shared too.
    assert (await im_update(http, sim, token, shared, PRIVATE_CARD))[1]["code"] == 230099
    # A card sent without update_multi cannot be updated.
    private = await sent_card(PRIVATE_CARD)
    status, data, _ = await im_update(http, sim, token, private, SHARED_CARD)
    assert (status, data["code"]) == (400, 230099)
    # Card JSON 2.0 is shared by default.
    v2 = await sent_card(CARD_V2)
    assert (await im_update(http, sim, token, v2, CARD_V2))[1]["code"] == 0
    # Unknown message, a text message, another app's card.
    assert (await im_update(http, sim, token, "om_unknown", SHARED_CARD))[1]["code"] == 230110
    _, text, _ = await im_send(http, sim, token)
    assert (await im_update(http, sim, token, text["data"]["message_id"], SHARED_CARD))[1][
        "code"
    ] == 230001
    other = await tenant_token(http, sim, APP2, APP2_SECRET)
    assert (await im_update(http, sim, other, shared, SHARED_CARD))[1]["code"] == 230027


async def test_im_update_limit_per_message(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(clock=clock)
    token = await tenant_token(http, sim)
    message_id = await shared_card_sent(http, sim, token)
    for _ in range(5):
        assert (await im_update(http, sim, token, message_id, SHARED_CARD))[1]["code"] == 0
    assert (await im_update(http, sim, token, message_id, SHARED_CARD))[1]["code"] == 230020


async def im_recall(
    http: aiohttp.ClientSession, sim: Simulator, token: str, message_id: str
) -> Answer:
    return await call(http, "DELETE", f"{sim.base_url}{IM}/{message_id}", headers=bearer(token))


async def test_im_recall_rules_and_what_the_chat_shows(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    token = await tenant_token(http, sim)
    _, first, _ = await im_send(http, sim, token, msg_type="interactive", content=SHARED_CARD)
    _, second, _ = await im_send(http, sim, token, msg_type="interactive", content=CARD_V2)
    first_id, second_id = first["data"]["message_id"], second["data"]["message_id"]
    resolved = {**SHARED_CARD, "elements": [{"tag": "markdown", "content": "resolved"}]}
    assert (await im_update(http, sim, token, first_id, resolved))[1]["code"] == 0
    # The chat shows each message once, with its latest content.
    assert sim.chat("chat_id:oc_chat") == [(first_id, resolved), (second_id, CARD_V2)]
    # Only the sending app may recall; unknown messages are refused as for an update.
    other = await tenant_token(http, sim, APP2, APP2_SECRET)
    assert (await im_recall(http, sim, other, first_id))[1]["code"] == 230027
    assert (await im_recall(http, sim, token, "om_unknown"))[1]["code"] == 230110
    status, data, _ = await im_recall(http, sim, token, first_id)
    assert (status, data["code"]) == (200, 0)
    recall = sim.accepted[-1]
    assert (recall.operation, recall.destination) == ("recall", f"message:{first_id}")
    assert sim.chat("chat_id:oc_chat") == [(second_id, CARD_V2)]
    async with http.get(sim.base_url + "/_sim/chat?destination=chat_id:oc_chat") as resp:
        assert orjson.loads(await resp.read()) == [{"message_id": second_id, "content": CARD_V2}]
    async with http.get(sim.base_url + "/_sim/chat") as resp:
        assert resp.status == 400
    # A recalled message can be neither recalled again nor updated.
    assert (await im_recall(http, sim, token, first_id))[1]["code"] == 230011
    assert (await im_update(http, sim, token, first_id, resolved))[1]["code"] == 230011


async def test_im_update_window_is_14_days(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(clock=clock)
    token = await tenant_token(http, sim)
    message_id = await shared_card_sent(http, sim, token)
    clock.advance(14 * 86_400 - 1)
    token = await tenant_token(http, sim)  # the first one expired meanwhile
    assert (await im_update(http, sim, token, message_id, SHARED_CARD))[1]["code"] == 0
    clock.advance(2)
    status, data, _ = await im_update(http, sim, token, message_id, SHARED_CARD)
    assert (status, data["code"]) == (400, 230031)


# --------------------------------------------------------------------------- ephemeral


async def test_ephemeral_send_and_delete(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    body = {"chat_id": "oc_grp", "user_id": "u_1", "msg_type": "interactive", "card": SHARED_CARD}
    status, data, _ = await ephemeral(http, sim, token, "send", body)
    assert (status, data["code"]) == (200, 0)
    message_id = data["data"]["message_id"]
    sent = sim.accepted[-1]
    assert (sent.backend, sent.operation, sent.destination) == (
        "feishu_ephemeral",
        "send",
        "chat:oc_grp",
    )
    assert sent.content_decoded == SHARED_CARD
    status, data, _ = await ephemeral(http, sim, token, "delete", {"message_id": message_id})
    assert (status, data["code"]) == (200, 0)
    deleted = sim.accepted[-1]
    assert (deleted.operation, deleted.destination) == ("delete", f"message:{message_id}")
    for again in (message_id, "om_never_sent"):
        _, data, _ = await ephemeral(http, sim, token, "delete", {"message_id": again})
        assert data["code"] == 18051
    # Ephemeral cards cannot be updated through the IM API.
    assert (await im_update(http, sim, token, message_id, SHARED_CARD))[1]["code"] == 230110


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"card": orjson.dumps(SHARED_CARD).decode()}, 230001),  # a string, not an object
        ({"open_id": None, "user_id": None}, 230001),
        ({"msg_type": "text"}, 230001),
        ({"chat_id": ""}, 230001),
        ({"card": {"header": {}}}, 230099),
    ],
)
async def test_ephemeral_refusals(
    http: aiohttp.ClientSession, sim: Simulator, change: dict[str, Any], code: int
) -> None:
    token = await tenant_token(http, sim)
    body = {"chat_id": "oc_grp", "open_id": "ou_1", "msg_type": "interactive", "card": CARD_V2}
    body = {k: v for k, v in {**body, **change}.items() if v is not None}
    status, data, _ = await ephemeral(http, sim, token, "send", body)
    assert (status, data["code"]) == (400, code), data


async def test_ephemeral_group_limit(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(SimulatorConfig(ephemeral_group_limits=((2, 1.0),)), clock)
    token = await tenant_token(http, sim)
    body = {"chat_id": "oc_grp", "open_id": "ou_1", "msg_type": "interactive", "card": CARD_V2}
    codes = [(await ephemeral(http, sim, token, "send", body))[1]["code"] for _ in range(3)]
    assert codes == [0, 0, 230020]
    other = {**body, "chat_id": "oc_other"}
    assert (await ephemeral(http, sim, token, "send", other))[1]["code"] == 0


# --------------------------------------------------------------------------- MindOffice


async def test_mindoffice_success(http: aiohttp.ClientSession, sim: Simulator) -> None:
    headers = {"APP-ID": ROBOT, "App-Secret": ROBOT_SECRET, "X-Request-Id": "req-9"}
    body = mo_body("markdown", {"text": '**bold** <at user_id="all">所有人</at>'})
    status, data, _ = await mindoffice(http, sim, body, headers=headers)
    assert (status, data["code"], data["msg"]) == (200, 200, "OK")
    (accepted,) = sim.accepted
    assert accepted.backend == "mindoffice_group"
    assert accepted.destination == "group:grp_1"
    assert accepted.idempotency == "req-9"
    assert accepted.message_id == data["data"]["message_id"]
    assert accepted.sender == ROBOT


async def test_mindoffice_bad_credentials(http: aiohttp.ClientSession, sim: Simulator) -> None:
    body = mo_body("text", {"text": "x"})
    for headers in ({"app-id": ROBOT, "app-secret": "wrong"}, {"app-id": ROBOT}, {}):
        status, data, _ = await mindoffice(http, sim, body, headers=headers)
        assert (status, data["code"]) == (200, 401)
    assert sim.accepted == []


async def test_mindoffice_request_id_dedupe(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(clock=clock)
    headers = {**ROBOT_HEADERS, "x-request-id": "idem-1"}
    body = mo_body("text", {"text": "once"})
    _, first, _ = await mindoffice(http, sim, body, headers=headers)
    clock.advance(30.0)
    _, second, _ = await mindoffice(http, sim, body, headers=headers)
    assert second["code"] == 200
    assert second["data"]["message_id"] == first["data"]["message_id"]
    assert sim.accepted_by_idempotency() == {"idem-1": 1}
    clock.advance(31.0)  # past the (undocumented, configurable) 60 s
    _, third, _ = await mindoffice(http, sim, body, headers=headers)
    assert third["data"]["message_id"] != first["data"]["message_id"]


@pytest.mark.parametrize(
    "body",
    [
        {"group_id": "g", "msg_type": "text", "content": {"text": "an object"}},
        mo_body("text", {"content": "no text"}),
        mo_body("rich_text", {"type": "paragraph"}),
        mo_body("image", {"image_key": "x"}),
        mo_body("interactive", {"header": {}}),
        mo_body(
            "interactive",
            {"elements": [{"tag": "action", "action": [{"tag": "button", "type": "view"}]}]},
        ),
        mo_body(
            "interactive",
            {
                "elements": [
                    {"tag": "action", "action": [{"tag": "button", "type": "click", "url": "u"}]}
                ]
            },
        ),
        mo_body(
            "interactive",
            {"elements": [{"tag": "action", "action": [{"tag": "button", "type": "open"}]}]},
        ),
        {"msg_type": "text", "content": '{"text": "no group"}'},
    ],
)
async def test_mindoffice_bad_requests(
    http: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]
) -> None:
    status, data, _ = await mindoffice(http, sim, body)
    assert (status, data["code"]) == (200, 400), data


async def test_mindoffice_limits_only_when_configured(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(SimulatorConfig(mindoffice_limits=((1, 1.0),)), clock)
    body = mo_body("text", {"text": "x"})
    assert (await mindoffice(http, sim, body))[1]["code"] == 200
    status, data, _ = await mindoffice(http, sim, body)
    assert (status, data["code"]) == (429, 429)
    sim.config.enforce_limits = False
    assert (await mindoffice(http, sim, body))[1]["code"] == 200


# --------------------------------------------------------------------------- faults


async def test_fault_error_ratio(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    sim.faults.error_ratio = 1.0
    status, data, _ = await im_send(http, sim, token)
    assert (status, data) == (500, {"code": 5000, "msg": "internal error"})
    status, data, _ = await hook(http, sim, {"msg_type": "text", "content": {"text": "x"}})
    assert (status, data["code"]) == (500, 5000)
    status, _, _ = await mindoffice(http, sim, mo_body("text", {"text": "x"}))
    assert status == 500
    assert await tenant_token(http, sim) == token  # the token endpoint is not a send
    assert sim.accepted == []
    assert sim.stats.server_errors == 3


async def test_fault_timeout_holds_the_request(http: aiohttp.ClientSession, sim: Simulator) -> None:
    sim.faults.timeout_ratio = 1.0
    url = sim.base_url + WEBHOOK + HOOK
    body = orjson.dumps({"msg_type": "text", "content": {"text": "x"}})
    with pytest.raises(TimeoutError):
        async with http.post(url, data=body, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    assert sim.stats.timeouts == 1
    assert sim.accepted == []
    sim.faults.hang_s = 0.01  # a short hang ends with a gateway timeout
    status, data, _ = await hook(http, sim, {"msg_type": "text", "content": {"text": "x"}})
    assert (status, data["code"]) == (504, 5000)
    # stop() answers held requests at once instead of waiting out hang_s.
    sim.faults.hang_s = 30.0
    task = asyncio.create_task(hook(http, sim, {"msg_type": "text", "content": {"text": "x"}}))
    await sim.wait_for(lambda: sim.stats.timeouts == 3)
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 2.0
    assert (await task)[0] == 504  # answered, not dropped


async def test_fault_throttle_until(
    http: aiohttp.ClientSession, start: Start, clock: FakeClock
) -> None:
    sim = await start(clock=clock)
    token = await tenant_token(http, sim)
    sim.faults.throttle_for(10.0)
    assert sim.faults.throttle_until == clock.now + 10.0
    status, data, _ = await hook(http, sim, {"msg_type": "text", "content": {"text": "x"}})
    assert (status, data["code"]) == (200, 11232)
    status, data, headers = await im_send(http, sim, token)
    assert (status, data["code"], headers["x-ogw-ratelimit-reset"]) == (429, 99991400, "10")
    body = {"chat_id": "oc_1", "open_id": "ou_1", "msg_type": "interactive", "card": CARD_V2}
    assert (await ephemeral(http, sim, token, "send", body))[0] == 429
    assert (await mindoffice(http, sim, mo_body("text", {"text": "x"})))[0] == 429
    assert sum(sim.stats.throttle_answers.values()) == 4
    clock.advance(10.0)
    assert (await im_send(http, sim, token))[1]["code"] == 0


async def test_fault_ack_loss_and_uuid_retry(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    sim.faults.ack_loss_ratio = 1.0
    status, _, _ = await im_send(http, sim, token, uuid="lost-ack")
    assert status == 500
    (delivered,) = sim.accepted  # delivered all the same: the case uuid exists for
    sim.faults.ack_loss_ratio = 0.0
    _, retry, _ = await im_send(http, sim, token, uuid="lost-ack")
    assert retry["data"]["message_id"] == delivered.message_id
    assert sim.accepted_by_idempotency() == {"lost-ack": 1}


def test_fault_seed_replays_the_same_faults() -> None:
    faults = Faults(seed=7)
    first = [faults.rng.random() for _ in range(5)]
    faults.seed = 7
    assert [faults.rng.random() for _ in range(5)] == first
    with pytest.raises(ValueError, match="unknown fault"):
        faults.update({"eror_ratio": 1})


async def test_latency(http: aiohttp.ClientSession, start: Start) -> None:
    sim = await start(SimulatorConfig(latency_s=0.05))
    started = time.monotonic()
    await hook(http, sim, {"msg_type": "text", "content": {"text": "x"}})
    assert time.monotonic() - started >= 0.05


# --------------------------------------------------------------------------- control


async def test_control_api(http: aiohttp.ClientSession, sim: Simulator) -> None:
    base = sim.base_url
    creds = {
        "webhooks": {"new-hook": None, "new-signed": "sec"},
        "apps": {"cli_new": "s"},
        "mindoffice": {"robot_new": "rs"},
    }
    status, _, _ = await call(http, "POST", base + "/_sim/credentials", creds)
    assert status == 200
    assert (await hook(http, sim, {"msg_type": "text", "content": {"text": "1"}}, "new-hook"))[1][
        "code"
    ] == 0
    assert (await hook(http, sim, {"msg_type": "text", "content": {"text": "2"}}, "new-hook"))[1][
        "code"
    ] == 0
    token = await tenant_token(http, sim, "cli_new", "s")
    headers = {"app-id": "robot_new", "app-secret": "rs"}
    assert (await mindoffice(http, sim, mo_body("text", {"text": "x"}), headers=headers))[1][
        "code"
    ] == 200
    status, bad, _ = await call(http, "POST", base + "/_sim/credentials", {"apps": ["x"]})
    assert status == 400
    assert "apps" in bad["error"]

    async with http.get(base + "/_sim/accepted?since=1") as resp:
        items = orjson.loads(await resp.read())
    assert [item["index"] for item in items] == [1, 2]
    assert items[0]["destination"] == "webhook:new-hook"
    assert items[1]["backend"] == "mindoffice_group"
    async with http.get(base + "/_sim/stats") as resp:
        stats = orjson.loads(await resp.read())
    assert stats["accepted_total"] == 3
    assert stats["token_requests"] == {"cli_new": 1}

    status, faults, _ = await call(http, "POST", base + "/_sim/faults", {"error_ratio": 1})
    assert status == 200
    assert faults["error_ratio"] == 1.0
    assert (await im_send(http, sim, token))[0] == 500
    status, _, _ = await call(
        http, "POST", base + "/_sim/faults", {"error_ratio": 0, "revoke_tokens": True}
    )
    assert (await im_send(http, sim, token))[1]["code"] == 99991663
    status, bad, _ = await call(http, "POST", base + "/_sim/faults", {"nope": 1})
    assert status == 400
    assert "unknown fault" in bad["error"]
    status, _, _ = await call(http, "POST", base + "/_sim/faults", {"throttle_for_s": 5})
    assert sim.faults.throttle_until > 0

    status, _, _ = await call(http, "POST", base + "/_sim/reset", {})
    assert status == 200
    assert sim.accepted == []
    assert sim.stats.requests_total == 0
    assert sim.faults.throttle_until == 0.0
    # Credentials survive a reset.
    assert (await hook(http, sim, {"msg_type": "text", "content": {"text": "3"}}, "new-hook"))[1][
        "code"
    ] == 0
    async with http.get(base + "/_sim/accepted?since=x") as resp:
        assert resp.status == 400


async def test_wait_for(http: aiohttp.ClientSession, sim: Simulator) -> None:
    body = {"msg_type": "text", "content": {"text": "x"}}
    task = asyncio.create_task(hook(http, sim, body))
    await sim.wait_for(lambda: len(sim.accepted) == 1, timeout=5.0)
    await task
    with pytest.raises(TimeoutError, match="1 accepted"):
        await sim.wait_for(lambda: len(sim.accepted) == 2, timeout=0.05)


async def test_record_accepted_off_keeps_counting(
    http: aiohttp.ClientSession, start: Start
) -> None:
    sim = await start(SimulatorConfig(record_accepted=False))
    await hook(http, sim, {"msg_type": "text", "content": {"text": "x"}})
    assert sim.accepted == []
    assert sim.stats.accepted["feishu_webhook"] == 1


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("card_as", ["string", "object"])
async def test_seed_000_webhook_card(
    http: aiohttp.ClientSession, sim: Simulator, card_as: str
) -> None:
    # The page sends json.dumps({"msg_type": "interactive", "card": card_json}), card_json
    # being the JSON *text*; the adapter sends the card object.
    card: Any = SEED_000_CARD if card_as == "string" else seed(SEED_000_CARD)
    status, data, _ = await hook(http, sim, {"msg_type": "interactive", "card": card})
    assert (status, data["code"]) == (200, 0), data
    assert sim.accepted[0].content_decoded == seed(SEED_000_CARD)


@pytest.mark.parametrize("index", range(len(SEED_001_BODIES)))
async def test_seed_001_mindoffice_wire_bodies(
    http: aiohttp.ClientSession, sim: Simulator, index: int
) -> None:
    raw = strip_comments(SEED_001_BODIES[index]).encode()
    headers = {**ROBOT_HEADERS, "x-request-id": f"seed-001-{index}"}
    status, data, _ = await mindoffice(http, sim, raw=raw, headers=headers)
    assert (status, data["code"]) == (200, 200), data


async def test_seed_001_curl_and_mention_node(http: aiohttp.ClientSession, sim: Simulator) -> None:
    body = curl_body(SEED_001_CURL)
    status, data, _ = await mindoffice(http, sim, raw=body.encode())
    assert data["code"] == 200, data
    node = seed(SEED_001_MENTION_NODE)
    status, data, _ = await mindoffice(http, sim, mo_body("rich_text", [node]))
    assert (status, data["code"]) == (200, 200), data


@pytest.mark.parametrize(
    "elements",
    [SEED_002_RICH_TEXT, SEED_002_MARKDOWN, SEED_002_ACTION],
    ids=["rich_text", "markdown", "action"],
)
async def test_seed_002_mindoffice_cards(
    http: aiohttp.ClientSession, sim: Simulator, elements: str
) -> None:
    card = seed(elements)
    status, data, _ = await mindoffice(http, sim, mo_body("interactive", card))
    assert data["code"] == 200, data
    # The header example is a fragment: with any of the element examples, a whole card.
    with_header = {**seed(SEED_002_HEADER), **card}
    status, data, _ = await mindoffice(http, sim, mo_body("interactive", with_header))
    assert (status, data["code"]) == (200, 200), data


async def test_seed_003_im_wire_body(http: aiohttp.ClientSession, sim: Simulator) -> None:
    token = await tenant_token(http, sim)
    url = f"{sim.base_url}{IM}?receive_id_type=user_id"
    raw = strip_comments(SEED_003_BODY).encode()
    status, data, _ = await call(http, "POST", url, raw=raw, headers=bearer(token))
    assert (status, data["code"]) == (200, 0), data
    # The page's card and its wire body differ only in a placeholder button id.
    decoded = sim.accepted[0].content_decoded
    assert decoded["i18n_elements"]["zh_cn"][0] == seed(SEED_003_CARD)["i18n_elements"]["zh_cn"][0]
    # The card example itself, as the adapter sends it: a content string.
    status, data, _ = await im_send(
        http,
        sim,
        token,
        "ou_x",
        msg_type="interactive",
        content=seed(SEED_003_CARD),
        id_type="open_id",
    )
    assert (status, data["code"]) == (200, 0), data


@pytest.mark.parametrize("body", [SEED_004_BODY_V2, SEED_004_BODY_TEMPLATE], ids=["v2", "template"])
async def test_seed_004_ephemeral_wire_bodies(
    http: aiohttp.ClientSession, sim: Simulator, body: str
) -> None:
    token = await tenant_token(http, sim)
    raw = strip_comments(body).encode()
    status, data, _ = await call(
        http, "POST", sim.base_url + EPHEMERAL + "send", raw=raw, headers=bearer(token)
    )
    assert (status, data["code"]) == (200, 0), data


# --------------------------------------------------------------------------- adapters


async def test_seeds_through_the_real_adapters(sim: Simulator, tmp_path: Path) -> None:
    """What the worker's adapters send for the seed examples is what the simulator takes."""
    from cardq.backends import build
    from cardq.backends.base import BackendContext
    from cardq.backends.mindoffice_group import MindOfficeGroup
    from cardq.backends.tokens import TokenPool
    from cardq.backends.transport import AiohttpTransport
    from cardq.config import BotSettings, SecretRef
    from cardq.models import SendRequest
    from cardq.simulator._mindoffice_content import loads_lenient
    from tests import helpers

    def ref(name: str, value: str) -> SecretRef:
        path = tmp_path / name
        path.write_text(value, encoding="utf-8")
        return helpers.credential({"file": str(path)})

    transport = AiohttpTransport()
    ctx = BackendContext(transport=transport, timeout_s=5.0, tokens=TokenPool(transport))
    base = sim.base_url
    webhook = build(
        BotSettings(
            name="wh",
            backend="feishu_webhook",
            base_url=base,
            credentials={"token": ref("t", SIGNED), "secret": ref("s", SECRET)},
        ),
        ctx,
    )
    app_creds = {"app_secret": ref("a", APP_SECRET)}
    message = build(
        BotSettings(
            name="im", backend="feishu_message", base_url=base, app_id=APP, credentials=app_creds
        ),
        ctx,
    )
    ephemeral_bot = build(
        BotSettings(
            name="eph", backend="feishu_ephemeral", base_url=base, app_id=APP, credentials=app_creds
        ),
        ctx,
    )
    robot = build(
        BotSettings(
            name="mo",
            backend="mindoffice_group",
            base_url=base,
            app_id=ROBOT,
            credentials={"app_secret": ref("r", ROBOT_SECRET)},
        ),
        ctx,
    )
    counter = iter(range(1000))

    def request(
        backend: str,
        target: dict[str, Any],
        msg_type: str | None,
        content: Any,
        operation: str = "send",
    ) -> SendRequest:
        n = next(counter)
        return SendRequest(
            request_id=f"r{n}",
            idempotency_key=f"key-{n}",
            backend=backend,
            bot="b",
            operation=operation,
            target=target,
            msg_type=msg_type,
            content=content,
        )

    try:
        await webhook.send(request("feishu_webhook", {}, "interactive", seed(SEED_000_CARD)))
        sent = await message.send(
            request(
                "feishu_message",
                {"receive_id_type": "user_id", "receive_id": "ou_1"},
                "interactive",
                seed(SEED_003_CARD),
            )
        )
        assert sent.message_id == sim.accepted[-1].message_id
        shared = await message.send(
            request(
                "feishu_message",
                {"receive_id_type": "chat_id", "receive_id": "oc_1"},
                "interactive",
                SHARED_CARD,
            )
        )
        assert shared.message_id is not None
        await message.send(
            request(
                "feishu_message",
                {"message_id": shared.message_id},
                "interactive",
                SHARED_CARD,
                "update",
            )
        )
        await message.send(
            request(
                "feishu_message",
                {"message_id": shared.message_id},
                "text",
                {"text": "a reply"},
                "reply",
            )
        )
        for body in (SEED_004_BODY_V2, SEED_004_BODY_TEMPLATE):
            wire = seed(body)
            target = {"chat_id": wire["chat_id"], "open_id": wire["open_id"]}
            card = await ephemeral_bot.send(
                request("feishu_ephemeral", target, "interactive", wire["card"])
            )
            assert card.message_id is not None
            for _ in range(2):  # the second delete is 18051, which the adapter treats as done
                await ephemeral_bot.send(
                    request(
                        "feishu_ephemeral", {"message_id": card.message_id}, None, None, "delete"
                    )
                )
        for body in SEED_001_BODIES:
            wire = seed(body)
            content = loads_lenient(wire["content"])
            req = request(
                "mindoffice_group", {"group_id": wire["group_id"]}, wire["msg_type"], content
            )
            MindOfficeGroup.check(req)
            await robot.send(req)
        backends = [(a.backend, a.operation) for a in sim.accepted]
        assert backends.count(("mindoffice_group", "send")) == len(SEED_001_BODIES)
        assert ("feishu_message", "update") in backends
        assert ("feishu_message", "reply") in backends
        assert backends.count(("feishu_ephemeral", "delete")) == 2
        assert sim.stats.token_requests[APP] == 1  # one token for both app backends
        assert sum(sim.stats.rejected.values()) == 2  # the two repeated deletes (18051)
    finally:
        await transport.aclose()


# --------------------------------------------------------------------------- CLI


async def test_cli_runs_until_sigterm(tmp_path: Path) -> None:
    creds = tmp_path / "creds.yaml"
    creds.write_text(f"webhooks:\n  {HOOK}: null\napps:\n  {APP}: {APP_SECRET}\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cardq.simulator",
        "--port",
        "0",
        "--credentials",
        str(creds),
        "--summary-every",
        "0.1",
        "--time-scale",
        "0.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        match = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert match, first
        async with aiohttp.ClientSession() as http:
            url = match.group(0) + WEBHOOK + HOOK
            status, data, _ = await call(
                http, "POST", url, {"msg_type": "text", "content": {"text": "x"}}
            )
            assert (status, data["code"]) == (200, 0)
        while "accepted=1" not in (
            line := (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
        ):
            assert line, "the simulator exited early"
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_refuses_bad_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    creds = tmp_path / "creds.yaml"
    creds.write_text("apps: [not, a, mapping]\n", encoding="utf-8")
    assert cli_main(["--port", "0", "--credentials", str(creds)]) == 2
    assert "apps" in capsys.readouterr().err


def test_cli_config_overrides_set_simulator_fields() -> None:
    from cardq.simulator.cli import apply_overrides

    config = SimulatorConfig()
    apply_overrides(config, '{"app_limits": [[10000, 1.0]], "webhook_throttle_answer": "9499"}')
    assert config.app_limits == ((10000, 1.0),)
    assert config.webhook_throttle_answer == "9499"
    with pytest.raises(ValueError, match="unknown SimulatorConfig field"):
        apply_overrides(config, '{"no_such_field": 1}')
