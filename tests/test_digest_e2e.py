"""Digest under backlog end to end: a real broker (Tansu), the worker, and the simulator
over HTTP holding a chat to 2 sends a second.

A storm of 40 alerts for one chat is far more than its budget sends within
``digest.after_s``: the worker merges the queued ones into digest cards, every request
still gets exactly one result (pointing at the card that carried it), urgent alerts are
sent on their own, and a quiet chat of the same app in the same run sees no digest.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cardq.simulator import Simulator, SimulatorConfig
from cardq.testing import ResultCollector, produce, running_worker
from tests import helpers
from tests.brokers import BrokerUnderTest


def alert(rid: str, chat: str, **extra: Any) -> dict[str, Any]:
    return helpers.im(
        rid,
        chat,
        msg_type="interactive",
        content={
            "schema": "2.0",
            "header": {"title": {"tag": "plain_text", "content": f"Alert {rid}"}},
            "body": {"elements": [{"tag": "markdown", "content": f"https://x.test/{rid}"}]},
        },
        digest_key="grp-db",
        **extra,
    )


async def test_a_backlog_is_digested_and_a_quiet_chat_is_not(broker: BrokerUnderTest) -> None:
    await broker.create_all()
    config = SimulatorConfig(im_target_limits=((2, 1.0),))
    async with Simulator(config) as sim:
        helpers.register(sim)
        settings = broker.settings(
            sim.base_url,
            digest={"after_s": 2.0, "low_after_s": 1.0},
            bots={"app": {"limits": {"destination": [{"limit": 2, "seconds": 1.0}]}}},
        )
        storm = [
            alert(f"s{i}", "oc_busy", priority="low" if i % 2 else "normal") for i in range(40)
        ]
        storm[20]["priority"] = storm[30]["priority"] = "urgent"
        quiet = [alert(f"q{i}", "oc_quiet") for i in range(2)]
        async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
            async with running_worker(settings):
                await produce(broker.bootstrap_servers, broker.topics.requests, storm + quiet)
                await results.wait_for_count(42, timeout=60)
            by_id = results.by_request()
        accepted = {a.message_id: a for a in sim.accepted}
        throttled = sum(sim.stats.throttle_answers.values())

    assert throttled == 0
    assert all(len(answers) == 1 for answers in by_id.values())  # exactly one result each
    assert sorted(by_id) == sorted(r["request_id"] for r in storm + quiet)
    assert all(answers[0]["status"] == "delivered" for answers in by_id.values())

    busy_sends = [a for a in accepted.values() if a.body.get("receive_id") == "oc_busy"]
    assert len(busy_sends) <= 10  # 40 alerts, a handful of cards
    carried: Counter[str] = Counter()
    for rid in (r["request_id"] for r in storm):
        result = by_id[rid][0]
        assert result["version"] == 2
        digest = result["digest"]
        assert result["message_id"] in accepted  # the card that carried it
        if digest is None:
            continue
        assert digest["key"] == "grp-db" and digest["message_id"] == result["message_id"]
        carried[result["message_id"]] += 1
        card = accepted[result["message_id"]].content_decoded
        assert card["header"]["title"]["content"].startswith(f"{digest['size']} alert")
        assert f"https://x.test/{rid}" in str(card)
    assert sum(carried.values()) >= 30  # most of the storm went in digests
    for message_id, count in carried.items():
        assert by_id_digest_size(by_id, message_id) == count  # "size" is what the card held
    for rid in ("s20", "s30"):  # urgent: never merged
        assert by_id[rid][0]["digest"] is None

    quiet_sends = [a for a in accepted.values() if a.body.get("receive_id") == "oc_quiet"]
    assert len(quiet_sends) == 2
    assert all(by_id[f"q{i}"][0]["digest"] is None for i in range(2))


def by_id_digest_size(by_id: dict[str, list[dict[str, Any]]], message_id: str) -> int:
    sizes = {
        answers[0]["digest"]["size"]
        for answers in by_id.values()
        if answers[0]["digest"] and answers[0]["message_id"] == message_id
    }
    assert len(sizes) == 1
    return sizes.pop()
