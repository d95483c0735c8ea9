"""Alert lifecycle end to end: Tansu, a ``cardq run`` process with the Redis store, and
the simulator over HTTP. Fire → acknowledge → resolve by ``subject_key`` leaves one card
per alert in the chat, showing its latest state; states replaced in the queue get their
``superseded`` result; every record gets exactly one result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cardq.simulator import Simulator
from cardq.testing import ResultCollector, produce
from tests import helpers
from tests.brokers import BrokerUnderTest

CHAT = "oc_storm"
STATES = ("FIRING", "ACKED", "RESOLVED")


def alert(rid: str, subject: str, state: str) -> dict[str, Any]:
    card = {"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": state}]}}
    request = helpers.im(rid, CHAT, subject_key=subject, msg_type="interactive", content=card)
    return request


def chat_states(sim: Simulator) -> list[str]:
    """The state each card in the chat shows now, in the order the cards were sent."""
    return [content["body"]["elements"][0]["content"] for _, content in sim.chat(f"chat_id:{CHAT}")]


def one_result_per_record(results: ResultCollector) -> dict[str, dict[str, Any]]:
    sources = [(r["source"]["partition"], r["source"]["offset"]) for r in results.results]
    assert len(sources) == len(set(sources)), "a record got two results"
    return {str(r["request_id"]): r for r in results.results}


async def test_fire_update_resolve_by_subject_key(
    broker: BrokerUnderTest, sim: Simulator, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    await broker.create_all()
    config = broker.write_config(
        tmp_path / "cardq.yaml",
        sim.base_url,
        idempotency={"store": "redis", "redis_url": redis_url, "key_prefix": redis_prefix},
    )
    # A storm: 12 alerts fire, are acknowledged and resolved, all produced at once to one
    # chat (5 sends/s): most states are still queued when a newer one arrives.
    alerts = [f"fp-{i}" for i in range(12)]
    storm = [
        alert(f"{subject}-{state}", subject, f"{subject} {state}")
        for state in STATES
        for subject in alerts
    ]
    async with ResultCollector(broker.bootstrap_servers, broker.topics) as results:
        with helpers.worker_process(config):
            await produce(broker.bootstrap_servers, broker.topics.requests, storm)
            await results.wait_for_count(len(storm), timeout=60)
            # One alert more, its states produced one by one: each updates the same card.
            for state in STATES:
                rid = f"solo-{state}"
                await produce(
                    broker.bootstrap_servers,
                    broker.topics.requests,
                    [alert(rid, "solo", f"solo {state}")],
                )
                await results.wait_for(lambda c, rid=rid: rid in c.by_request(), timeout=30)
            solo_card = one_result_per_record(results)["solo-FIRING"]["message_id"]
            assert chat_states(sim)[-1] == "solo RESOLVED"
            # And recalled: its card leaves the chat.
            gone = helpers.im("solo-recall", CHAT, operation="recall", subject_key="solo")
            del gone["msg_type"], gone["content"]
            webhook_recall = helpers.hook("hook-recall", operation="recall", subject_key="x")
            await produce(broker.bootstrap_servers, broker.topics.requests, [gone, webhook_recall])
            total = len(storm) + len(STATES) + 2
            await results.wait_for_count(total, timeout=30)
    by_id = one_result_per_record(results)
    assert len(by_id) == total and len(results.results) == total

    # The storm: every alert shows its latest state on one card of its own.
    assert sorted(chat_states(sim)) == sorted(f"{subject} RESOLVED" for subject in alerts)
    superseded = [r for r in by_id.values() if r["status"] == "superseded"]
    assert superseded, "nothing was queued long enough to be replaced"
    for result in superseded:
        assert result["version"] == 2 and result["attempts"] == 0
        newer = by_id[result["superseded_by"]]
        assert newer["subject_key"] == result["subject_key"]
        assert STATES.index(newer["request_id"].rsplit("-", 1)[1]) > STATES.index(
            result["request_id"].rsplit("-", 1)[1]
        )
    sent = [
        r
        for r in by_id.values()
        if r["status"] == "delivered"
        and r["request_id"] in {request["request_id"] for request in storm}
    ]
    assert len(sent) + len(superseded) == len(storm)
    for subject in alerts:  # every alert's last state was delivered, never replaced
        assert by_id[f"{subject}-RESOLVED"]["status"] == "delivered"

    # The solo alert: one card, sent once and updated twice (PATCH), then recalled.
    solo = [by_id[f"solo-{state}"] for state in STATES]
    assert {(r["status"], r["message_id"], r["version"]) for r in solo} == {
        ("delivered", solo_card, 2)
    }
    ops = [(a.operation, a.message_id) for a in sim.accepted if a.message_id == solo_card]
    assert ops == [
        ("send", solo_card),
        ("update", solo_card),
        ("update", solo_card),
        ("recall", solo_card),
    ]
    assert by_id["solo-recall"]["status"] == "delivered"
    assert "solo RESOLVED" not in chat_states(sim)
    # A backend that cannot recall: rejected, naming the field and the reason.
    refused = by_id["hook-recall"]
    assert refused["status"] == "rejected" and refused["error"]["field"] == "operation"
    assert "no delete API" in refused["error"]["message"]
    # It carried subject_key: a v2 result, even refused; a request without it stays v1.
    assert (refused["version"], refused["subject_key"]) == (2, "x")
