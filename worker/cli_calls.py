"""``voicealert calls``: who was called, and what happened."""

from __future__ import annotations

from datetime import datetime

import click

from worker import db
from worker.cli_support import (
    DATABASE,
    checked_identifier,
    json_option,
    print_json,
    run_async,
    since_option,
    tenant_filter_option,
    with_db,
    with_environment,
)
from worker.logs import mask_phone_numbers
from worker.models import CallRow, CallStatus


@with_environment(DATABASE)
@click.command()
@click.option("--alert-id", default=None, help="Only calls of this alert.")
@click.option("--status", type=click.Choice([s.value for s in CallStatus]), default=None,
              help="Only calls in this status.")
@since_option
@tenant_filter_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@run_async
async def calls(alert_id: str | None, status: str | None, since: datetime | None,
                tenant: str | None, limit: int, as_json: bool) -> None:
    """Who was called, and what happened (phones masked unless --json)."""
    wanted = CallStatus(status) if status else None
    if alert_id is not None:
        alert_id = checked_identifier(alert_id, "--alert-id")
    rows = await with_db(lambda conn: db.list_calls(conn, tenant=tenant, alert_id=alert_id,
                                                    status=wanted, limit=limit, since=since))
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    if not rows:
        click.echo("no calls")
        return
    header = f"{'call':>6}  {'created (UTC)':<19}  {'alert_id':<20} {'rnd':>3} " \
             f"{'member':<14} {'phone':<16} {'status':<12} {'tries':>5} {'dur':>4}  " \
             f"{'answered_by':<16} {'ack':<14} error"
    click.echo(header)
    for r in rows:
        error = f"{r.error_code or ''} {r.error_message or ''}".strip()
        if r.merged_into is not None:
            error = f"merged into call {r.merged_into}; {error}".rstrip("; ")
        click.echo(mask_phone_numbers(
            f"{r.id:>6}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.alert_id[:20]:<20} {r.round:>3} "
            f"{r.member_name[:14]:<14} {r.phone:<16} {r.status:<12} {r.attempts:>5} "
            f"{r.duration_s if r.duration_s is not None else '-':>4}  "
            f"{(r.answered_by or '-')[:16]:<16} {_acknowledged(r)[:14]:<14} {error}"))


def _acknowledged(row: CallRow) -> str:
    """Who pressed 1 on this call (the member), or '-'."""
    if row.acknowledged_at is None:
        return "-"
    return row.acknowledged_by or "yes"
