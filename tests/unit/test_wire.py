"""Bounded JSON decoding of events (schema/wire.py) and parsing of hostile entries
(worker/entries.py): each poison entry gets its dead-letter reason and raises nothing else."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from schema import AlertEvent, describe_errors
from schema.wire import MAX_JSON_DEPTH, WireError, json_depth_exceeds, loads_event
from testing.poison import POISON, Poison, good_event, malformed_entries
from worker.entries import Entry, InvalidEntry, parse_entry


@pytest.mark.parametrize("poison", POISON, ids=[p.name for p in POISON])
def test_each_poison_entry_is_invalid_with_its_reason(poison: Poison) -> None:
    with pytest.raises(InvalidEntry) as info:
        parse_entry(Entry("1-0", poison.fields))
    assert info.value.reason == poison.reason
    assert len(info.value.error) < 200


def test_ten_thousand_malformed_entries_are_each_invalid_and_raise_nothing_else() -> None:
    reasons: set[str] = set()
    for i, fields in enumerate(malformed_entries(10_000)):
        with pytest.raises(InvalidEntry) as info:
            parse_entry(Entry(f"{i}-0", fields))
        reasons.add(info.value.reason)
    assert reasons == {"invalid_event", "invalid_json", "too_deep", "number_too_large",
                       "missing_event_field", "too_large"}


def test_a_good_event_parses() -> None:
    assert parse_entry(Entry("1-0", good_event("db-down"))).alert_id == "db-down"


@pytest.mark.parametrize(
    ("raw", "deep"),
    [
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
        (b'{"a":"' + b"[" * 100 + b'"}', False),  # brackets inside a string do not count
        (b'{"a":"\\"' + b"[" * 100 + b'"}', False),  # nor after an escaped quote
        (b'{"a":"\\\\"' + b",[" * 40 + b"}", True),  # an escaped backslash ends the string
    ],
)
def test_depth_is_counted_outside_strings(raw: bytes, deep: bool) -> None:
    assert json_depth_exceeds(raw, MAX_JSON_DEPTH) is deep


def test_numbers_within_bounds_are_read_exactly() -> None:
    assert loads_event(b'{"n": 123456789012345678901234567890, "f": -1.5e300}') == {
        "n": 123456789012345678901234567890, "f": -1.5e300}


def test_a_number_out_of_range_is_number_too_large() -> None:
    with pytest.raises(WireError) as info:
        loads_event(b'{"f": -1e400}')
    assert info.value.reason == "number_too_large"


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"f": float("nan")}, "NaN or Infinity"),
        ({"f": [float("-inf")]}, "NaN or Infinity"),
        ({"n": 10**150}, "more than 100 digits"),
        ({"s": "\ud800"}, "valid Unicode"),
        ({"k\x00": 1}, "NUL"),
        (_deep(5000), "nest more than"),
    ],
)
def test_the_model_refuses_metadata_postgres_or_the_wire_would_refuse(
    metadata: dict[str, Any], reason: str
) -> None:
    """Producers build events in Python: they get the same refusal, never a RecursionError."""
    with pytest.raises(pydantic.ValidationError) as info:
        AlertEvent(alert_id="a", group="g", message="m", metadata=metadata)
    [(field, message)] = describe_errors(info.value)
    assert field == "metadata"
    assert reason in message


def test_a_metadata_cycle_is_refused_not_looped_over() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(pydantic.ValidationError):
        AlertEvent(alert_id="a", group="g", message="m", metadata=cycle)
