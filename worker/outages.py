"""Which exceptions mean "a service we depend on is unreachable" (retry later, lose nothing)
as opposed to "this input or this code is wrong"."""

from __future__ import annotations

import asyncpg
import redis.exceptions

DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
    OSError,
    TimeoutError,
)

REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def caused_by_the_data(exc: BaseException) -> bool:
    """Whether ``exc`` comes from what one entry or event holds (a parser or model error, a
    value Postgres refuses: SQLSTATE classes 22 and 23), not from the services or the
    schema. The first is that entry's to carry (it is lettered, the batch goes on); the
    second is the system's (an unreachable service is retried; a missing table, a lost
    permission or a bad deploy stops the consumer rather than letter every event)."""
    if isinstance(exc, (*DATABASE_UNAVAILABLE, *REDIS_UNAVAILABLE, redis.exceptions.RedisError)):
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in ("22", "23")
    return isinstance(exc, Exception)
