"""Contract 1: the alert event model, group members, and the generated JSON Schema."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from schema import (
    DEDUP_WINDOW_MAX_S,
    DEFAULT_DEDUP_WINDOW_S,
    EVENT_SCHEMA_PATH,
    METADATA_MAX_BYTES,
    AlertEvent,
    Member,
)
from schema.__main__ import render_event_schema

VALID: dict[str, Any] = {
    "alert_id": "db-down",
    "group": "platform-oncall",
    "message": "Primary database is down",
}


def event(**overrides: Any) -> AlertEvent:
    return AlertEvent.model_validate({**VALID, **overrides})


def rejected_field(data: dict[str, Any]) -> str:
    """The field pydantic blames for rejecting ``data`` (fails the test if it is accepted)."""
    with pytest.raises(pydantic.ValidationError) as info:
        AlertEvent.model_validate(data)
    first = info.value.errors()[0]
    if first["loc"]:
        return ".".join(str(part) for part in first["loc"])
    return str(first["msg"]).split(":", 1)[0]  # model-level checks name their field first


# --- required fields, defaults -------------------------------------------------------------------


def test_minimal_event_gets_the_contract_defaults() -> None:
    parsed = event()
    assert parsed.tenant == "default"
    assert parsed.dedup_window_s == DEFAULT_DEDUP_WINDOW_S == 300
    assert parsed.action == "trigger"
    assert parsed.mode == "parallel"
    assert parsed.metadata == {}
    assert parsed.event_id is None


@pytest.mark.parametrize("missing", ["alert_id", "group", "message"])
def test_trigger_without_a_required_field_is_rejected_naming_it(missing: str) -> None:
    data = {k: v for k, v in VALID.items() if k != missing}
    assert rejected_field(data) == missing


def test_resolve_needs_only_the_alert_id() -> None:
    parsed = AlertEvent.model_validate({"alert_id": "db-down", "action": "resolve"})
    assert parsed.action == "resolve"
    assert parsed.group is None
    assert parsed.message is None
    assert not parsed.is_trigger


def test_ack_needs_only_the_alert_id_and_says_who_when_given() -> None:
    parsed = AlertEvent.model_validate(
        {"alert_id": "db-down", "action": "ack", "acknowledged_by": "  alice "}
    )
    assert (parsed.action, parsed.acknowledged_by, parsed.group) == ("ack", "alice", None)
    assert not parsed.is_trigger
    anonymous = AlertEvent.model_validate({"alert_id": "db-down", "action": "ack"})
    assert anonymous.acknowledged_by is None


@pytest.mark.parametrize("action", ["trigger", "resolve", None])
def test_acknowledged_by_is_refused_on_anything_but_an_ack(action: str | None) -> None:
    data = {**VALID, "acknowledged_by": "alice"}
    if action is not None:
        data["action"] = action
    assert rejected_field(data) == "acknowledged_by"


@pytest.mark.parametrize("value", [None, "", "   ", "a\nb", "x" * 201, 5])
def test_acknowledged_by_follows_the_identifier_rules_and_is_never_null(value: Any) -> None:
    data = {"alert_id": "a", "action": "ack", "acknowledged_by": value}
    assert rejected_field(data) == "acknowledged_by"


def test_explicit_trigger_without_group_is_rejected() -> None:
    assert rejected_field({"alert_id": "a", "message": "m", "action": "trigger"}) == "group"


# --- strings: strip, blank, lengths --------------------------------------------------------------


@pytest.mark.parametrize("field", ["alert_id", "group", "tenant", "event_id"])
def test_identifiers_are_stripped(field: str) -> None:
    assert getattr(event(**{field: "  x-1  "}), field) == "x-1"


@pytest.mark.parametrize("field", ["alert_id", "group", "tenant", "event_id", "message"])
@pytest.mark.parametrize("blank", ["", "   ", "\t \n"])
def test_blank_strings_are_rejected_naming_the_field(field: str, blank: str) -> None:
    assert rejected_field({**VALID, field: blank}) == field


@pytest.mark.parametrize("field", ["alert_id", "group", "tenant", "event_id"])
def test_identifiers_accept_200_characters_and_reject_201(field: str) -> None:
    assert getattr(event(**{field: "x" * 200}), field) == "x" * 200
    assert rejected_field({**VALID, field: "x" * 201}) == field


def test_identifier_length_is_counted_after_stripping() -> None:
    assert event(alert_id="  " + "x" * 200 + "  ").alert_id == "x" * 200


def test_two_kilobyte_alert_id_is_rejected() -> None:
    assert rejected_field({**VALID, "alert_id": "a" * 2048}) == "alert_id"


def test_message_accepts_1000_characters_and_rejects_1001() -> None:
    assert event(message="m" * 1000).message == "m" * 1000
    assert rejected_field({**VALID, "message": "m" * 1001}) == "message"


def test_non_string_alert_id_is_rejected() -> None:
    assert rejected_field({**VALID, "alert_id": 12345}) == "alert_id"


# --- message control characters ------------------------------------------------------------------


def test_control_characters_are_removed_from_the_message() -> None:
    parsed = event(message="Disk\x00 full\x07 on\x1b[31m db-1\u200b\x7f")
    assert parsed.message == "Disk full on[31m db-1"


def test_newlines_and_tabs_in_the_message_become_single_spaces() -> None:
    assert event(message="line one\nline two\r\n\tthree").message == "line one line two three"


def test_message_of_only_control_characters_is_rejected_as_blank() -> None:
    assert rejected_field({**VALID, "message": "\x00\x01\x1b\x7f\n"}) == "message"


def test_resolve_may_omit_message_but_not_send_a_blank_one() -> None:
    assert rejected_field({"alert_id": "a", "action": "resolve", "message": "\x00"}) == "message"


# --- unknown fields, enums -----------------------------------------------------------------------


def test_unknown_field_is_rejected_naming_it() -> None:
    assert rejected_field({**VALID, "severity": "high"}) == "severity"


def test_typo_of_a_known_field_is_rejected() -> None:
    assert rejected_field({**VALID, "dedup_window": 60}) == "dedup_window"


@pytest.mark.parametrize(
    ("field", "value"), [("action", "resolve"), ("action", "ack"), ("mode", "sequential")]
)
def test_enum_fields_accept_their_values(field: str, value: str) -> None:
    assert getattr(event(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("action", "acknowledge"), ("action", "TRIGGER"), ("mode", "serial"), ("mode", "")],
)
def test_enum_fields_reject_other_values(field: str, value: str) -> None:
    assert rejected_field({**VALID, field: value}) == field


# --- dedup_window_s ------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, 1, 300, DEDUP_WINDOW_MAX_S])
def test_dedup_window_accepts_0_to_86400(window: int) -> None:
    assert event(dedup_window_s=window).dedup_window_s == window


@pytest.mark.parametrize("window", [-1, DEDUP_WINDOW_MAX_S + 1, True, False, 1.5, "30", None])
def test_dedup_window_rejects_out_of_range_and_non_integers(window: Any) -> None:
    assert rejected_field({**VALID, "dedup_window_s": window}) == "dedup_window_s"


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_is_kept_as_given() -> None:
    meta = {"host": "db-1", "tags": ["prod", "eu"], "nested": {"n": 1}}
    assert event(metadata=meta).metadata == meta


def test_metadata_of_exactly_4_kib_as_json_is_accepted() -> None:
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    meta = {"k": "x" * (METADATA_MAX_BYTES - overhead)}
    assert event(metadata=meta).metadata == meta


def test_metadata_over_4_kib_as_json_is_rejected() -> None:
    assert rejected_field({**VALID, "metadata": {"k": "x" * METADATA_MAX_BYTES}}) == "metadata"


def test_metadata_size_counts_utf8_bytes_not_characters() -> None:
    # 1500 characters, 3 bytes each: small by characters, over 4 KiB on the wire.
    assert rejected_field({**VALID, "metadata": {"k": "€" * 1500}}) == "metadata"


@pytest.mark.parametrize("meta", [["a"], "text", 5])
def test_metadata_must_be_an_object(meta: Any) -> None:
    assert rejected_field({**VALID, "metadata": meta}) == "metadata"


# --- event_id and the stream entry ---------------------------------------------------------------


def test_event_id_is_kept_for_idempotency() -> None:
    assert event(event_id="deploy-42:attempt-1").event_id == "deploy-42:attempt-1"


def test_stream_entry_is_one_event_field_holding_json_that_round_trips() -> None:
    parsed = event(metadata={"host": "db-1"}, mode="sequential")
    entry = parsed.to_entry()
    assert list(entry) == ["event"]
    assert AlertEvent.model_validate_json(entry["event"]) == parsed


def test_stream_entry_omits_absent_optional_fields() -> None:
    document = json.loads(AlertEvent.model_validate({"alert_id": "a", "action": "resolve"})
                          .to_entry()["event"])
    assert "group" not in document
    assert "message" not in document
    assert "event_id" not in document


def test_stream_entry_leaves_out_fields_equal_to_their_defaults() -> None:
    # the worker applies the same defaults: 65 bytes on the wire instead of 156
    written = event(tenant="default", dedup_window_s=300, mode="parallel", metadata={})
    assert json.loads(written.to_entry()["event"]) == VALID
    assert AlertEvent.model_validate_json(written.to_entry()["event"]) == written


def test_stream_entry_keeps_every_field_that_differs_from_its_default() -> None:
    written = event(tenant="acme", dedup_window_s=0, mode="sequential", metadata={"a": 1},
                    event_id="e-1")
    assert json.loads(written.to_entry()["event"]) == {
        **VALID, "tenant": "acme", "dedup_window_s": 0, "mode": "sequential",
        "metadata": {"a": 1}, "event_id": "e-1"}


def test_stream_entry_of_a_resolve_is_the_alert_id_and_the_action() -> None:
    resolve = AlertEvent.model_validate({"alert_id": "db-down", "action": "resolve"})
    assert json.loads(resolve.to_entry()["event"]) == {"alert_id": "db-down",
                                                       "action": "resolve"}


def test_events_are_immutable() -> None:
    parsed = event()
    with pytest.raises(pydantic.ValidationError):
        parsed.alert_id = "other"


# --- members -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "e164"),
    [
        ("+14155550100", "+14155550100"),
        ("+1 415 555 0100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+1.415.555.0100", "+14155550100"),
        ("  +442079460958 ", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
    ],
)
def test_member_phone_is_normalized_to_e164(typed: str, e164: str) -> None:
    assert Member(name="Alice", phone=typed).phone == e164


@pytest.mark.parametrize(
    "phone",
    [
        "4155550100",  # no country code
        "(415) 555-0100",
        "+0123456789",  # country codes never start with 0
        "+1234567890123456",  # 16 digits: longer than E.164 allows
        "+1",
        "+1415555O100",  # letter O
        "call me",
        "",
    ],
)
def test_member_phone_that_is_not_e164_is_rejected(phone: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        Member(name="Alice", phone=phone)
    assert info.value.errors()[0]["loc"] == ("phone",)


def test_member_name_is_required_and_not_blank() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        Member(name="  ", phone="+14155550100")
    assert info.value.errors()[0]["loc"] == ("name",)


def test_member_rejects_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        Member.model_validate({"name": "Alice", "phone": "+14155550100", "email": "a@b"})


# --- the JSON Schema for producers in other languages --------------------------------------------


def test_checked_in_json_schema_matches_the_model() -> None:
    """Fails when the model changes without `python -m schema` being rerun."""
    assert EVENT_SCHEMA_PATH.read_text() == render_event_schema()


def test_json_schema_states_the_contract_rules() -> None:
    document = json.loads(EVENT_SCHEMA_PATH.read_text())
    props = document["properties"]
    assert set(props) == set(AlertEvent.model_fields)
    assert document["additionalProperties"] is False
    assert document["required"] == ["alert_id"]
    # a trigger (the default action) needs group and message; a resolve does not
    assert document["if"] == {"properties": {"action": {"const": "trigger"}}}
    assert sorted(document["then"]["required"]) == ["group", "message"]
    assert (props["alert_id"]["minLength"], props["alert_id"]["maxLength"]) == (1, 200)
    assert (props["tenant"]["minLength"], props["tenant"]["maxLength"]) == (1, 200)
    string_variant = next(v for v in props["message"]["anyOf"] if v["type"] == "string")
    assert string_variant["maxLength"] == 1000
    window = props["dedup_window_s"]
    assert window["type"] == "integer"
    assert (window["minimum"], window["maximum"]) == (0, DEDUP_WINDOW_MAX_S)
    assert window["default"] == DEFAULT_DEDUP_WINDOW_S
    assert props["action"]["enum"] == ["trigger", "resolve", "ack"]
    # who acknowledged: a string (never null), only on an ack
    assert props["acknowledged_by"]["type"] == "string"
    assert "default" not in props["acknowledged_by"]
    assert document["dependentSchemas"] == {
        "acknowledged_by": {"properties": {"action": {"const": "ack"}}, "required": ["action"]}
    }
    assert props["mode"]["enum"] == ["parallel", "sequential"]
    assert props["metadata"]["type"] == "object"


# --- rounds -------------------------------------------------------------------------------------


def test_rounds_default_to_the_groups_and_may_be_set_by_the_event() -> None:
    assert (event().rounds, event().round_delay_s) == (None, None)
    assert (event(rounds=5, round_delay_s=0).rounds, event(round_delay_s=0).round_delay_s) == (
        5, 0)


@pytest.mark.parametrize(("field", "value"), [
    ("rounds", 0), ("rounds", 21), ("rounds", True), ("rounds", "3"), ("rounds", 2.5),
    ("rounds", None), ("round_delay_s", -1), ("round_delay_s", 86401), ("round_delay_s", None),
])
def test_rounds_out_of_bounds_or_not_whole_numbers_are_refused(field: str, value: Any) -> None:
    assert rejected_field({**VALID, field: value}) == field


def test_json_schema_states_the_round_bounds() -> None:
    props = json.loads(EVENT_SCHEMA_PATH.read_text())["properties"]
    assert (props["rounds"]["type"], props["rounds"]["minimum"], props["rounds"]["maximum"]) == (
        "integer", 1, 20)
    assert (props["round_delay_s"]["minimum"], props["round_delay_s"]["maximum"]) == (0, 86400)
    assert "default" not in props["rounds"]
