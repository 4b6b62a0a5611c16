"""Connections to Postgres and Redis whose every wait is bounded: a hung connection is an
outage, not a wait.

A partition (packets dropped, nothing refused) is the dangerous outage: nothing fails, so a
client without its own bounds waits forever. asyncpg bounds a statement (``command_timeout``)
but, on a timeout or a cancellation, tries to cancel it over a *new* connection and, when a
connection is given back or closed, talks to the server again; across a partition those
waits have no end of their own, and a pool keeps a wedged connection. So here:

- every statement has ``command_timeout``; connecting has its own timeout;
- ``BoundedPool.acquire`` (which ``Pool.fetch``/``execute``/... use too) bounds the wait for
  a connection, bounds the whole time it is held, and on any timeout ``terminate()``s the
  connection (the transport is aborted, no goodbye to the server) so the pool replaces it;
- giving a connection back and closing the pool are bounded, then forced.

A timeout surfaces as ``TimeoutError``, which ``worker.outages`` counts as "Postgres
unreachable": retried with backoff, nothing abandoned. Redis clients get socket timeouts
(longer than any blocking read they make), a connect timeout and keep-alive checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio
from arq.connections import ArqRedis

from worker.queue import json_deserializer, json_serializer


@dataclass(frozen=True)
class Bounds:
    """How long each kind of Postgres wait may last, from one setting
    (``VOICEALERT_DATABASE_TIMEOUT_S``)."""

    statement_s: float

    @property
    def connect_s(self) -> float:
        return self.statement_s

    @property
    def acquire_s(self) -> float:
        return self.statement_s

    @property
    def hold_s(self) -> float:
        """A connection held for a transaction of a few statements."""
        return 3 * self.statement_s

    @property
    def release_s(self) -> float:
        return self.statement_s


async def init_connection(conn: asyncpg.Connection) -> None:
    """json and jsonb as Python values, on every connection."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection's reset: none beyond what asyncpg always does on release (an open
    transaction rolled back, listeners dropped). Its default reset query (``CLOSE ALL;
    UNLISTEN *; RESET ALL; SELECT pg_advisory_unlock_all()``) was one more round trip after
    every pooled statement, and clears nothing here: pooled connections never set session
    state (no SET, LISTEN, cursor or session-level advisory lock; the locks taken are
    transaction-scoped; the revocation listener has a connection of its own)."""


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose acquire, hold, release and close are bounded (see above)."""

    def __init__(self, dsn: str, *, bounds: Bounds, min_size: int, max_size: int) -> None:
        super().__init__(
            dsn,
            min_size=min_size,
            max_size=max_size,
            max_queries=50_000,
            max_inactive_connection_lifetime=300.0,
            init=init_connection,
            reset=keep_session,
            loop=None,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            timeout=bounds.connect_s,
            command_timeout=bounds.statement_s,
        )
        self.bounds = bounds

    def acquire(self, *, timeout: float | None = None) -> Any:
        """``async with pool.acquire() as conn``: bounded from outside (see the module)."""
        return self._bounded(timeout or self.bounds.acquire_s)

    @contextlib.asynccontextmanager
    async def _bounded(self, acquire_s: float) -> AsyncIterator[Any]:
        # Bounded with asyncio.timeout, not asyncpg's timeout argument: that is
        # asyncio.wait_for, a task and a turn of the event loop more for every statement.
        async with asyncio.timeout(acquire_s):
            conn = await super().acquire()
        try:
            async with asyncio.timeout(self.bounds.hold_s):
                yield conn
        except TimeoutError:
            conn.terminate()  # its state is unknown; the pool opens a fresh one
            raise
        finally:
            await self._give_back(conn)

    async def _give_back(self, conn: Any) -> None:
        try:
            async with asyncio.timeout(self.bounds.release_s + 1):
                await self.release(conn, timeout=self.bounds.release_s)
        except (TimeoutError, asyncpg.InterfaceError, OSError):
            conn.terminate()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(super().close(), self.bounds.release_s)
        except (TimeoutError, OSError, asyncpg.InterfaceError):
            self.terminate()


async def open_pool(
    database_url: str, *, timeout_s: float, min_size: int = 1, max_size: int = 10
) -> BoundedPool:
    pool = BoundedPool(database_url, bounds=Bounds(timeout_s), min_size=min_size,
                       max_size=max_size)
    await pool  # opens min_size connections, each bounded by the connect timeout
    return pool


async def connect(database_url: str, *, timeout_s: float) -> asyncpg.Connection:
    """One connection (the command line): bounded connect and statements."""
    conn = await asyncpg.connect(database_url, timeout=timeout_s, command_timeout=timeout_s)
    await init_connection(conn)
    return conn


async def close_connection(conn: asyncpg.Connection, *, timeout_s: float) -> None:
    """Close politely if the server answers in time, else drop the connection."""
    try:
        await asyncio.wait_for(conn.close(), timeout_s)
    except (TimeoutError, OSError, asyncpg.InterfaceError):
        conn.terminate()


def open_redis(url: str, *, timeout_s: float, blocking_s: float = 0.0) -> ArqRedis:
    """A Redis client whose every command and connect is bounded, with arq's JSON job
    serializer (never pickle). ``blocking_s``: the longest server-side block a command of
    this client asks for (XREADGROUP BLOCK), added to the socket timeout."""
    pool = redis.asyncio.ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s + blocking_s,
        socket_keepalive=True,
        health_check_interval=30,
    )
    return ArqRedis(pool, job_serializer=json_serializer, job_deserializer=json_deserializer)
