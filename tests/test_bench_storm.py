"""The storm benchmark's replay of what each chat shows (``bench/storm.py``, ``Chats``):
a card updated in place stops showing its old state, a card in another group's chat shows
nothing for this group, and an alert settles when its final state is first shown for good."""

from __future__ import annotations

from typing import Any

import pytest

from bench.storm import QUICK, Chats, plan, request


def accepted(operation: str, message: str, title: str, at: float, chat: str = "") -> dict[str, Any]:
    destination = f"chat_id:{chat}" if operation == "send" else f"message:{message}"
    return {
        "backend": "feishu_message",
        "operation": operation,
        "destination": destination,
        "message_id": message,
        "content_decoded": {"header": {"title": {"content": title}}},
        "at": at,
    }


def test_an_update_in_place_settles_the_alert_when_it_shows_resolved() -> None:
    chats = Chats({"a1": 7})
    chats.apply(accepted("send", "om_1", "a1 firing", 1.0, "oc_storm_007"))
    assert chats.settled_at("a1") is None
    chats.apply(accepted("update", "om_1", "a1 resolved", 2.5))
    assert chats.settled_at("a1") == 2.5
    assert chats.first_shown[("a1", "firing")] == 1.0


def test_a_card_turned_back_to_an_older_state_is_not_settled() -> None:
    chats = Chats({"a1": 7})
    chats.apply(accepted("send", "om_1", "a1 resolved", 1.0, "oc_storm_007"))
    chats.apply(accepted("update", "om_1", "a1 firing", 2.0))
    assert chats.settled_at("a1") is None
    chats.apply(accepted("update", "om_1", "a1 resolved", 3.0))
    assert chats.settled_at("a1") == 3.0


def test_a_card_in_another_groups_chat_shows_nothing_for_this_group() -> None:
    chats = Chats({"a1": 7})
    chats.apply(accepted("send", "om_1", "a1 resolved", 1.0, "oc_storm_008"))
    assert chats.settled_at("a1") is None
    # a digest listing several alerts settles each of them in its own chat
    chats = Chats({"a1": 7, "a2": 7})
    chats.apply(accepted("send", "om_2", "a1 resolved · a2 resolved", 4.0, "oc_storm_007"))
    assert chats.settled_at("a1") == chats.settled_at("a2") == 4.0


@pytest.mark.parametrize("mode", ["plain", "digest_lifecycle"])
def test_every_alert_fires_then_resolves_and_plain_requests_carry_no_new_keys(mode: str) -> None:
    events = plan(QUICK)
    assert len(events) == QUICK.events
    order = {(e.alert, e.state): i for i, e in enumerate(events)}
    assert all(order[(a, "firing")] < order[(a, "resolved")] for a, _ in order)
    everything = frozenset({"priority", "digest_key", "subject_key", "version", "content"})
    body = request(events[0], mode, everything)
    assert body["content"]["config"] == {"update_multi": True}
    assert ("subject_key" in body) == ("digest_key" in body) == (mode == "digest_lifecycle")
    assert body["priority"] in ("urgent", "normal")
    # a field the contract does not list is left out
    assert "priority" not in request(events[0], mode, frozenset({"version"}))
