"""The ``voicealert`` command line (docs/contracts.md#the-command-line).

Exit codes: 0 success, 1 failure (a service unreachable, a replay that failed again),
2 bad usage or bad input, always with one line on stderr. ``--json`` prints one document.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, NoReturn, TypeVar

import asyncpg
import click
import redis.exceptions

from producers import AlertProducer
from producers import ValidationError as EventValidationError
from schema import DEFAULT_TENANT, Member, describe_errors
from worker import db
from worker.config import ConfigError, Settings, load_settings, redact_url
from worker.logs import configure_logging, mask_phone_numbers
from worker.models import CallStatus, DeadLetter, Group
from worker.outages import DATABASE_UNAVAILABLE

T = TypeVar("T")


class BadInput(click.ClickException):
    """Bad usage or input: exit 2."""

    exit_code = 2


class Failure(click.ClickException):
    exit_code = 1


def _settings() -> Settings:
    ctx = click.get_current_context()
    settings = ctx.find_object(Settings)
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        ctx.obj = settings
    return settings


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body; turn unreachable services into one line and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            url = redact_url(_settings().redis_url)
            raise Failure(f"cannot reach Redis at {url}: {exc}") from None
        except (asyncpg.InvalidCatalogNameError, asyncpg.UndefinedTableError):
            raise Failure("the database is not migrated: run `voicealert migrate` first") from None
        except DATABASE_UNAVAILABLE as exc:
            url = redact_url(_settings().database_url)
            raise Failure(f"cannot reach Postgres at {url}: {exc}") from None

    return wrapper


async def _with_db(body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    conn = await db.connect(_settings().database_url)
    try:
        return await body(conn)
    finally:
        await conn.close()


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


tenant_option = click.option(
    "--tenant", default=DEFAULT_TENANT, show_default=True, help="Tenant that owns the group."
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """voicealert: rings people when something breaks."""


# --- migrate / worker -----------------------------------------------------------------------


@cli.command()
@run_async
async def migrate() -> None:
    """Create the database if needed and apply pending migrations (safe on every replica)."""
    from worker.migrate import MigrationError
    from worker.migrate import migrate as apply

    settings = _settings()
    try:
        applied = await apply(settings.database_url)
    except MigrationError as exc:
        raise Failure(str(exc)) from None
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none pending"
    click.echo(f"migrations applied: {names} ({redact_url(settings.database_url)})")


@cli.command()
def worker() -> None:
    """Run a worker replica: stream consumer plus call jobs (what Procfile runs)."""
    from worker.app import run_worker

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    sys.exit(run_worker(settings))


# --- groups -------------------------------------------------------------------------------


@cli.group()
def groups() -> None:
    """Alert groups: who is rung, in which order."""


def _parse_members(values: tuple[str, ...]) -> list[Member]:
    import pydantic

    members = []
    for value in values:
        name, sep, phone = value.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"--member {value!r}: expected NAME=PHONE, like 'Alice=+14155550100'")
        try:
            members.append(Member(name=name, phone=phone))
        except pydantic.ValidationError as exc:
            reason = describe_errors(exc)[0][1]
            raise BadInput(f"member {name.strip()!r}: phone {reason}") from None
    return members


def _group_lines(group: Group) -> list[str]:
    lines = [f"{group.name} (tenant {group.tenant}, {len(group.members)} members)"]
    for i, member in enumerate(group.members, start=1):
        lines.append(f"  {i}. {member.name} {mask_phone_numbers(member.phone)}")
    return lines


@groups.command("set")
@click.argument("name")
@click.option("--member", "members", multiple=True, required=True,
              help="NAME=PHONE in E.164, in ring order; repeat for each member.")
@tenant_option
@json_option
@run_async
async def groups_set(name: str, members: tuple[str, ...], tenant: str, as_json: bool) -> None:
    """Create or replace group NAME with the given members, in order."""
    parsed = _parse_members(members)
    if not name.strip():
        raise BadInput("group name must not be blank")
    group = await _with_db(lambda conn: db.upsert_group(conn, tenant, name.strip(), parsed))
    if as_json:
        _print_json(group.to_json())
    else:
        click.echo("\n".join(["saved " + _group_lines(group)[0], *_group_lines(group)[1:]]))


@groups.command("list")
@tenant_option
@json_option
@run_async
async def groups_list(tenant: str, as_json: bool) -> None:
    """List the tenant's groups."""
    found = await _with_db(lambda conn: db.list_groups(conn, tenant))
    if as_json:
        _print_json([g.to_json() for g in found])
        return
    if not found:
        click.echo(f"no groups in tenant {tenant}")
    for group in found:
        click.echo(f"{group.name}\t{len(group.members)} members")


