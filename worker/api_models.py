"""The HTTP API's request and response bodies as pydantic models: handlers build every body
from these, and ``/v1/openapi.json`` is generated from them (worker/openapi.py), so the
description cannot drift from what is served. The event itself is ``schema.AlertEvent``,
the same model (and JSON Schema) as the stream's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from schema import Member
from schema.event import ROUND_DELAY_MAX_S, ROUNDS_MAX, Identifier
from worker.logs import mask_phone_numbers
from worker.models import AlertCall, AlertRow, Group


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


def alert_link(alert_id: str) -> str:
    return f"/v1/alerts/{quote(alert_id, safe='')}"


# --- errors -------------------------------------------------------------------------------


class FieldError(_Body):
    field: str = Field(description="The field, dotted for nested ones (`alerts.2.labels`).")
    reason: str = Field(description="What is wrong, worded as the CLI and producers word it.")


class ErrorBody(_Body):
    """Every error answers this shape, whatever the route or the status."""

    error: str
    status: int
    errors: list[FieldError] | None = Field(
        default=None, description="Every field error, on a 400 about a body."
    )


# --- events accepted ----------------------------------------------------------------------


class Links(_Body):
    self_: str = Field(alias="self", description="Where to read the alert back.")
    model_config = ConfigDict(frozen=True, serialize_by_alias=True)

    @classmethod
    def to_alert(cls, alert_id: str) -> Links:
        return cls.model_validate({"self": alert_link(alert_id)})


class Accepted(_Body):
    """The event is on the stream (202): the workers take it from there."""

    status: Literal["accepted"] = "accepted"
    stream_id: str = Field(description="The stream entry id of the event.")
    alert_id: str
    links: Links

    @classmethod
    def of(cls, stream_id: str, alert_id: str) -> Accepted:
        return cls(stream_id=stream_id, alert_id=alert_id, links=Links.to_alert(alert_id))


class AcceptedEvent(_Body):
    alert_id: str
    action: str
    stream_id: str
    links: Links


class AcceptedEvents(_Body):
    """Alertmanager's payload became these events, all on the stream (202)."""

    status: Literal["accepted"] = "accepted"
    events: list[AcceptedEvent]


class ResolveRequest(_Body):
    """Optional body of a resolve: the tenant, when given, must be the token's."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: Identifier | None = None


def _string_only(schema: dict[str, Any]) -> None:
    """Describe an optional field that refuses null (leave it out instead) as a string."""
    variants = schema.pop("anyOf", [])
    schema.update(next((v for v in variants if v.get("type") != "null"), {}))
    schema.pop("default", None)


class AckRequest(ResolveRequest):
    """Optional body of an acknowledgement: who is on it, recorded on the alert. Checked as
    the event's ``acknowledged_by`` (null is refused: leave the field out)."""

    acknowledged_by: Identifier | None = Field(
        default=None, description="Who is on it.", json_schema_extra=_string_only)


# --- Alertmanager -------------------------------------------------------------------------


class AlertmanagerAlert(_Body):
    """One alert of an Alertmanager (or Grafana) webhook; other keys are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str | None = None  # Alertmanager's spelling, as sent
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str | None = Field(
        default=None, description="Becomes the alert_id (from the labels when absent)."
    )


class AlertmanagerPayload(_Body):
    """Alertmanager's webhook payload, version 4 (Grafana sends the same shape)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    version: str | None = None
    status: str | None = None
    receiver: str | None = None
    groupKey: str | None = None
    alerts: list[AlertmanagerAlert]


# --- alerts read back ---------------------------------------------------------------------


class CallView(_Body):
    """One call of an alert. The phone is masked (`+1415•••0100`), like every log line."""

    id: int
    round: int = Field(description="The round that placed it (1-based).")
    position: int = Field(description="0-based ring order within the round.")
    member: str
    phone: str
    status: str
    attempts: int
    error_code: int | None
    error_message: str | None
    answered_by: str | None
    duration_s: int | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    acknowledged_at: datetime | None = Field(description="When 1 was pressed on this call.")
    acknowledged_by: str | None

    @classmethod
    def of(cls, call: AlertCall) -> CallView:
        return cls(
            id=call.id, round=call.round, position=call.position, member=call.member_name,
            phone=mask_phone_numbers(call.phone), status=call.status, attempts=call.attempts,
            error_code=call.error_code,
            error_message=mask_phone_numbers(call.error_message) if call.error_message else None,
            answered_by=call.answered_by, duration_s=call.duration_s,
            created_at=call.created_at, updated_at=call.updated_at, ended_at=call.ended_at,
            acknowledged_at=call.acknowledged_at, acknowledged_by=call.acknowledged_by,
        )


