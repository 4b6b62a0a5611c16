"""``voicealert calls``: who was called, and what happened."""

from __future__ import annotations

import click

from worker import db
from worker.cli_support import json_option, print_json, run_async, with_db
from worker.logs import mask_phone_numbers
from worker.models import CallRow, CallStatus


@click.command()
@click.option("--alert-id", default=None, help="Only calls of this alert.")
@click.option("--status", type=click.Choice([s.value for s in CallStatus]), default=None)
@click.option("--tenant", default=None, help="Only this tenant (default: all).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@run_async
async def calls(alert_id: str | None, status: str | None, tenant: str | None, limit: int,
                as_json: bool) -> None:
    """Who was called, and what happened (phones masked unless --json)."""
    wanted = CallStatus(status) if status else None
    rows = await with_db(lambda conn: db.list_calls(conn, tenant=tenant, alert_id=alert_id,
                                                    status=wanted, limit=limit))
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    if not rows:
        click.echo("no calls")
        return
    header = f"{'call':>6}  {'alert_id':<20} {'rnd':>3} {'member':<14} {'phone':<16} " \
             f"{'status':<12} {'tries':>5} {'dur':>4}  {'answered_by':<16} {'ack':<14} error"
    click.echo(header)
    for r in rows:
        error = f"{r.error_code or ''} {r.error_message or ''}".strip()
        if r.merged_into is not None:
            error = f"merged into call {r.merged_into}; {error}".rstrip("; ")
        click.echo(f"{r.id:>6}  {r.alert_id[:20]:<20} {r.round:>3} {r.member_name[:14]:<14} "
                   f"{mask_phone_numbers(r.phone):<16} {r.status:<12} {r.attempts:>5} "
                   f"{r.duration_s if r.duration_s is not None else '-':>4}  "
                   f"{(r.answered_by or '-')[:16]:<16} {_acknowledged(r)[:14]:<14} {error}")


def _acknowledged(row: CallRow) -> str:
    """Who pressed 1 on this call (the member), or '-'."""
    if row.acknowledged_at is None:
        return "-"
    return mask_phone_numbers(row.acknowledged_by or "yes")