@groups.command("show")
@click.argument("name")
@tenant_option
@json_option
@run_async
async def groups_show(name: str, tenant: str, as_json: bool) -> None:
    """Show one group's members (phones masked unless --json)."""
    group = await _with_db(lambda conn: db.get_group(conn, tenant, name))
    if group is None:
        raise BadInput(f"no group {name!r} in tenant {tenant!r}")
    if as_json:
        _print_json(group.to_json())
    else:
        click.echo("\n".join(_group_lines(group)))


@groups.command("delete")
@click.argument("name")
@tenant_option
@run_async
async def groups_delete(name: str, tenant: str) -> None:
    """Delete a group (alerts already raised keep their calls)."""
    deleted = await _with_db(lambda conn: db.delete_group(conn, tenant, name))
    if not deleted:
        raise BadInput(f"no group {name!r} in tenant {tenant!r}")
    click.echo(f"deleted {name} (tenant {tenant})")


# --- fire / resolve -------------------------------------------------------------------------


async def _produce(method: str, **fields: Any) -> str:
    settings = _settings()
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        try:
            entry_id: str = await getattr(p, method)(**fields)
        except EventValidationError as exc:
            raise BadInput(f"invalid event: {exc.field}: {exc.reason}") from None
        return entry_id


@cli.command()
@click.option("--group", required=True, help="Alert group to ring.")
@click.option("--alert-id", required=True, help="Dedup identity of the alert.")
@click.option("--message", required=True, help="Spoken on the call.")
@tenant_option
@click.option("--dedup-window", type=int, default=None, help="Seconds; 0 = no dedup.")
@click.option("--mode", type=click.Choice(["parallel", "sequential"]), default=None)
@click.option("--event-id", default=None, help="Idempotency key of this event.")
@run_async
async def fire(group: str, alert_id: str, message: str, tenant: str, dedup_window: int | None,
               mode: str | None, event_id: str | None) -> None:
    """Fire an alert event onto the stream; prints the stream entry id."""
    click.echo(await _produce("fire", group=group, alert_id=alert_id, message=message,
                              tenant=tenant, dedup_window_s=dedup_window, mode=mode,
                              event_id=event_id))


@cli.command()
@click.option("--alert-id", required=True)
@tenant_option
@run_async
async def resolve(alert_id: str, tenant: str) -> None:
    """Resolve an alert: calls not yet answered are canceled."""
    click.echo(await _produce("resolve", alert_id=alert_id, tenant=tenant))


# --- calls --------------------------------------------------------------------------------

@cli.command()
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
    rows = await _with_db(lambda conn: db.list_calls(conn, tenant=tenant, alert_id=alert_id,
                                                     status=wanted, limit=limit))
    if as_json:
        _print_json([r.to_json() for r in rows])
        return
    if not rows:
        click.echo("no calls")
        return
    header = f"{'call':>6}  {'alert_id':<20} {'member':<14} {'phone':<16} {'status':<12} " \
             f"{'tries':>5} {'dur':>4}  error"
    click.echo(header)
    for r in rows:
        error = f"{r.error_code or ''} {r.error_message or ''}".strip()
        click.echo(f"{r.id:>6}  {r.alert_id[:20]:<20} {r.member_name[:14]:<14} "
                   f"{mask_phone_numbers(r.phone):<16} {r.status:<12} {r.attempts:>5} "
                   f"{r.duration_s if r.duration_s is not None else '-':>4}  {error}")


# --- entry point --------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"voicealert: {message}", err=True)
    sys.exit(code)


