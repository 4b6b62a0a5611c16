"""Events validated before anything is written: the same model, and the same words, as the
worker's dead letters and the CLI's errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pydantic

from schema import AlertEvent, describe_errors


class ValidationError(ValueError):
    """An event that does not satisfy the contract; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @classmethod
    def from_pydantic(cls, exc: pydantic.ValidationError) -> ValidationError:
        return cls(*describe_errors(exc)[0])


def build_event(**fields: Any) -> AlertEvent:
    """An :class:`AlertEvent` from keyword fields, or :class:`ValidationError`."""
    try:
        return AlertEvent.model_validate({k: v for k, v in fields.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise ValidationError.from_pydantic(exc) from None


# One validator for a whole batch: per-event model_validate calls cost more than the
# validation itself (issue 12).
_EVENT_LIST: pydantic.TypeAdapter[list[AlertEvent]] = pydantic.TypeAdapter(list[AlertEvent])


def build_events(events: Iterable[AlertEvent | Mapping[str, Any]]) -> list[AlertEvent]:
    """Every event validated (an :class:`AlertEvent` is taken as it is), or
    :class:`ValidationError` for the first invalid one."""
    items = list(events)
    try:
        return _EVENT_LIST.validate_python(items)
    except pydantic.ValidationError:
        # One by one, as build_event does: a None value then means "absent" (tenant=None
        # takes the default), and the error names the first invalid event's field.
        return [e if isinstance(e, AlertEvent) else build_event(**dict(e)) for e in items]
