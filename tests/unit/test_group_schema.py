"""Group validation (schema/group.py): one set of rules for the CLI and the HTTP API."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from schema import MAX_GROUP_MEMBERS, GroupSpec, Member, describe_errors, group_spec

ALICE = {"name": "Alice", "phone": "+14155550100"}
BOB = {"name": "Bob", "phone": "+14155550101"}


def problems(tenant: str = "default", name: str = "oncall",
             members: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(pydantic.ValidationError) as info:
        group_spec(tenant, name, [ALICE] if members is None else members)
    return describe_errors(info.value)


def test_a_valid_group_keeps_its_members_in_order_as_e164() -> None:
    spec = group_spec("acme", " oncall ", [BOB, {"name": " Alice ", "phone": "+1 (415) 555-0100"}])
    assert spec == GroupSpec(tenant="acme", name="oncall", members=[
        Member(name="Bob", phone="+14155550101"), Member(name="Alice", phone="+14155550100")])


@pytest.mark.parametrize(
    ("tenant", "reason"),
    [
        ("", "at least 1 character"),
        ("   ", "must not be blank"),
        (" acme", "must not start or end with whitespace"),
        ("acme ", "must not start or end with whitespace"),
        ("a" * 201, "at most 200 characters"),
        ("ac\x00me", "must not contain control characters"),
        ("ac\ud800me", "must be valid Unicode text"),
    ],
)
def test_a_tenant_no_event_could_address_is_refused(tenant: str, reason: str) -> None:
    [(field, message)] = problems(tenant=tenant)
    assert field == "tenant"
    assert reason in message


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "at least 1 character"),
        ("a" * 201, "at most 200 characters"),
        ("on\x01call", "must not contain control characters"),
        ("on\ncall", "must not contain control characters"),
        ("on\x7fcall", "must not contain control characters"),
    ],
)
def test_a_group_name_no_event_could_address_is_refused(name: str, reason: str) -> None:
    [(field, message)] = problems(name=name)
    assert field == "name"
    assert reason in message


@pytest.mark.parametrize("phone", ["+12", "+1415555", "+14150000000", "+1234567890123", "+0123"])
def test_a_number_with_the_shape_but_not_the_digits_is_refused(phone: str) -> None:
    [(field, message)] = problems(members=[ALICE, {"name": "Bob", "phone": phone}])
    assert field == "members.1.phone"
    assert "valid phone number" in message or "E.164" in message


def test_a_name_too_long_is_reported_on_the_name_not_the_phone() -> None:
    [(field, message)] = problems(members=[{"name": "x" * 201, "phone": "+14155550100"}])
    assert field == "members.0.name"
    assert "at most 200 characters" in message


def test_the_same_member_twice_is_refused_even_in_another_case() -> None:
    [(field, message)] = problems(members=[ALICE, BOB, {"name": "alice",
                                                        "phone": "+14155550102"}])
    assert field == "members.2.name"
    assert "earlier member" in message


def test_the_same_phone_twice_is_refused_however_it_is_typed() -> None:
    [(field, message)] = problems(members=[ALICE, {"name": "Al", "phone": "+1 415 555 0100"}])
    assert field == "members.1.phone"
    assert "ring twice" in message


def test_too_many_members_are_refused() -> None:
    members = [{"name": f"m{i}", "phone": f"+1415{200 + i // 10000:03d}{i % 10000:04d}"}
               for i in range(MAX_GROUP_MEMBERS + 1)]
    [(field, message)] = problems(members=members)
    assert field == "members"
    assert str(MAX_GROUP_MEMBERS) in message


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        GroupSpec.model_validate({"name": "oncall", "members": [], "owner": "me"})


def test_a_group_may_have_no_members() -> None:
    assert group_spec("default", "paused", []).members == []


def test_rounds_are_optional_and_bounded() -> None:
    assert (group_spec("default", "g", [ALICE]).rounds, group_spec(
        "default", "g", [ALICE], rounds=5, round_delay_s=0).round_delay_s) == (None, 0)
    for rounds, delay, field in [(0, None, "rounds"), (21, None, "rounds"),
                                 (None, -1, "round_delay_s"), (None, 86401, "round_delay_s")]:
        with pytest.raises(pydantic.ValidationError) as info:
            group_spec("default", "g", [ALICE], rounds=rounds, round_delay_s=delay)
        assert describe_errors(info.value)[0][0] == field
