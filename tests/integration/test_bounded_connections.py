"""Every wait on Postgres is bounded, across a partition too (worker/connections.py).

The pool reaches the test's database through a proxy that can blackhole the traffic
(testing/stall_proxy.py). While it is stalled, each operation fails with TimeoutError within
its bound (the worker's "Postgres unreachable"), a wedged connection is dropped rather than
handed out again, closing the pool cannot hang; once healed, the same pool works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from testing.stall_proxy import StallProxy
from worker import db
from worker.connections import close_connection

BOUND_S = 0.5


@pytest.fixture
def proxy(database_url: str) -> Iterator[StallProxy]:
    parts = urlsplit(database_url)
    with StallProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as running:
        yield running


def through(proxy: StallProxy, database_url: str) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def timed(awaitable: object) -> tuple[type[BaseException] | None, float]:
    started = time.monotonic()
    try:
        await awaitable  # type: ignore[misc]
    except Exception as exc:
        return type(exc), time.monotonic() - started
    return None, time.monotonic() - started


async def test_a_partition_fails_each_pool_operation_within_its_bound_and_heals(
    proxy: StallProxy, database_url: str
) -> None:
    pool = await db.create_pool(through(proxy, database_url), min_size=2, max_size=2,
                                timeout_s=BOUND_S)
    assert await pool.fetchval("SELECT 1") == 1
    proxy.stall()
    # A statement on an open connection, a transaction block, and a fresh connection (the
    # pool replaces the ones it dropped): each ends in TimeoutError, none waits past bounds.
    for attempt in range(3):
        error, took = await timed(pool.fetchval("SELECT 2"))
        assert error is TimeoutError, attempt
        assert took < 3 * BOUND_S + 1, took

    async def transaction() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 3")

    error, took = await timed(transaction())
    assert error is TimeoutError
    assert took < 3 * BOUND_S + 1
    proxy.heal()
    assert await pool.fetchval("SELECT 4") == 4
    assert await pool.fetchval("SELECT 5") == 5
    proxy.stall()
    error, took = await timed(pool.close())
    assert error is None
    assert took < BOUND_S + 1
    proxy.heal()


async def test_a_stalled_pool_runs_no_operation_on_a_wedged_connection_after_healing(
    proxy: StallProxy, database_url: str
) -> None:
    pool = await db.create_pool(through(proxy, database_url), min_size=1, max_size=1,
                                timeout_s=BOUND_S)
    pid_before = await pool.fetchval("SELECT pg_backend_pid()")
    proxy.stall()
    error, _ = await timed(pool.fetchval("SELECT pg_sleep(0)"))
    assert error is TimeoutError
    proxy.heal()
    # The connection that timed out was terminated: a new session answers, with its own pid.
    assert await pool.fetchval("SELECT pg_backend_pid()") != pid_before
    await pool.close()


async def test_a_single_connection_closes_within_its_bound_across_a_partition(
    proxy: StallProxy, database_url: str
) -> None:
    conn = await db.connect(through(proxy, database_url), timeout_s=BOUND_S)
    proxy.stall()
    error, took = await timed(conn.fetchval("SELECT 1"))
    assert error is TimeoutError
    assert took < BOUND_S + 1
    error, took = await timed(close_connection(conn, timeout_s=BOUND_S))
    assert (error, took < BOUND_S + 1) == (None, True)
    error, took = await timed(db.connect(through(proxy, database_url), timeout_s=BOUND_S))
    assert error is TimeoutError
    assert took < BOUND_S + 1
    proxy.heal()
    await asyncio.sleep(0)


async def test_a_pooled_statement_is_not_followed_by_a_reset_query(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1, timeout_s=5)
    try:
        sent: list[str] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
        await pool.fetchval("SELECT 1")
        async with pool.acquire() as conn:
            assert conn.get_reset_query()  # what asyncpg would have run after each statement
        assert sent == ["SELECT 1"]
    finally:
        await pool.close()


async def test_a_connection_given_back_inside_a_transaction_is_rolled_back(
    database_url: str,
) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1, timeout_s=5)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE given_back (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.given_back')") is None
    finally:
        await pool.close()
