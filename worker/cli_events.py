"""``voicealert fire``, ``resolve`` and ``ack``: events onto the stream, as a producer writes
them.

``fire`` checks first what would make the event ring nobody, and then refuses it (exit 1,
nothing written) unless ``--no-check``: no such group (or no members) in the tenant, or no
worker replica alive to read it. ``resolve`` and ``ack`` are never refused: ending an incident
must work.
"""

from __future__ import annotations

from typing import Any

import click
import redis.asyncio

from producers import AlertProducer, build_event
from producers import ValidationError as EventValidationError
from schema import AlertEvent
from worker import db
from worker.cli_support import (
    DATABASE,
    REDIS,
    BadInput,
    Failure,
    current_settings,
    run_async,
    tenant_option,
    with_db,
    with_environment,
)
from worker.config import redact_url
from worker.health import replicas
from worker.keys import Keys
from worker.outages import DATABASE_UNAVAILABLE

_SEND_ANYWAY = "nothing sent (--no-check sends it anyway)"


async def _produce(method: str, **fields: Any) -> str:
    settings = current_settings()
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        try:
            entry_id: str = await getattr(p, method)(**fields)
        except EventValidationError as exc:
            raise BadInput(f"invalid event: {exc.field}: {exc.reason}") from None
        return entry_id


def _validated(**fields: Any) -> AlertEvent:
    """The event as the producer would write it (a bad one is BadInput before any check)."""
    try:
        return build_event(**fields)
    except EventValidationError as exc:
        raise BadInput(f"invalid event: {exc.field}: {exc.reason}") from None


async def check_before_fire(event: AlertEvent) -> None:
    """Refuse (Failure, exit 1) an event that would ring nobody."""
    settings = current_settings()
    client = redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=2,
                                          socket_timeout=5)
    try:
        found = await replicas(client, Keys(settings.redis_prefix))
    finally:
        await client.aclose()
    if not any(r.alive for r in found):
        seen = min((r.last_beat_age_s for r in found), default=None)
        when = f"last seen {seen:.0f}s ago" if seen is not None else "none seen in the last hour"
        raise Failure(f"no worker replica is alive ({when}), so nothing would read the event "
                      f"now: {_SEND_ANYWAY}")
    try:
        group = await with_db(lambda conn: db.get_group(conn, event.tenant, event.group or ""))
    except DATABASE_UNAVAILABLE as exc:
        raise Failure(f"cannot check group {event.group!r}: cannot reach Postgres at "
                      f"{redact_url(settings.database_url)} ({type(exc).__name__}); "
                      f"{_SEND_ANYWAY}") from None
    if group is None:
        raise Failure(f"no group {event.group!r} in tenant {event.tenant!r}: {_SEND_ANYWAY}")
    if not group.members:
        raise Failure(f"group {event.group!r} has no members: {_SEND_ANYWAY}")


@with_environment(*REDIS, f"{DATABASE} (for the checks)")
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
@click.option("--no-check", is_flag=True,
              help="Send even when the group does not exist or no worker is alive.")
@run_async
async def fire(group: str, alert_id: str, message: str, tenant: str, dedup_window: int | None,
               mode: str | None, event_id: str | None, rounds: int | None,
               round_delay: int | None, no_check: bool) -> None:
    """Fire an alert event onto the stream; prints the stream entry id.

    Refused (exit 1, nothing sent) when the group does not exist or has no members in the
    tenant, or when no worker replica is alive; --no-check sends it anyway.
    """
    fields: dict[str, Any] = dict(group=group, alert_id=alert_id, message=message,
                                  tenant=tenant, dedup_window_s=dedup_window, mode=mode,
                                  event_id=event_id, rounds=rounds, round_delay_s=round_delay)
    event = _validated(**fields)
    if not no_check:
        await check_before_fire(event)
    click.echo(await _produce("fire", **fields))


@with_environment(*REDIS)
@click.command()
@click.option("--alert-id", required=True)
@tenant_option
@run_async
async def resolve(alert_id: str, tenant: str) -> None:
    """Resolve an alert: calls not yet answered are canceled."""
    click.echo(await _produce("resolve", alert_id=alert_id, tenant=tenant))


@with_environment(*REDIS)
@click.command()
@click.option("--alert-id", required=True)
@tenant_option
@click.option("--by", "by", default=None, help="Who is on it (recorded on the alert).")
@run_async
async def ack(alert_id: str, tenant: str, by: str | None) -> None:
    """Acknowledge an alert: someone is on it; calling stops (as pressing 1 on a call)."""
    click.echo(await _produce("ack", alert_id=alert_id, tenant=tenant, acknowledged_by=by))
