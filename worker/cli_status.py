"""``voicealert status``: is it healthy, how far behind is it, what is stuck. One screen.

The data comes from ``worker.health`` (shared with /metrics and ``worker --check``); this
module only renders it. Exit status: 0 healthy, 1 degraded (the lines marked ``!`` say
why), 2 Redis or Postgres unreachable (one line on stderr), so a cron job or a probe can act
on it. ``--json`` prints the snapshot as one document; ``--watch`` redraws it until ^C.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import click
import redis.asyncio

from worker import db
from worker.cli_support import (
    DATABASE,
    REDIS,
    current_settings,
    json_option,
    print_json,
    with_environment,
)
from worker.config import Settings, redact_url
from worker.health import (
    GATHER_TIMEOUT_S,
    JobCounts,
    Snapshot,
    Unreachable,
    gather,
)
from worker.outages import DATABASE_UNAVAILABLE

HEALTHY, DEGRADED, UNREACHABLE = 0, 1, 2
#: Redis client bounds for the status read: a hung connection is "unreachable", not a wait.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_COMMAND_TIMEOUT_S = 5.0


@with_environment(*REDIS, DATABASE, "VOICEALERT_CALLS_PER_SECOND",
                  "VOICEALERT_RECLAIM_IDLE_S", "VOICEALERT_RING_TIMEOUT_S",
                  "VOICEALERT_POLL_MARGIN_S")
@click.command()
@json_option
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until ^C.")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between redraws with --watch.")
def status(as_json: bool, watch: bool, interval: float) -> None:
    """Is it healthy, how far behind, what is stuck: one screen.

    Exit status: 0 healthy, 1 degraded (the lines marked ! say why), 2 Redis or Postgres
    unreachable.
    """
    settings = current_settings()
    code = asyncio.run(_show(settings, as_json))
    while watch:
        try:
            asyncio.run(asyncio.sleep(interval))
        except KeyboardInterrupt:
            break
        if sys.stdout.isatty() and not as_json:
            click.clear()
        code = asyncio.run(_show(settings, as_json))
    sys.exit(code)


async def _show(settings: Settings, as_json: bool) -> int:
    try:
        snapshot = await read_snapshot(settings)
    except Unreachable as exc:
        return _cannot_tell(str(exc), as_json)
    except Exception as exc:  # a state this version cannot read: still one line, no traceback
        return _cannot_tell(f"cannot read the status: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}", as_json)
    if as_json:
        print_json(snapshot.to_json())
    else:
        for line in render(snapshot):
            click.echo(line)
    return HEALTHY if snapshot.healthy else DEGRADED


def _cannot_tell(error: str, as_json: bool) -> int:
    if as_json:
        print_json({"state": "unreachable", "error": error, "at": datetime.now(UTC).isoformat()})
    click.echo(f"voicealert: {error}", err=True)
    return UNREACHABLE


async def read_snapshot(settings: Settings) -> Snapshot:
    """Connect, read, close; every step bounded (worker.health.GATHER_TIMEOUT_S)."""
    client = redis.asyncio.Redis.from_url(
        settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_COMMAND_TIMEOUT_S)
    try:
        conn = await _connect(settings)
        try:
            return await gather(settings, client, conn)
        finally:
            await conn.close()
    finally:
        await client.aclose()


async def _connect(settings: Settings) -> asyncpg.Connection:
    try:
        async with asyncio.timeout(GATHER_TIMEOUT_S):
            return await db.connect(settings.database_url)
    except asyncpg.InvalidCatalogNameError:
        raise Unreachable("the database does not exist: run `voicealert migrate` first") \
            from None
    except DATABASE_UNAVAILABLE as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {GATHER_TIMEOUT_S:g}s"
        raise Unreachable(
            f"cannot reach Postgres at {redact_url(settings.database_url)}: {reason}"
        ) from None


# --- the screen -----------------------------------------------------------------------------

_LABEL_WIDTH = 13


def render(snap: Snapshot) -> list[str]:
    """The status screen: a headline, then one labelled line per subject; ``!`` in the
    margin marks the lines a problem is about."""
    troubled = {p.line for p in snap.problems}
    when = f"{snap.at:%Y-%m-%d %H:%M:%S} UTC"
    if snap.healthy:
        lines = [click.style("voicealert: healthy", fg="green", bold=True) + f"   {when}"]
    else:
        count = len(snap.problems)
        lines = [click.style(f"voicealert: DEGRADED ({count} problem{'s' * (count != 1)})",
                             fg="red", bold=True) + f"   {when}"]
        lines += [click.style(f"  ! {p}", fg="red") for p in snap.problems]
    lines.append("")
    for label, text in _sections(snap):
        mark = "!" if label in troubled else " "
        first, *rest = text.split("\n")
        line = f"{mark} {label:<{_LABEL_WIDTH}}{first}"
        lines.append(click.style(line, fg="red") if mark == "!" else line)
        lines += [f"  {'':<{_LABEL_WIDTH}}{more}" for more in rest]
    return lines


def _sections(snap: Snapshot) -> Iterator[tuple[str, str]]:
    yield "stream", _stream(snap)
    yield "replicas", _replicas(snap)
    yield "jobs", _jobs(snap)
    calls = snap.jobs.get("place_call", JobCounts())
    rate = snap.rate
    if rate.free_in_s > 0:
        last = calls.last_due_in_s
        ring = f"; the last waiting call rings in {last:.1f}s" if last is not None else ""
        yield "call rate", (f"{rate.calls_per_second:g}/s, booked {rate.free_in_s:.1f}s ahead "
                            f"({calls.deferred} calls wait for a slot{ring})")
    else:
        yield "call rate", f"{rate.calls_per_second:g}/s, free now"
    database = snap.database
    yield "calls", _counts("last hour", database.calls_last_hour, "none in the last hour") + (
        f"\n{database.stuck_calls} stuck at the provider" if database.stuck_calls else "")
    open_now = _counts("now", database.alerts_open, "none ringing now")
    yield "alerts", f"{open_now}; " + _counts("last hour", database.alerts_last_hour,
                                              "none in the last hour")
    yield "dead letters", _letters(snap)
    yield "migrations", _migrations(snap)


def _stream(snap: Snapshot) -> str:
    stream = snap.stream
    size = f"{stream.length} entries ({_bytes(stream.memory_bytes)})"
    if not stream.group_exists:
        return f"{size}; no consumer group yet: no worker has ever started"
    oldest = (f", oldest {stream.oldest_unread_age_s:.0f}s"
              if stream.oldest_unread_age_s is not None else "")
    unread = "?" if stream.unread is None else str(stream.unread)
    lines = [f"{size}, {unread} unread{oldest}, {stream.pending} pending"]
    for consumer in stream.consumers:
        if consumer.pending or consumer.alive:
            state = "alive" if consumer.alive else "NO LIVE REPLICA"
            lines.append(f"{consumer.name}: {consumer.pending} pending, idle "
                         f"{_seconds(consumer.idle_s)}, {state}")
    return "\n".join(lines)


def _replicas(snap: Snapshot) -> str:
    live = snap.live_replicas
    lines = [f"{len(live)} alive" + (f", {len(snap.replicas) - len(live)} dead in the last hour"
                                     if len(snap.replicas) > len(live) else "")]
    for replica in snap.replicas:
        beat = replica.beat
        if beat is None:
            lines.append(f"{replica.consumer}: DEAD, last beat {_seconds(replica.last_beat_age_s)}"
                         " ago")
        else:
            lines.append(f"{replica.consumer}: up {_seconds(beat.at - beat.started_at)}, "
                         f"{beat.jobs_done} jobs done, {beat.doing()}")
    return "\n".join(lines)


def _jobs(snap: Snapshot) -> str:
    parts = []
    order = ["place_call", "poll_call", "cancel_call"]
    for name in sorted(snap.jobs, key=lambda n: (order.index(n) if n in order else 9, n)):
        counts = snap.jobs[name]
        if not (counts.waiting or counts.running or counts.deferred):
            continue
        wait = (f" (oldest {counts.oldest_wait_s:.1f}s)"
                if counts.oldest_wait_s is not None and counts.waiting else "")
        parts.append(f"{name}: {counts.waiting} waiting{wait}, {counts.running} running, "
                     f"{counts.deferred} deferred")
    return "\n".join(parts) or "none queued"


def _letters(snap: Snapshot) -> str:
    letters = snap.database.dead_letters
    if not letters:
        return "none waiting"
    total = sum(d.waiting for d in letters)
    lines = [f"{total} waiting (voicealert dlq list)"]
    for d in letters:
        newest = f", newest {d.newest:%Y-%m-%d %H:%M}" if d.newest else ""
        recent = f", {d.recent} in the last hour" if d.recent else ""
        lines.append(f"{d.source} {d.reason}: {d.waiting}{recent}{newest}")
    return "\n".join(lines)


def _migrations(snap: Snapshot) -> str:
    database = snap.database
    if database.migrations_error:
        return database.migrations_error
    if database.migrations_pending:
        return f"{len(database.migrations_pending)} not applied: " \
               f"{', '.join(database.migrations_pending)}"
    return "current"


def _counts(when: str, counts: dict[str, int], empty: str) -> str:
    if not counts:
        return empty
    items = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda i: -i[1]))
    return f"{items} ({when})"


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f}s"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.0f}h"


def _bytes(value: int | None) -> str:
    if value is None:
        return "size unknown"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