def parse_age(value: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d`` → timedelta (for --since / --older-than)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(value) >= 2 and value[-1] in units and value[:-1].isdigit():
        return timedelta(seconds=int(value[:-1]) * units[value[-1]])
    raise BadInput(f"{value!r} is not a duration like 30s, 15m, 12h or 7d")


def parse_time(value: str) -> datetime:
    """An ISO time or an age (``2h`` = two hours ago)."""
    try:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC) - parse_age(value)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="voicealert", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click >= 8.2
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        _fail(exc.format_message(), 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    except ConfigError as exc:
        _fail(str(exc), 2)
    sys.exit(0)



# --- dead letters ---------------------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """Dead letters: what could not be done, why, and replaying it once fixed."""


def _letter_line(letter: DeadLetter) -> str:
    replayed = f" replayed {letter.replayed_at:%Y-%m-%d %H:%M}" if letter.replayed_at else ""
    error = (letter.error or "").replace("\n", " ")
    return (f"{letter.id:>6}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.source:<6} "
            f"{letter.reason:<20} {mask_phone_numbers(error)[:80]}{replayed}")


@dlq.command("list")
@click.option("--source", type=click.Choice(["ingest", "call"]), default=None)
@click.option("--since", default=None, help="ISO time, or an age like 2h, 7d.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@run_async
async def dlq_list(source: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, oldest first."""
    moment = parse_time(since) if since else None
    letters = await _with_db(lambda c: db.list_dead_letters(c, source=source, since=moment,
                                                            limit=limit))
    if as_json:
        _print_json([letter.to_json() for letter in letters])
    elif not letters:
        click.echo("no dead letters")
    else:
        for letter in letters:
            click.echo(_letter_line(letter))


async def _letter(conn: asyncpg.Connection, letter_id: int) -> DeadLetter:
    letter = await db.get_dead_letter(conn, letter_id)
    if letter is None:
        raise BadInput(f"no dead letter {letter_id}")
    return letter


@dlq.command("show")
@click.argument("letter_id", type=int)
@run_async
async def dlq_show(letter_id: int) -> None:
    """One dead letter in full, as JSON."""
    letter = await _with_db(lambda conn: _letter(conn, letter_id))
    _print_json(letter.to_json())


@dlq.command("replay")
@click.argument("letter_id", type=int, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Every letter not replayed yet.")
@run_async
async def dlq_replay(letter_id: int | None, replay_all: bool) -> None:
    """Replay a letter (or all): ingest letters go back on the stream, call letters are
    called again. A letter whose cause is not fixed is refused, and says why."""
    from arq.connections import RedisSettings, create_pool

    from worker.replay import ReplayRefused, replay

    if (letter_id is None) == (not replay_all):
        raise BadInput("give one letter ID or --all")
    settings = _settings()
    redis_pool = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    conn = await db.connect(settings.database_url)
    refused = 0
    try:
        if replay_all:
            letters = await db.list_dead_letters(conn, include_replayed=False, limit=100_000)
        else:
            assert letter_id is not None
            letters = [await _letter(conn, letter_id)]
        for letter in letters:
            try:
                done = await replay(conn, redis_pool, settings, letter)
                click.echo(f"replayed {letter.id}: {done}")
            except ReplayRefused as exc:
                refused += 1
                click.echo(f"voicealert: not replayed: {mask_phone_numbers(str(exc))}", err=True)
        if replay_all:
            click.echo(f"{len(letters) - refused} replayed, {refused} refused")
    finally:
        await conn.close()
        await redis_pool.aclose()
    if refused:
        sys.exit(1)


@dlq.command("purge")
@click.argument("letter_id", type=int, required=False)
@click.option("--all", "purge_all", is_flag=True, help="Every letter.")
@click.option("--older-than", default=None, help="An age like 30d: letters older than it.")
@run_async
async def dlq_purge(letter_id: int | None, purge_all: bool, older_than: str | None) -> None:
    """Delete a letter, all letters, or those older than an age."""
    if sum([letter_id is not None, purge_all, older_than is not None]) != 1:
        raise BadInput("give exactly one of: a letter ID, --all, --older-than AGE")
    cutoff = datetime.now(UTC) - parse_age(older_than) if older_than else None
    count = await _with_db(lambda c: db.purge_dead_letters(c, letter_id=letter_id,
                                                           older_than=cutoff))
    if letter_id is not None and count == 0:
        raise BadInput(f"no dead letter {letter_id}")
    click.echo(f"purged {count} dead letter{'s' if count != 1 else ''}")
