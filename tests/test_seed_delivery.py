"""Every sample (every JSON example of the seed documents, plus follow-ups) end to end.

One worker in this event loop, configured by ``cardq dev``'s own ``dev-config.yaml``
(bots ``alerts-webhook``, ``ops-app``, ``ops-ephemeral``, ``mind-robot``), reads the
samples from a real Tansu broker and delivers them over HTTP to the simulator, which
checks each request the way the platform does. Follow-ups are produced once the first
pass has results, with ``target.message_id`` resolved as ``worker/cardq/devtools/dev.py`` does.
Then every recorded body is compared with what the platform expects for its backend.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cardq import config
from cardq.backends.feishu_webhook import sign
from cardq.devtools.dev import (
    DEV_APP_ID,
    DEV_CREDENTIALS,
    DEV_MIND_APP_ID,
    _resolve,
    dev_config_path,
)
from cardq.simulator import Accepted, Simulator, SimulatorConfig
from cardq.testing import ResultCollector, TansuBroker, produce, running_worker
from tests.helpers import found

SAMPLES = Path(__file__).resolve().parent.parent / "worker" / "cardq" / "samples"
FIRST = found(SAMPLES)
FOLLOWUPS = found(SAMPLES / "followups")
BOTS = ("alerts-webhook", "ops-app", "ops-ephemeral", "mind-robot")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def content_of(sample: dict[str, Any]) -> Any:
    """The request's content as the worker reads it: a JSON string stands for its value
    (raw line breaks inside its strings allowed, as in MindOffice seed 001: sample 09)."""
    content = sample.get("content")
    return json.loads(content, strict=False) if isinstance(content, str) else content


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig()) as simulator:  # limits enforced, as on the platform
        simulator.add_webhook(
            DEV_CREDENTIALS["CARDQ_DEV_WEBHOOK_TOKEN"], DEV_CREDENTIALS["CARDQ_DEV_WEBHOOK_SECRET"]
        )
        simulator.add_app(DEV_APP_ID, DEV_CREDENTIALS["CARDQ_DEV_APP_SECRET"])
        simulator.add_mindoffice_robot(DEV_MIND_APP_ID, DEV_CREDENTIALS["CARDQ_DEV_MIND_SECRET"])
        yield simulator


def dev_settings(broker: TansuBroker, sim: Simulator) -> config.Settings:
    """``dev-config.yaml`` as ``cardq dev`` wires it (see ``dev.start_stack``)."""
    env = {
        **DEV_CREDENTIALS,
        "CARDQ_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "CARDQ_KAFKA__GROUP_ID": "cardq-seed-delivery",
        "CARDQ_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "CARDQ_OBSERVABILITY__PORT": "null",
        "CARDQ_DELIVERY__BACKOFF_BASE_S": "0.05",
        "CARDQ_DELIVERY__BACKOFF_CAP_S": "0.5",
        "CARDQ_DELIVERY__COMMIT_INTERVAL_S": "0.2",
    }
    for bot in BOTS:
        env[f"CARDQ_BOTS__{bot.upper().replace('-', '_')}__BASE_URL"] = sim.base_url
    settings = config.load(dev_config_path(), env=env)
    assert set(settings.bots) == set(BOTS)
    return settings


async def test_every_sample_is_delivered_as_the_platform_expects(
    broker: TansuBroker, sim: Simulator
) -> None:
    settings = dev_settings(broker, sim)
    topics = settings.kafka.topics
    await broker.create_topics([topics.requests], partitions=3)
    await broker.create_topics([topics.results, topics.dead_letters])
    first = [load(p) for p in FIRST]
    async with ResultCollector(broker.bootstrap_servers, topics) as results:
        async with running_worker(settings):
            await produce(broker.bootstrap_servers, topics.requests, first)
            await results.wait_for_count(len(first), timeout=20)
            seen = {rid: found[-1] for rid, found in results.by_request().items()}
            followups = [orjson.loads(_resolve(p.read_bytes(), seen)) for p in FOLLOWUPS]
            await produce(broker.bootstrap_servers, topics.requests, followups)
            await results.wait_for_count(len(first) + len(followups), timeout=20)
        by_id = results.by_request()
        dead_letters = list(results.dead_letters)

    samples = first + followups
    statuses = {s["request_id"]: [r["status"] for r in by_id[s["request_id"]]] for s in samples}
    assert statuses == {s["request_id"]: ["delivered"] for s in samples}
    assert dead_letters == []
    # The platform refused nothing and never had to slow the worker down.
    assert sim.stats.as_dict()["rejected"] == {}
    assert sim.stats.as_dict()["throttle_answers"] == {}
    assert len(sim.accepted) == len(samples)
    assert sim.stats.token_requests == {DEV_APP_ID: 1}  # ops-app and ops-ephemeral share it

    used: set[int] = set()
    for sample in samples:
        result = by_id[sample["request_id"]][0]
        accepted = _accepted_for(sim, sample, result)
        assert id(accepted) not in used, f"{sample['request_id']} matched a message twice"
        used.add(id(accepted))
        CHECKS[sample["backend"]](sample, result, accepted)


def _accepted_for(sim: Simulator, sample: dict[str, Any], result: dict[str, Any]) -> Accepted:
    """The one message the simulator recorded for this sample."""
    rid, backend = sample["request_id"], sample["backend"]
    operation = sample.get("operation", "send")
    if backend == "feishu_webhook":  # no id of any kind: match on the content
        expected = content_of(sample)
        found = [a for a in sim.accepted if a.backend == backend and a.content_decoded == expected]
    elif backend == "mindoffice_group" or (
        backend == "feishu_message" and operation in ("send", "reply")
    ):  # by the idempotency key the platform saw (x-request-id, uuid)
        found = [a for a in sim.accepted if a.idempotency == rid]
    else:  # IM update, ephemeral send and delete: by the platform's message id
        found = [
            a
            for a in sim.accepted
            if a.backend == backend
            and a.operation == operation
            and a.message_id == result["message_id"]
        ]
    assert len(found) == 1, f"{rid}: {len(found)} matching messages in the simulator"
    assert found[0].backend == backend and found[0].operation == operation
    return found[0]


def _check_webhook(sample: dict[str, Any], result: dict[str, Any], accepted: Accepted) -> None:
    body, content = accepted.body, content_of(sample)
    assert result["message_id"] is None  # the webhook returns none
    assert body["msg_type"] == sample["msg_type"]
    if sample["msg_type"] == "interactive":
        assert body["card"] == content and "content" not in body  # a top-level card object
    else:
        assert body["content"] == content and "card" not in body
    secret = DEV_CREDENTIALS["CARDQ_DEV_WEBHOOK_SECRET"]
    assert body["sign"] == sign(secret, int(body["timestamp"]))  # alerts-webhook is signed


def _check_message(sample: dict[str, Any], result: dict[str, Any], accepted: Accepted) -> None:
    body, target = accepted.body, sample["target"]
    operation = sample.get("operation", "send")
    assert isinstance(body["content"], str)  # the IM API takes a JSON-encoded string
    assert orjson.loads(body["content"]) == content_of(sample) == accepted.content_decoded
    assert result["message_id"] == accepted.message_id and result["message_id"].startswith("om_")
    if operation == "update":
        assert set(body) == {"content"}
        assert accepted.destination == f"message:{target['message_id']}"
        return
    assert body["msg_type"] == sample["msg_type"] and body["uuid"] == sample["request_id"]
    if operation == "reply":
        assert accepted.destination == f"message:{target['message_id']}"
        assert body["reply_in_thread"] is target["reply_in_thread"]
    else:
        assert body["receive_id"] == target["receive_id"]
        assert accepted.destination == f"{target['receive_id_type']}:{target['receive_id']}"


def _check_ephemeral(sample: dict[str, Any], result: dict[str, Any], accepted: Accepted) -> None:
    body, target = accepted.body, sample["target"]
    assert result["message_id"] == accepted.message_id
    if sample.get("operation") == "delete":
        assert body == {"message_id": target["message_id"]}
        return
    assert isinstance(body["card"], dict) and body["card"] == content_of(sample)  # an object
    assert body["msg_type"] == "interactive"
    assert {k: body[k] for k in target} == target  # chat_id and the user


def _check_mindoffice(sample: dict[str, Any], result: dict[str, Any], accepted: Accepted) -> None:
    body = accepted.body
    assert result["message_id"] == accepted.message_id
    assert accepted.idempotency == sample["request_id"]  # x-request-id
    assert accepted.sender == DEV_MIND_APP_ID
    assert body["group_id"] == sample["target"]["group_id"]
    assert body["msg_type"] == sample["msg_type"]
    assert isinstance(body["content"], str)  # a JSON-encoded string
    assert orjson.loads(body["content"]) == content_of(sample) == accepted.content_decoded


CHECKS = {
    "feishu_webhook": _check_webhook,
    "feishu_message": _check_message,
    "feishu_ephemeral": _check_ephemeral,
    "mindoffice_group": _check_mindoffice,
}
