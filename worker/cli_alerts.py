"""``voicealert alerts``: the alerts received, and the whole story of one of them.

``alerts list`` answers "what rang lately and how did it end"; ``alerts show ALERT_ID``
answers "who was called for alert X and what happened", step by step with the time and the
source of every change (worker/timeline.py). Phones are masked unless ``--json``.
"""

from __future__ import annotations

from datetime import datetime

import click

from worker import db
from worker.cli_support import (
    DATABASE,
    BadInput,
    checked_identifier,
    checked_tenant,
    json_option,
    print_json,
    run_async,
    since_option,
    tenant_filter_option,
    tenant_option,
    with_db,
    with_environment,
)
from worker.logs import mask_phone_numbers
from worker.models import AlertCall, AlertRow, AlertStatus
from worker.timeline import AlertHistory, Step, alert_history, alert_json

#: ``alerts show --all`` shows at most this many alert rows of one alert id, the newest.
SHOW_MAX = 100


@click.group()
def alerts() -> None:
    """Alerts received: list them, or show one alert's whole timeline."""


@with_environment(DATABASE)
@alerts.command("list")
@click.option("--status", type=click.Choice([s.value for s in AlertStatus]), default=None,
              help="Only alerts in this status.")
@since_option
@tenant_filter_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@run_async
async def alerts_list(status: str | None, since: datetime | None, tenant: str | None, limit: int,
                      as_json: bool) -> None:
    """The newest alerts (oldest first): when, status, calls answered, duplicates."""
    async def load(conn: db.Connection) -> tuple[list[AlertRow], dict[int, tuple[int, int]]]:
        newest = await db.list_alerts(conn, tenant, status=AlertStatus(status) if status else None,
                                      since=since, limit=limit)
        return newest[::-1], await db.alert_call_counts(conn, [r.id for r in newest])

    rows, counts = await with_db(load)
    if as_json:
        print_json([alert_json(r, call_count=counts.get(r.id, (0, 0))[0],
                               answered_count=counts.get(r.id, (0, 0))[1]) for r in rows])
        return
    if not rows:
        click.echo("no alerts")
        return
    click.echo(f"{'alert':>6}  {'received (UTC)':<19}  {'tenant':<10} {'alert_id':<24} "
               f"{'status':<13} {'group':<16} {'answered':>8} {'dups':>5}")
    for r in rows:
        total, answered = counts.get(r.id, (0, 0))
        click.echo(f"{r.id:>6}  {r.received_at:%Y-%m-%d %H:%M:%S}  {r.tenant[:10]:<10} "
                   f"{r.alert_id[:24]:<24} {r.status:<13} {r.group_name[:16]:<16} "
                   f"{f'{answered}/{total}':>8} {r.duplicates:>5}")


@with_environment(DATABASE)
@alerts.command("show")
@click.argument("alert_id")
@tenant_option
@click.option("--all", "show_all", is_flag=True,
              help="Every alert with this id (each trigger that rang), not only the newest.")
@json_option
@run_async
async def alerts_show(alert_id: str, tenant: str, show_all: bool, as_json: bool) -> None:
    """The timeline of one alert: received, duplicates suppressed, every call's status
    changes with their time and source, errors, acknowledgement, resolve."""
    alert_id, tenant = checked_identifier(alert_id, "ALERT_ID"), checked_tenant(tenant)

    async def load(conn: db.Connection) -> tuple[list[AlertHistory], int]:
        newest = await db.alerts_with_calls(conn, tenant, alert_id, limit=SHOW_MAX)
        if not newest:
            raise BadInput(f"no alert {alert_id!r} in tenant {tenant!r}")
        chosen = newest[::-1] if show_all else newest[:1]
        return [await alert_history(conn, row) for row in chosen], len(newest) - len(chosen)

    histories, earlier = await with_db(load)
    if as_json:
        print_json([h.to_json() for h in histories] if show_all else histories[0].to_json())
        return
    for i, history in enumerate(histories):
        if i:
            click.echo("")
        for line in render_history(history):
            click.echo(line)
    if earlier:
        click.echo(f"\n({earlier} earlier alert{'s' * (earlier != 1)} with this id: --all "
                   "shows them)")


def render_history(history: AlertHistory) -> list[str]:
    alert = history.alert
    lines = [
        f"alert {alert.alert_id} (tenant {alert.tenant}, #{alert.id}): {alert.status}",
        f"  group {alert.group_name}, {alert.mode}"
        + (f", event id {alert.event_id}" if alert.event_id else ""),
        f"  message: {mask_phone_numbers(alert.message)}",
    ]
    if alert.acknowledged_at is not None:
        lines.append(f"  acknowledged by {alert.acknowledged_by or 'someone'}")
    if alert.rounds > 1:
        lines.append(f"  round {alert.round} of {alert.rounds}"
                     + (f", next at {alert.next_round_at:%H:%M:%S}" if alert.next_round_at else ""))
    if alert.calls:
        lines += ["", "calls:"]
        lines += [_call_line(c, alert.rounds > 1) for c in alert.calls]
    lines += ["", "timeline (UTC):"]
    day = alert.received_at.date()
    lines += [_step_line(step, day) for step in history.steps]
    return lines


def _call_line(call: AlertCall, rounds: bool) -> str:
    error = f"  {call.error_code or ''} {call.error_message or ''}".rstrip()
    talk = f", talked {call.duration_s}s" if call.duration_s is not None else ""
    answered_by = f", answered by {call.answered_by}" if call.answered_by else ""
    acknowledged = ", acknowledged" if call.acknowledged_at is not None else ""
    tries = f"{call.attempts} attempt{'s' * (call.attempts != 1)}"
    where = f"round {call.round}, " if rounds else ""
    return mask_phone_numbers(
        f"  {call.id:>6}  {where}{call.position + 1}. {call.member_name} {call.phone}  "
        f"{call.status} ({tries}{talk}{answered_by}{acknowledged}){error}")


def _step_line(step: Step, day: object) -> str:
    stamp = step.at.strftime("%H:%M:%S.%f")[:-3]
    if step.at.date() != day:
        stamp = f"{step.at:%Y-%m-%d} {stamp}"
    return mask_phone_numbers(f"  {stamp}  {_describe(step)}")


def _describe(step: Step) -> str:
    fields = step.fields
    if step.kind == "written":
        return f"written to the stream as {fields['stream_id']}"
    if step.kind == "received":
        return f"received by a worker: group {fields['group']}, {fields['mode']}"
    if step.kind == "call":
        detail = f"  ({step.detail})" if step.detail else ""
        return (f"call {step.call} {step.member_name}: {step.status:<11} by {step.source}"
                f"{detail}")
    if step.kind == "duplicates":
        count = fields["count"]
        span = (f"first {fields['first']:%H:%M:%S.%f}"[:-3]
                + f", last {fields['last']:%H:%M:%S.%f}"[:-3])
        return f"{count} duplicate trigger{'s' * (count != 1)} suppressed ({span})"
    if step.kind == "dead_letter":
        about = f" call {step.call}" if step.call else ""
        return (f"dead letter {fields['letter']} ({fields['source_of_letter']}{about}): "
                f"{fields['reason']}: {(step.detail or '')[:120]}")
    if step.kind == "acknowledged":
        return ("acknowledged" + (f" by {step.detail}" if step.detail else "")
                + (f" (on call {step.call})" if step.call else ""))
    if step.kind == "resolved":
        return "resolved"
    return step.kind
