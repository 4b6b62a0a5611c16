"""What every ``voicealert`` command shares: exit codes, settings, the async runner, options.

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
from typing import Any, TypeVar

import asyncpg
import click
import pydantic
import redis.exceptions

from schema import DEFAULT_TENANT, TenantScope, describe_errors
from schema.event import Identifier
from worker import db
from worker.config import ConfigError, Settings, load_settings, redact_url
from worker.connections import close_connection
from worker.outages import DATABASE_UNAVAILABLE

T = TypeVar("T")


class BadInput(click.ClickException):
    """Bad usage or input: exit 2."""

    exit_code = 2


class Failure(click.ClickException):
    exit_code = 1


def current_settings() -> Settings:
    """The settings of this invocation, loaded once (a bad one is BadInput: exit 2)."""
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
        except BrokenPipeError:
            raise  # stdout closed (`| head`): not an outage (main exits quietly)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            url = redact_url(current_settings().redis_url)
            raise Failure(f"cannot reach Redis at {url}: {exc}") from None
        except asyncpg.InvalidCatalogNameError:
            url = redact_url(current_settings().database_url)
            raise Failure(f"no such database at {url}: run `voicealert migrate` first") from None
        except asyncpg.UndefinedTableError:
            raise Failure("the database is not migrated: run `voicealert migrate` first") from None
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError,
                asyncpg.InsufficientPrivilegeError) as exc:
            # A refused role, a wrong password, a missing grant: the server's word, without
            # the password (redact_url; the server never repeats it).
            url = redact_url(current_settings().database_url)
            raise Failure(f"Postgres at {url} refused: {_one_line(str(exc))}") from None
        except DATABASE_UNAVAILABLE as exc:
            url = redact_url(current_settings().database_url)
            raise Failure(f"cannot reach Postgres at {url}: {exc}") from None

    return wrapper


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


#: The range of a bigint row id (dead letters, calls): anything else is refused before SQL.
ROW_ID = click.IntRange(1, 2**63 - 1)

_IDENTIFIER: pydantic.TypeAdapter[str] = pydantic.TypeAdapter(Identifier)


def checked_tenant(value: str, what: str = "--tenant") -> str:
    """A tenant as the rules of every stored one (no padding, control characters or
    invalid UTF-8, at most 200 characters), else BadInput (exit 2) before any SQL."""
    try:
        return TenantScope(tenant=value).tenant
    except pydantic.ValidationError as exc:
        raise BadInput("; ".join(f"{what}: {reason}" for _, reason in describe_errors(exc))) \
            from None


def checked_identifier(value: str, what: str) -> str:
    """An id or name as every event's (alert ids, group names), else BadInput (exit 2)."""
    if value != value.strip():
        raise BadInput(f"{what}: must not start or end with whitespace")
    try:
        return _IDENTIFIER.validate_python(value)
    except pydantic.ValidationError as exc:
        raise BadInput("; ".join(f"{what}: {reason}" for _, reason in describe_errors(exc))) \
            from None


def _tenant_filter(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else checked_tenant(value)


async def with_db(body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``body`` on a connection of its own, closed afterwards (every wait bounded by
    VOICEALERT_DATABASE_TIMEOUT_S: an unreachable server is one line and exit 1)."""
    settings = current_settings()
    conn = await db.connect(settings.database_url, timeout_s=settings.database_timeout_s)
    try:
        return await body(conn)
    finally:
        await close_connection(conn, timeout_s=settings.database_timeout_s)


def print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


# --- options shared by the commands (the same name means the same thing everywhere) -------

#: Commands about one tenant's things (groups, fire, resolve, alerts show): default tenant.
tenant_option = click.option(
    "--tenant", default=DEFAULT_TENANT, show_default=True, help="The tenant."
)
#: Listing commands (calls, dlq list, alerts list): every tenant unless one is given.
tenant_filter_option = click.option(
    "--tenant", default=None, callback=_tenant_filter,
    help="Only this tenant (default: every tenant).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document.")
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Do not ask for confirmation (needed without a terminal).")


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return parse_time(value) if value else None


since_option = click.option(
    "--since", default=None, metavar="WHEN", callback=_since,
    help="Only those since WHEN: an ISO time (UTC when it has no offset) or an age like "
         "30s, 15m, 12h, 7d.",
)


def with_environment(*variables: str) -> Callable[[click.Command], click.Command]:
    """Say in ``--help`` which environment variables the command reads (docs/contracts.md
    #configuration): configuration comes from the environment, never from an option."""

    def decorate(command: click.Command) -> click.Command:
        command.epilog = "Environment: " + ", ".join(variables) + "."
        return command

    return decorate


#: The variables most commands read.
DATABASE = "DATABASE_URL"
REDIS = ("REDIS_URL", "VOICEALERT_REDIS_PREFIX")


def confirm(action: str, yes: bool) -> None:
    """Ask before a destructive ``action`` ("delete group ops (3 members)"). No terminal to
    ask on and no --yes: refuse (exit 2); a "no": nothing is changed (exit 1)."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise BadInput(f"refusing to {action} without confirmation (no terminal to ask on): "
                       "add --yes")
    if not click.confirm(f"{action[:1].upper()}{action[1:]}?", default=False, err=True):
        raise Failure("not confirmed: nothing changed")


def parse_age(value: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d`` → timedelta (for --since / --older-than)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if 2 <= len(value) <= 12 and value[-1] in units and value[:-1].isdigit():
        try:
            return timedelta(seconds=int(value[:-1]) * units[value[-1]])
        except OverflowError:
            pass
    raise BadInput(f"{value[:40]!r} is not a duration like 30s, 15m, 12h or 7d")


def parse_time(value: str) -> datetime:
    """An ISO time or an age (``2h`` = two hours ago)."""
    try:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        pass
    return ago(value)


def ago(value: str) -> datetime:
    """The moment an age (``7d``) ago; an age before year 1 is BadInput (exit 2)."""
    try:
        return datetime.now(UTC) - parse_age(value)
    except OverflowError:
        raise BadInput(f"{value[:40]!r} is too far back") from None