class AlertSummary(_Body):
    """One alert row: one trigger that was not deduplicated."""

    alert_id: str
    tenant: str
    status: str
    group: str
    message: str
    mode: str
    event_id: str | None
    stream_id: str
    duplicates: int = Field(description="Triggers suppressed by this alert's dedup lock.")
    last_duplicate_at: datetime | None
    received_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None = Field(description="Who acknowledged (keypress or ack event).")
    round: int = Field(description="The round being called (1-based).")
    rounds: int = Field(description="Rounds at most, until someone acknowledges.")
    next_round_at: datetime | None = Field(description="When the next round starts, if one is due.")
    links: Links

    @classmethod
    def fields_of(cls, row: AlertRow) -> dict[str, Any]:
        return {
            "alert_id": row.alert_id, "tenant": row.tenant, "status": row.status,
            "group": row.group_name, "message": row.message, "mode": row.mode,
            "event_id": row.event_id, "stream_id": row.stream_id, "duplicates": row.duplicates,
            "last_duplicate_at": row.last_duplicate_at, "received_at": row.received_at,
            "updated_at": row.updated_at, "resolved_at": row.resolved_at,
            "acknowledged_at": row.acknowledged_at, "acknowledged_by": row.acknowledged_by,
            "round": row.round, "rounds": row.rounds, "next_round_at": row.next_round_at,
            "links": Links.to_alert(row.alert_id),
        }

    @classmethod
    def of(cls, row: AlertRow) -> AlertSummary:
        return cls(**cls.fields_of(row))


class AlertView(AlertSummary):
    """An alert with each of its calls: who was queued, who answered, who failed and why."""

    calls: list[CallView]

    @classmethod
    def of(cls, row: AlertRow) -> AlertView:
        return cls(**cls.fields_of(row), calls=[CallView.of(c) for c in row.calls])


class AlertHistory(_Body):
    """Every alert row of one alert_id (`?all=true`), newest first."""

    alert_id: str
    alerts: list[AlertView]


class AlertPage(_Body):
    """A page of alerts, newest first; pass `next_cursor` as `cursor` for the next page."""

    alerts: list[AlertSummary]
    next_cursor: str | None = Field(description="null on the last page.")


# --- groups -------------------------------------------------------------------------------


class MemberView(_Body):
    name: str
    phone: str = Field(description="E.164, whole: group admin is an admin token's business.")


class GroupView(_Body):
    tenant: str
    name: str
    members: list[MemberView]
    rounds: int = Field(description="Rounds of calls while nobody acknowledges.")
    round_delay_s: int = Field(description="Seconds between two rounds.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, group: Group) -> GroupView:
        return cls(
            tenant=group.tenant, name=group.name,
            members=[MemberView(name=m.name, phone=m.phone) for m in group.members],
            rounds=group.rounds, round_delay_s=group.round_delay_s,
            created_at=group.created_at, updated_at=group.updated_at,
        )


class GroupList(_Body):
    groups: list[GroupView]


class GroupBody(_Body):
    """A group's members in ring order (the name is the URL's, the tenant the token's);
    checked by the same rules as ``voicealert groups set`` (schema/group.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: Identifier | None = Field(default=None, description="If given, the token's.")
    members: list[Member]
    rounds: int | None = Field(
        default=None, ge=1, le=ROUNDS_MAX,
        description="Rounds while nobody acknowledges (new group: 3; left out: kept).")
    round_delay_s: int | None = Field(
        default=None, ge=0, le=ROUND_DELAY_MAX_S,
        description="Seconds between rounds (new group: 120; left out: kept).")
