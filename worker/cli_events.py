"""``voicealert fire``, ``resolve`` and ``ack``: events onto the stream, as a producer writes
them."""

from __future__ import annotations

from typing import Any

import click

from producers import AlertProducer
from producers import ValidationError as EventValidationError
from worker.cli_support import BadInput, current_settings, run_async, tenant_option


async def _produce(method: str, **fields: Any) -> str:
    settings = current_settings()
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        try:
            entry_id: str = await getattr(p, method)(**fields)
        except EventValidationError as exc:
            raise BadInput(f"invalid event: {exc.field}: {exc.reason}") from None
        return entry_id


@click.command()
@click.option("--group", required=True, help="Alert group to ring.")
@click.option("--alert-id", required=True, help="Dedup identity of the alert.")
@click.option("--message", required=True, help="Spoken on the call.")
@tenant_option
@click.option("--dedup-window", type=int, default=None, help="Seconds; 0 = no dedup.")
@click.option("--mode", type=click.Choice(["parallel", "sequential"]), default=None)
@click.option("--event-id", default=None, help="Idempotency key of this event.")
@click.option("--rounds", type=int, default=None, help="Rounds at most (default: the group's).")
@click.option("--round-delay", "round_delay", type=int, default=None,
              help="Seconds between rounds (default: the group's).")
@run_async
async def fire(group: str, alert_id: str, message: str, tenant: str, dedup_window: int | None,
               mode: str | None, event_id: str | None, rounds: int | None,
               round_delay: int | None) -> None:
    """Fire an alert event onto the stream; prints the stream entry id."""
    click.echo(await _produce("fire", group=group, alert_id=alert_id, message=message,
                              tenant=tenant, dedup_window_s=dedup_window, mode=mode,
                              event_id=event_id, rounds=rounds, round_delay_s=round_delay))


@click.command()
@click.option("--alert-id", required=True)
@tenant_option
@run_async
async def resolve(alert_id: str, tenant: str) -> None:
    """Resolve an alert: calls not yet answered are canceled."""
    click.echo(await _produce("resolve", alert_id=alert_id, tenant=tenant))


@click.command()
@click.option("--alert-id", required=True)
@tenant_option
@click.option("--by", "by", default=None, help="Who is on it (recorded on the alert).")
@run_async
async def ack(alert_id: str, tenant: str, by: str | None) -> None:
    """Acknowledge an alert: someone is on it; calling stops (as pressing 1 on a call)."""
    click.echo(await _produce("ack", alert_id=alert_id, tenant=tenant, acknowledged_by=by))
