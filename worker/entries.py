"""Stream entries and their events: what XREADGROUP returns, and the parser that validates it.

The first step of the pipeline and the vocabulary of the others: ingest reads entries,
fan-out works on parsed events, dead letters keep invalid entries, replay parses letters
again before putting them back on the stream. Imports nothing of the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pydantic

from schema import AlertEvent, describe_errors
from schema.wire import WireError, loads_event

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Entry:
    """One stream entry as read: its id and its raw fields (producers may write anything)."""

    stream_id: str
    fields: Fields


@dataclass(frozen=True)
class ParsedEvent:
    entry: Entry
    event: AlertEvent

    @property
    def event_key(self) -> str:
        """The event's identity: its event_id when given, else its stream entry."""
        if self.event.event_id:
            return f"event:{self.event.event_id}"
        return f"stream:{self.entry.stream_id}"


class InvalidEntry(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


def parse_entry(entry: Entry) -> AlertEvent:
    """The entry's event, or InvalidEntry with a reason an operator can act on.

    Bounded: the JSON is checked for size, depth and number sizes before and while it is
    decoded (``schema.wire``), so nothing an entry contains raises anything else."""
    raw = entry.fields.get(b"event")
    if raw is None:
        raise InvalidEntry("missing_event_field",
                           f"entry has no 'event' field (fields: {_field_names(entry)})")
    try:
        data = loads_event(raw)
    except WireError as exc:
        raise InvalidEntry(exc.reason, exc.error) from None
    if not isinstance(data, dict):
        raise InvalidEntry("invalid_event", "event must be a JSON object")
    try:
        return AlertEvent.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [f"{field}: {reason}" for field, reason in describe_errors(exc)]
        raise InvalidEntry("invalid_event", "; ".join(problems)) from None


def _field_names(entry: Entry, shown: int = 10, width: int = 40) -> str:
    names = sorted(k.decode(errors="replace")[:width] for k in entry.fields)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) or "none") + more


def parse_event(entry: Entry) -> ParsedEvent:
    """``entry`` with its validated event, or InvalidEntry."""
    return ParsedEvent(entry, parse_entry(entry))


def parse_events(entries: Sequence[Entry]) -> list[ParsedEvent | InvalidEntry]:
    """Each entry's parsed event, or why it is invalid, in order.

    A payload is parsed and validated once per call however many entries carry it (a storm
    is thousands of identical payloads): the outcome depends on the bytes alone, and the
    event is immutable, so entries with equal payloads can share it."""
    outcomes: dict[bytes, AlertEvent | InvalidEntry] = {}
    parsed: list[ParsedEvent | InvalidEntry] = []
    for entry in entries:
        raw = entry.fields.get(b"event")
        outcome = outcomes.get(raw) if raw is not None else None
        if outcome is None:
            try:
                outcome = parse_entry(entry)
            except InvalidEntry as exc:
                outcome = exc
            if raw is not None:
                outcomes[raw] = outcome
        parsed.append(outcome if isinstance(outcome, InvalidEntry) else ParsedEvent(entry, outcome))
    return parsed
