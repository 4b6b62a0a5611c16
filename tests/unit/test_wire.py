"""Bounded JSON decoding of events (schema/wire.py) and parsing of hostile entries
(worker/entries.py): each poison entry gets its dead-letter reason and raises nothing else."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schema import AlertEvent, describe_errors
from schema.wire import (
    MAX_JSON_DEPTH,
    WireError,
    _scan_depth_exceeds,
    json_depth_exceeds,
    loads_event,
)
from testing.poison import POISON, Poison, good_event, malformed_entries
from worker.entries import Entry, InvalidEntry, ParsedEvent, parse_entry, parse_events


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


@given(st.binary(max_size=80) | st.text('[]{}"\\a', max_size=80).map(str.encode),
       st.integers(min_value=0, max_value=8))
def test_the_bracket_count_shortcut_decides_as_the_scan_does(raw: bytes, limit: int) -> None:
    assert json_depth_exceeds(raw, limit) is _scan_depth_exceeds(raw, limit)


def test_a_batch_parses_each_entry_as_parse_entry_does_and_shares_identical_payloads() -> None:
    poison = POISON[0].fields
    fields = [good_event("a"), good_event("a"), poison, good_event("b"), poison, {b"x": b"1"}]
    entries = [Entry(f"{i}-0", f) for i, f in enumerate(fields)]
    outcomes = parse_events(entries)
    assert len(outcomes) == len(entries)
    for entry, outcome in zip(entries, outcomes, strict=True):
        try:
            expected: AlertEvent | InvalidEntry = parse_entry(entry)
        except InvalidEntry as exc:
            expected = exc
        if isinstance(expected, InvalidEntry):
            assert isinstance(outcome, InvalidEntry)
            assert (outcome.reason, outcome.error) == (expected.reason, expected.error)
        else:
            assert isinstance(outcome, ParsedEvent)
            assert outcome.entry is entry  # its own stream id, so its own event_key
            assert outcome.event == expected
    first, second = outcomes[0], outcomes[1]
    assert isinstance(first, ParsedEvent)
    assert isinstance(second, ParsedEvent)
    assert first.event is second.event  # parsed once
    assert first.event_key != second.event_key


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
