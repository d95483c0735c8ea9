"""cardq.client: typed builders whose output the worker and the JSON Schema both accept,
whose mistakes mypy reports before anything runs, and a producer cardq delivers from."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cardq import client, validation
from cardq.config import Topics
from cardq.simulator import Simulator
from cardq.testing import ResultCollector, TansuBroker, running_worker
from tests import helpers
from tests.test_schemas import schema_errors
from tests.toolchains import ROOT

CARD = {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "**hi**"}]}}
SOON = datetime.now(UTC) + timedelta(minutes=5)

BUILT = {
    "webhook text": (
        client.webhook_send("alerts", "text", {"text": "hi"}, request_id="w1"),
        "feishu_webhook/alerts/webhook",
    ),
    "webhook card": (
        client.webhook_send("alerts", "interactive", CARD, expires_at=SOON),
        "feishu_webhook/alerts/webhook",
    ),
    "im text": (
        client.message_send(
            "ops-app",
            receive_id_type="chat_id",
            receive_id="oc_1",
            msg_type="text",
            content={"text": "hi"},
            idempotency_key="deploy-42",
            trace={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        ),
        "feishu_message/ops-app/chat_id:oc_1",
    ),
    "im reply": (
        client.message_reply(
            "ops-app", message_id="om_1", msg_type="interactive", content=CARD, reply_in_thread=True
        ),
        "feishu_message/ops-app/message:om_1",
    ),
    "im update": (
        client.message_update("ops-app", message_id="om_1", card=CARD),
        "feishu_message/ops-app/message:om_1",
    ),
    "im card by subject": (
        client.message_send(
            "ops-app",
            receive_id_type="chat_id",
            receive_id="oc_1",
            msg_type="interactive",
            content={"schema": "2.0", "body": {"elements": []}},
            subject_key="fp-7f3a",
        ),
        "feishu_message/ops-app/chat_id:oc_1",
    ),
    "im recall": (
        client.message_recall(
            "ops-app", receive_id_type="chat_id", receive_id="oc_1", subject_key="fp-7f3a"
        ),
        "feishu_message/ops-app/chat_id:oc_1",
    ),
    "ephemeral": (
        client.ephemeral_send("ops-app", chat_id="oc_1", user_id="u1", card=CARD),
        "feishu_ephemeral/ops-app/chat:oc_1/user_id:u1",
    ),
    "ephemeral delete": (
        client.ephemeral_delete("ops-app", message_id="om_2"),
        "feishu_ephemeral/ops-app/message:om_2",
    ),
    "mindoffice markdown": (
        client.mindoffice_send(
            "robot", group_id="g1", msg_type="markdown", content={"text": "**x**"}
        ),
        "mindoffice_group/robot/group:g1",
    ),
    "mindoffice card": (
        client.mindoffice_send(
            "robot",
            group_id="g1",
            msg_type="interactive",
            content={"elements": [{"tag": "div", "text": {"tag": "plain_text", "content": "x"}}]},
        ),
        "mindoffice_group/robot/group:g1",
    ),
}


@pytest.mark.parametrize("name", list(BUILT))
def test_built_requests_pass_the_worker_and_the_schema(name: str) -> None:
    request, destination = BUILT[name]
    assert request.destination == destination
    decoded = validation.decode(request.to_json())
    assert decoded.destination == destination and decoded.request_id == request.request_id
    assert schema_errors("send-request", request.payload) == []


def test_common_fields_are_encoded_as_the_contract_says() -> None:
    request, _ = BUILT["im text"]
    assert request.payload["idempotency_key"] == "deploy-42"
    webhook, _ = BUILT["webhook card"]
    assert str(webhook.payload["expires_at"]).endswith("Z")
    assert len(webhook.request_id) == 36  # a fresh UUID when none is given


def test_priority_and_digest_key_are_passed_on() -> None:
    chat: client.ChatTarget = {"receive_id_type": "chat_id", "receive_id": "oc_1"}
    text = {"text": "disk 91%"}
    request = client.message_send(
        "ops-app", **chat, msg_type="text", content=text, priority="low", digest_key="db-cluster"
    )
    assert request.payload["priority"] == "low" and request.payload["digest_key"] == "db-cluster"
    decoded = validation.decode(request.to_json())
    assert decoded.priority == "low" and decoded.digest_key == "db-cluster"
    assert schema_errors("send-request", request.payload) == []


def test_what_types_cannot_say_fails_at_build_time_with_the_workers_field() -> None:
    with pytest.raises(validation.ValidationError) as bad_mention:
        client.mindoffice_send(
            "robot", group_id="g1", msg_type="text", content={"text": "<at id=1>bob</at>"}
        )
    assert bad_mention.value.field == "content.text"
    with pytest.raises(validation.ValidationError) as naive:
        client.webhook_send("alerts", "text", {"text": "x"}, expires_at=datetime(2030, 1, 1))
    assert naive.value.field == "expires_at"


MISTAKES = {
    # line (1-based, in the snippet below) -> a part of the message mypy must give for it
    5: 'No overload variant of "webhook_send"',
    6: 'No overload variant of "message_send"',
    7: 'No overload variant of "mindoffice_send"',
    8: 'Unexpected keyword argument "expire_at"',
    9: 'No overload variant of "ephemeral_send"',
}
SNIPPET = """\
    from datetime import datetime
    from cardq.client import Text, ephemeral_send, message_send, mindoffice_send, webhook_send

    C, T = {"schema": "2.0", "body": {"elements": []}}, Text(text="x")
    webhook_send("alerts", "text", {"txt": "hello"})
    message_send("b", receive_id_type="chat", receive_id="oc_1", msg_type="text", content=T)
    mindoffice_send("robot", group_id="g1", msg_type="interactive", content=T)
    webhook_send("alerts", "text", T, expire_at=datetime.now())
    ephemeral_send("b", chat_id="oc_1", open_id="ou_1")
    message_send("b", receive_id_type="email", receive_id="c", msg_type="interactive", content=C)
