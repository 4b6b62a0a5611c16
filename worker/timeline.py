"""The history of one alert, in the order it happened (``voicealert alerts show``).

Read from the record, not reconstructed: the alert row (received, acknowledged, resolved),
``duplicate_events`` (triggers its dedup lock suppressed), ``call_events`` (every status
change of every call, with who made it: worker, poll, callback, cancel, operator, sweeper)
and the dead letters about it.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker import db
from worker.models import AlertRow

# When two steps share a timestamp (one transaction), the one that caused the other comes
# first: the alert's calls are created when it is received, canceled when it is resolved.
_KIND_ORDER = {"written": -1, "received": 0, "acknowledged": 1, "resolved": 2,
               "duplicates": 3, "call": 4, "dead_letter": 5}


@dataclass(frozen=True)
class Step:
    at: datetime
    kind: str  # written, received, call, duplicates, dead_letter, acknowledged, resolved
    call: int | None = None
    member_name: str | None = None
    phone: str | None = None
    status: str | None = None
    source: str | None = None
    detail: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # kind-specific: count, first, ...

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at.isoformat(), "kind": self.kind}
        for key in ("call", "member_name", "phone", "status", "source", "detail"):
            out[key] = getattr(self, key)
        out.update({k: v.isoformat() if isinstance(v, datetime) else v
                    for k, v in self.fields.items()})
        return out


def alert_json(alert: AlertRow, **extra: Any) -> dict[str, Any]:
    """An alert row as ``--json`` prints it (phones whole), without its calls."""
    out = {k: v for k, v in dataclasses.asdict(alert).items() if k != "calls"}
    return _iso({**out, "status": str(alert.status), **extra})


@dataclass(frozen=True)
class AlertHistory:
    alert: AlertRow  # with its calls
    steps: list[Step]

    def to_json(self) -> dict[str, Any]:
        return {
            "alert": alert_json(self.alert),
            "calls": [_iso({**dataclasses.asdict(c), "status": str(c.status)})
                      for c in self.alert.calls],
            "timeline": [s.to_json() for s in self.steps],
        }


def _iso(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


async def alert_history(conn: db.Executor, alert: AlertRow) -> AlertHistory:
    """The history of ``alert`` (read with its calls: ``db.alerts_with_calls``)."""
    steps = [Step(alert.received_at, "received", fields={
        "stream_id": alert.stream_id, "event_id": alert.event_id, "group": alert.group_name,
        "mode": alert.mode, "alert_status": alert.status})]
    written = _xadd_time(alert.stream_id)
    if written is not None:  # the entry id is the time Redis accepted the XADD
        steps.append(Step(written, "written", fields={"stream_id": alert.stream_id}))
    # Call events stay in the order they were recorded (their ids), even when a transaction
    # that started earlier committed later; the other steps are merged in by time.
    changes = []
    for event in await db.alert_call_events(conn, alert.id):
        changes.append(Step(event.at, "call", call=event.call, member_name=event.member_name,
                          phone=event.phone, status=event.status, source=event.source,
                          detail=event.detail,
                          fields={"round": event.round, "position": event.position}))
    span = await db.duplicate_span(conn, alert.id)
    if span.count and span.first is not None:
        steps.append(Step(span.first, "duplicates", fields={
            "count": span.count, "first": span.first, "last": span.last}))
    for letter in await db.alert_dead_letters(conn, alert.id, alert.stream_id):
        steps.append(Step(letter.created_at, "dead_letter", call=letter.call,
                          detail=letter.error, fields={"letter": letter.id,
                                                       "source_of_letter": letter.source,
                                                       "reason": letter.reason}))
    if alert.acknowledged_at is not None:
        by_call = next((c.id for c in alert.calls if c.acknowledged_at is not None), None)
        steps.append(Step(alert.acknowledged_at, "acknowledged", call=by_call,
                          detail=alert.acknowledged_by))
    if alert.resolved_at is not None:
        steps.append(Step(alert.resolved_at, "resolved"))
    steps.sort(key=_order)
    return AlertHistory(alert, list(heapq.merge(changes, steps, key=_order)))


def _order(step: Step) -> tuple[datetime, int]:
    return step.at, _KIND_ORDER.get(step.kind, 9)


def _xadd_time(stream_id: str) -> datetime | None:
    millis, _, _ = stream_id.partition("-")
    if not millis.isdigit() or len(millis) > 15:
        return None
    return datetime.fromtimestamp(int(millis) / 1000, UTC)

