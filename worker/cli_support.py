"""What every ``voicealert`` command shares: exit codes, settings, the async runner, options.

Exit codes: 0 success, 1 failure (a service unreachable, a replay that failed again),
2 bad usage or bad input, always with one line on stderr. ``--json`` prints one document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

import asyncpg
import click
import redis.exceptions

from schema import DEFAULT_TENANT
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
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            url = redact_url(current_settings().redis_url)
            raise Failure(f"cannot reach Redis at {url}: {exc}") from None
        except (asyncpg.InvalidCatalogNameError, asyncpg.UndefinedTableError):
            raise Failure("the database is not migrated: run `voicealert migrate` first") from None
        except DATABASE_UNAVAILABLE as exc:
            url = redact_url(current_settings().database_url)
            raise Failure(f"cannot reach Postgres at {url}: {exc}") from None

    return wrapper


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


tenant_option = click.option(
    "--tenant", default=DEFAULT_TENANT, show_default=True, help="Tenant that owns the group."
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document.")


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