"""


@pytest.mark.timeout(300)
def test_mypy_reports_each_mistake_on_its_line_and_nothing_else(tmp_path: Path) -> None:
    snippet = tmp_path / "producer_snippet.py"
    snippet.write_text(textwrap.dedent(SNIPPET))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-error-summary"),
            *("--cache-dir", str(tmp_path / "cache"), str(snippet)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    errors: dict[int, str] = {}
    for line in done.stdout.splitlines():
        if ": error:" in line and line.startswith(str(snippet)):
            number = int(line.split(":")[1])
            errors[number] = errors.get(number, "") + line
    assert set(errors) == set(MISTAKES), done.stdout  # line 10, the correct call, is clean
    for number, part in MISTAKES.items():
        assert part in errors[number], errors[number]


async def test_the_producer_keys_by_destination_and_cardq_delivers(
    broker: TansuBroker, sim: Simulator
) -> None:
    topics = Topics()
    await broker.create_topics([topics.requests, topics.results, topics.dead_letters])
    settings = helpers.settings(broker.bootstrap_servers, sim.base_url)
    requests = [
        client.message_send(
            "app",
            receive_id_type="chat_id",
            receive_id="oc_c1",
            msg_type="text",
            content={"text": "a"},
        ),
        client.mindoffice_send("mind", group_id="g1", msg_type="text", content={"text": "b"}),
    ]
    async with ResultCollector(broker.bootstrap_servers) as results, running_worker(settings):
        async with client.CardqProducer(
            broker.bootstrap_servers, topic=topics.requests
        ) as producer:
            for request in requests:
                await producer.send(request)
        await results.wait_for_count(len(requests), timeout=20)
    by_id = results.by_request()
    for request in requests:
        [result] = by_id[request.request_id]
        assert result["status"] == "delivered"
        assert result["destination"] == request.destination
    assert sorted(a.backend for a in sim.accepted) == ["feishu_message", "mindoffice_group"]
