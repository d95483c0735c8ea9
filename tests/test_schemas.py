"""The contract (``schemas/*.v1.json``) and the worker's own validation, held together.

Every example under ``schemas/examples`` is run through both the JSON Schema (Draft 2020-12,
with format assertion) and ``cardq.validation.from_dict``:

* ``valid/``: both accept it;
* ``invalid/``: both refuse it, for the one reason ``expected-errors.json`` names;
* ``worker-only-invalid/``: the schema accepts it (it cannot see the rule) and the worker refuses
  it, as ``worker-only-expected-errors.json`` names;
* ``results/``: results and dead letters, checked against their schemas, next to ones built here
  from real ``Result`` objects.

How a jsonschema error is mapped to the worker's field path (``ValidationError.field``):

1. the error's ``absolute_path`` is written the worker's way: ``content.elements[0].action[1]``;
2. a ``required`` error is reported on the object that lacks the property, so the missing name is
   appended (``target`` + ``receive_id``); an ``additionalProperties`` error likewise gets the
   unexpected name appended (``target`` + ``chat_id``);
3. the schema and the worker agree when the two paths are equal or one is a prefix of the other
   at a path boundary. The schema may stop one level up (``target`` is missing where the worker
   reports ``target.group_id``; an ``anyOf`` over the user fields is reported on ``target`` where
   the worker names ``target.open_id``), or go one level down (a type error on ``content.text``
   where the worker reports ``content``). A root (``$``) path only matches ``$``.

Every schema error of an invalid example must agree with the expected field, so that each
example fails for exactly one reason.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError
from referencing import Registry, Resource

from cardq import validation
from cardq.backends import REGISTRY as BACKEND_CLASSES
from cardq.backends.cards import FEISHU_HEADER_COLOURS
from cardq.backends.mindoffice_group import HEADER_COLOURS as MINDOFFICE_HEADER_COLOURS
from cardq.models import (
    DEAD_LETTER_ORIGINAL_MAX,
    ErrorInfo,
    ErrorKind,
    Result,
    Source,
    Status,
    encode_dead_letter,
)
from tests.helpers import found

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"
NAMES = ("send-request", "result", "dead-letter")


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


SCHEMA = {name: load(SCHEMAS / f"{name}.v1.json") for name in NAMES}
#: v2 results and dead letters: for requests that opted in with subject_key / digest_key.
V2_NAMES = ("result", "dead-letter")
SCHEMA.update({f"{name}.v2": load(SCHEMAS / f"{name}.v2.json") for name in V2_NAMES})
SEND = SCHEMA["send-request"]
REGISTRY: Registry = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMA.values()
)

# RFC 3339 §5.6 date-time, for when jsonschema's optional date-time checker is not installed.
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
FORMATS = FormatChecker()
if "date-time" not in FORMATS.checkers:

    @FORMATS.checks("date-time")
    def _rfc3339(value: object) -> bool:
        if not isinstance(value, str):
            return True
        m = _DATE_TIME.fullmatch(value)
        if m is None:
            return False
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        try:
            date(year, month, day)
        except ValueError:
            return False
        offset_ok = m.group(9) is None or (int(m.group(9)) < 24 and int(m.group(10)) < 60)
        return hour < 24 and minute < 60 and second <= 60 and offset_ok


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMA[name], format_checker=FORMATS, registry=REGISTRY)


VALIDATORS = {name: validator(name) for name in SCHEMA}


def schema_errors(name: str, instance: Any) -> list[SchemaError]:
    return list(VALIDATORS[name].iter_errors(instance))


def dotted(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "$"


def error_fields(error: SchemaError) -> list[str]:
    """The worker-style field paths one jsonschema error points at (see the module docstring)."""
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        return [dotted([*path, name]) for name in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(str(name) for name in error.instance if name not in known)
        return [dotted([*path, name]) for name in extra]
    return [dotted(path)]


def related(a: str, b: str) -> bool:
    if a == b:
        return True
    if "$" in (a, b):
        return False
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and long[len(short)] in ".["


def examples(folder: str) -> list[Path]:
    return found(EXAMPLES / folder)


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


VALID = examples("valid")
INVALID = examples("invalid")
WORKER_ONLY = examples("worker-only-invalid")
RESULTS = examples("results")
EXPECTED = load(EXAMPLES / "expected-errors.json")
WORKER_ONLY_EXPECTED = load(EXAMPLES / "worker-only-expected-errors.json")


# ---------------------------------------------------------------------------- the schema files


@pytest.mark.parametrize("name", NAMES)
def test_schema_file_is_a_valid_2020_12_schema(name: str) -> None:
    schema = SCHEMA[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:cardq:schema:{name}:v1"
    assert schema["title"]
    assert schema["description"]
    assert schema["properties"]["version"]["const"] == 1
    assert "version" in schema["required"]


def test_the_dead_letter_result_is_the_result_schema_by_id() -> None:
    assert SCHEMA["dead-letter"]["properties"]["result"]["$ref"] == SCHEMA["result"]["$id"]
    resolved = REGISTRY.resolver().lookup(SCHEMA["result"]["$id"]).contents
    assert resolved is SCHEMA["result"]


# ------------------------------------------------------------------------ send-request examples


def test_there_are_enough_examples() -> None:
    assert len(VALID) >= 20
    assert len(INVALID) >= 12
    assert sorted(EXPECTED) == ids(INVALID)
    assert sorted(WORKER_ONLY_EXPECTED) == ids(WORKER_ONLY)


def test_valid_examples_cover_every_backend_operation_and_msg_type() -> None:
    seen = set()
    for path in VALID:
        data = load(path)
        seen.add((data["backend"], data.get("operation", "send"), data.get("msg_type")))
    for backend, cls in BACKEND_CLASSES.items():
        for operation, spec in cls.description.operations.items():
            have = {m for b, o, m in seen if b == backend and o == operation}
            assert have, f"no valid example for {backend} {operation}"
            if operation == "send":
                assert have == set(spec.msg_types), f"{backend} send: {have ^ spec.msg_types}"


@pytest.mark.parametrize("path", VALID, ids=ids(VALID))
def test_valid_example_passes_schema_and_worker(path: Path) -> None:
    data = load(path)
    errors = schema_errors("send-request", data)
    assert [f"{dotted(list(e.absolute_path))}: {e.message}" for e in errors] == []
    request = validation.from_dict(data)
    assert request.destination.startswith(f"{data['backend']}/{data['bot']}/")


@pytest.mark.parametrize("path", INVALID, ids=ids(INVALID))
def test_invalid_example_fails_schema_and_worker_on_the_same_field(path: Path) -> None:
    data = load(path)
    expected = EXPECTED[path.name]
    field = expected["field"]

    errors = schema_errors("send-request", data)
    assert errors, "the schema accepts it"
    for error in errors:
        fields = error_fields(error)
        assert any(related(f, field) for f in fields), (
            f"schema error at {fields} ({error.message[:120]}) is not about {field}"
        )

    with pytest.raises(validation.ValidationError) as caught:
        validation.from_dict(data)
    assert caught.value.field == field
    assert expected["reason_contains"] in caught.value.reason


@pytest.mark.parametrize("path", WORKER_ONLY, ids=ids(WORKER_ONLY))
def test_worker_only_example_passes_schema_but_fails_worker(path: Path) -> None:
    data = load(path)
    expected = WORKER_ONLY_EXPECTED[path.name]
    assert schema_errors("send-request", data) == [], "the schema can say this: move to invalid/"
    with pytest.raises(validation.ValidationError) as caught:
        validation.from_dict(data)
    assert caught.value.field == expected["field"]
    assert expected["reason_contains"] in caught.value.reason


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2025-05-01T09:30:00Z", True),
        ("2025-05-01T17:30:00.123456789+08:00", True),
        ("2025-05-01T09:30:00-00:00", True),
        ("2025-05-01T09:30Z", False),  # no seconds: ISO 8601, not RFC 3339
        ("20250501T093000Z", False),
        ("2025-05-01X09:30:00Z", False),
        ("2025-05-01T09:30:00+0800", False),
        ("2025-W18-4T09:30:00Z", False),
        ("2025-05-01T09:30:00z", False),  # RFC 3339 allows lower case; the contract does not
        ("2025-04-31T09:30:00Z", False),
    ],
)
def test_schema_and_worker_agree_on_timestamps(value: str, ok: bool) -> None:
    data = {**load(EXAMPLES / "valid" / "webhook-text-trace-expires.json"), "expires_at": value}
    assert (schema_errors("send-request", data) == []) is ok
    if ok:
        validation.from_dict(data)
    else:
        with pytest.raises(validation.ValidationError, match="expires_at"):
            validation.from_dict(data)


@pytest.mark.parametrize("name", ["request_id", "bot", "idempotency_key"])
def test_a_trailing_newline_is_not_part_of_an_identifier(name: str) -> None:
    data = {**load(EXAMPLES / "valid" / "webhook-text-content-string.json"), name: "abc\n"}
    with pytest.raises(validation.ValidationError) as caught:
        validation.from_dict(data)
    assert caught.value.field == name


# ----------------------------------------- the schema says what the backends' OperationSpecs say


def operation_branch(backend: str, operation: str) -> dict[str, Any]:
    """The properties and required names the schema applies to one backend and operation."""
    definition = SEND["$defs"][backend]
    properties = dict(definition.get("properties", {}))
    required = list(definition.get("required", []))
    for part in definition.get("allOf", []):
        condition = part["if"]
        for option in condition.get("anyOf", [condition]):
            const = option.get("properties", {}).get("operation", {}).get("const")
            if const == operation:
                properties.update(part["then"].get("properties", {}))
                required += part["then"].get("required", [])
    return {"properties": properties, "required": required}


def spec_cases() -> Iterator[tuple[str, str]]:
    for backend, cls in BACKEND_CLASSES.items():
        for operation in cls.description.operations:
            yield backend, operation


def test_top_level_fields_and_backends_match_the_worker() -> None:
    assert set(SEND["properties"]) == validation.TOP_LEVEL
    assert SEND["properties"]["backend"]["enum"] == list(BACKEND_CLASSES)
    for backend, cls in BACKEND_CLASSES.items():
        operations = SEND["$defs"][backend]["properties"]["operation"]["enum"]
        assert operations == list(cls.description.operations)


@pytest.mark.parametrize(("backend", "operation"), list(spec_cases()))
def test_target_and_msg_type_match_the_operation_spec(backend: str, operation: str) -> None:
    spec = BACKEND_CLASSES[backend].description.operations[operation]
    branch = operation_branch(backend, operation)
    target = branch["properties"]["target"]
    known = {*spec.required, *spec.optional, *spec.one_of, *spec.bools}
    assert set(target["properties"]) == known
    assert target["additionalProperties"] is False
    assert target.get("required", []) == list(spec.required)
    assert [a["required"] for a in target.get("anyOf", [])] == [[n] for n in spec.one_of]
    for name, field in target["properties"].items():
        if name in spec.bools:
            assert field["type"] == "boolean"
        elif name in spec.enums:
            assert field["enum"] == list(spec.enums[name])
        else:
            assert field["$ref"] == "#/$defs/target_string"
    if spec.required or spec.one_of:
        assert "target" in branch["required"]
    msg_type = branch["properties"]["msg_type"]
    if spec.msg_types:
        assert set(msg_type["enum"]) == spec.msg_types
        assert {"msg_type", "content"} <= set(branch["required"])
    else:
        assert msg_type["not"] is True
        assert branch["properties"]["content"]["not"] is True


def test_target_strings_and_header_colours_match_the_worker() -> None:
    assert SEND["$defs"]["target_string"] == {"type": "string", "minLength": 1, "maxLength": 256}
    card = SEND["$defs"]["feishu_card"]["then"]["else"]["properties"]
    assert set(card["header"]["properties"]["template"]["enum"]) - {None} == set(
        FEISHU_HEADER_COLOURS
    )
    mind = SEND["$defs"]["mindoffice_card"]["then"]["properties"]
    assert set(mind["header"]["properties"]["template"]["enum"]) - {None} == set(
        MINDOFFICE_HEADER_COLOURS
    )


def test_patterns_match_the_worker() -> None:
    props = SEND["properties"]
    assert props["request_id"]["pattern"] == validation._ID.pattern
    assert props["idempotency_key"]["pattern"] == validation._KEY.pattern
    assert props["bot"]["pattern"] == validation._BOT.pattern
    assert (props["subject_key"]["minLength"], props["subject_key"]["maxLength"]) == (1, 128)
    assert props["trace"]["properties"]["traceparent"]["pattern"] == validation._TRACEPARENT.pattern
    # The worker's timestamp pattern only makes the offset optional, for a clearer message.
    assert SEND["$defs"]["timestamp"]["pattern"] == validation._RFC3339.pattern.replace(
        ":[0-5][0-9])?$", ":[0-5][0-9])$"
    )


# --------------------------------------------------------------------- results and dead letters


#: Statuses only a v2 result may carry (a v1 consumer never sees them).
V2_STATUSES = {Status.SUPERSEDED}


@pytest.mark.parametrize("name", ["result", "result.v2"])
def test_result_enums_match_the_models(name: str) -> None:
    props = SCHEMA[name]["properties"]
    v1 = name == "result"
    assert props["status"]["enum"] == [s.value for s in Status if not v1 or s not in V2_STATUSES]
    kinds = SCHEMA[name]["$defs"]["error"]["properties"]["kind"]["enum"]
    assert kinds == [k.value for k in ErrorKind]


def test_v2_result_is_v1_plus_its_own_fields() -> None:
    v1, v2 = SCHEMA["result"], SCHEMA["result.v2"]
    added = {"subject_key", "superseded_by", "digest"}
    assert set(v2["required"]) == set(v1["required"]) | added
    for name in set(v1["properties"]) - {"version", "status"}:
        assert v2["properties"][name] == v1["properties"][name], name
    assert v2["$defs"] == v1["$defs"]  # the error object and the rest: one definition
    v1_statuses = v1["properties"]["status"]["enum"]
    assert v2["properties"]["status"]["enum"] == [*v1_statuses, "superseded"]


@pytest.mark.parametrize("path", RESULTS, ids=ids(RESULTS))
def test_result_and_dead_letter_examples(path: Path) -> None:
    name = "dead-letter" if path.name.startswith("dead-letter") else "result"
    if "-v2-" in path.name:
        name += ".v2"
    assert schema_errors(name, load(path)) == []


T0 = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)
SOURCE = Source(
    topic="cardq.requests", partition=2, offset=77, timestamp_ms=1746091800000, key=b"k"
)


def full_result() -> Result:
    return Result(
        status=Status.FAILED,
        source=SOURCE,
        worker_id="cardq-worker-1",
        received_at=T0,
        finished_at=T0 + timedelta(seconds=30),
        request_id="r-1",
        idempotency_key="k-1",
        backend="feishu_message",
        bot="ops-app",
        operation="reply",
        destination="feishu_message/ops-app/message:om_1",
        message_id="om_2",
        attempts=4,
        error=ErrorInfo(
            kind=ErrorKind.UNAVAILABLE,
            code="platform_unavailable",
            message="HTTP 503",
            field="content",
            platform_code=2200,
            platform_subcode=1,
            platform_msg="internal error",
            retryable=True,
        ),
        first_attempt_at=T0 + timedelta(milliseconds=5),
        original_request_id="r-0",
        trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        extra={"not": "encoded"},
    )


def minimal_result() -> Result:
    return Result(
        status=Status.REJECTED,
        source=Source(topic="t", partition=0, offset=0),
        worker_id="w",
        received_at=T0,
        finished_at=T0,
    )


@pytest.mark.parametrize("make", [full_result, minimal_result])
def test_built_results_match_the_schema(make: Any) -> None:
    result = make()
    assert schema_errors("result", result.as_dict()) == []
    encoded = orjson.loads(result.encode())
    assert schema_errors("result", encoded) == []
    assert set(encoded) == set(SCHEMA["result"]["required"])


def test_every_status_and_error_kind_matches_the_schema() -> None:
    for status in Status:
        for kind in ErrorKind:
            result = minimal_result()
            result.status = status
            result.error = ErrorInfo(kind=kind, code="c", message="m")
            if status not in V2_STATUSES:
                assert schema_errors("result", result.as_dict()) == []
            result.version = 2
            assert schema_errors("result.v2", result.as_dict()) == []


def v2_result() -> Result:
    result = full_result()
    result.version = 2
    result.status = Status.SUPERSEDED
    result.error = None
    result.subject_key = "7f3a9c1e"
    result.superseded_by = "r-2"
    return result


def test_a_v2_result_matches_v2_and_never_v1() -> None:
    data = orjson.loads(v2_result().encode())
    assert schema_errors("result.v2", data) == []
    assert set(data) == set(SCHEMA["result.v2"]["required"])
    assert schema_errors("result", data)  # a strict v1 consumer refuses it: hence the version
    v1_data = full_result().as_dict()
    assert schema_errors("result.v2", v1_data)  # and a v1 result is never taken for a v2 one
    digest = {**data, "digest": {"key": "db-alerts", "message_id": None, "size": 3}}
    assert schema_errors("result.v2", digest) == []
    assert schema_errors("result.v2", {**digest, "digest": {"key": "db-alerts"}})


def test_a_v2_result_goes_into_a_v2_dead_letter() -> None:
    result = v2_result()
    result.status = Status.FAILED
    result.error = ErrorInfo(kind=ErrorKind.REJECTED, code="subject_unknown", message="m")
    letter = orjson.loads(encode_dead_letter(b"{}", result))
    assert letter["version"] == 2
    assert schema_errors("dead-letter.v2", letter) == []
    assert schema_errors("dead-letter", letter)
    assert orjson.loads(encode_dead_letter(b"{}", full_result()))["version"] == 1


def test_a_result_with_an_unknown_field_or_status_fails() -> None:
    data = minimal_result().as_dict()
    assert schema_errors("result", {**data, "latency_ms": 3})
    assert schema_errors("result", {**data, "status": "sent"})
    assert schema_errors("result", {k: v for k, v in data.items() if k != "trace"})


@pytest.mark.parametrize(
    ("original", "result"),
    [
        (b'{"version": 1}', full_result()),
        (b"\xff not json", minimal_result()),
        (b"x" * (DEAD_LETTER_ORIGINAL_MAX + 10), full_result()),
    ],
    ids=["full", "minimal-no-key", "truncated"],
)
def test_built_dead_letters_match_the_schema(original: bytes, result: Result) -> None:
    letter = orjson.loads(encode_dead_letter(original, result))
    assert schema_errors("dead-letter", letter) == []
    assert letter["original"]["truncated"] is (len(original) > DEAD_LETTER_ORIGINAL_MAX)
    kept = base64.b64decode(letter["original"]["value_b64"])
    assert original.startswith(kept)


def test_a_dead_letter_checks_its_result_through_the_reference() -> None:
    letter = orjson.loads(encode_dead_letter(b"{}", minimal_result()))
    letter["result"]["status"] = "lost"
    errors = schema_errors("dead-letter", letter)
    assert [dotted(list(e.absolute_path)) for e in errors] == ["result.status"]
