"""Worker-side validation details the JSON Schema cannot express."""

from __future__ import annotations

import pytest

from cardq.validation import ValidationError, decode, from_dict


def mind(content: object) -> dict[str, object]:
    return {
        "version": 1,
        "request_id": "r1",
        "backend": "mindoffice_group",
        "bot": "mind",
        "target": {"group_id": "g1"},
        "msg_type": "interactive",
        "content": content,
    }


def test_content_string_with_raw_line_breaks_is_accepted_like_the_platform_does() -> None:
    """Seed 001's first interactive example carries a newline inside a JSON string."""
    raw = '{"elements":[{"tag":"markdown","content":"line one\n line two"}]}'
    request = from_dict(mind(raw))
    assert request.content["elements"][0]["content"] == "line one\n line two"


def test_content_string_that_is_not_json_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        from_dict(mind("{not json"))
    assert info.value.field == "content"


def test_destination_key_is_backend_bot_target() -> None:
    assert from_dict(mind({"elements": []})).destination == "mindoffice_group/mind/group:g1"


def test_oversized_record_is_refused_before_decoding() -> None:
    with pytest.raises(ValidationError) as info:
        decode(b"x" * 100, max_bytes=10)
    assert info.value.code == "record_too_large"
