"""Fixtures against real services: Redis, Postgres, and the fake Twilio over HTTP.

- Postgres: a template database is migrated once per session; every test gets a fresh
  database cloned from it (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.
- Redis: tests use logical database 15 and a per-test key prefix (which also scopes arq's
  job keys, since job ids start with the prefix), so concurrent runs do not interfere; a
  test's keys are deleted after it.
- Missing services fail the run with one line; they are never silently skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis
import redis.asyncio
from arq.connections import ArqRedis, create_pool

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    DATABASE_URL,
    FROM_NUMBER,
    REDIS_URL,
    TEST_REDIS_URL,
    InProcessWeb,
    InProcessWorker,
    admin_sql,
    free_port,
    with_database,
)
from worker.config import Settings, load_settings
from worker.logs import configure_logging
from worker.migrate import maintenance_url

TEMPLATE_DB = f"voicealert_test_template_{os.getpid()}"

_counter = itertools.count(1)


def _check_services() -> None:
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        pytest.exit(f"Redis is not reachable at {REDIS_URL} ({exc}); run the tests through "
                    "scripts/test, which starts one", returncode=3)

    async def pg() -> None:
        conn = await asyncpg.connect(maintenance_url(DATABASE_URL)[0], timeout=5)
        await conn.close()

    try:
        asyncio.run(pg())
    except Exception as exc:
        pytest.exit(f"Postgres is not reachable at {DATABASE_URL} ({exc}); run the tests "
                    "through scripts/test, which starts one", returncode=3)


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """Migrated once per session; tests clone it."""
    _check_services()
    from worker.migrate import migrate

    async def build() -> None:
        await admin_sql(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await migrate(with_database(DATABASE_URL, TEMPLATE_DB))

    asyncio.run(build())
    yield TEMPLATE_DB
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = f"voicealert_test_{os.getpid()}_{next(_counter)}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    yield with_database(DATABASE_URL, name)
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_url() -> str:
    _check_services()
    return TEST_REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"vatest{os.getpid()}_{next(_counter)}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"{value}*", f"arq:*:{value}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def env(database_url: str, redis_url: str, prefix: str, fake_twilio: FakeTwilio) -> dict[str, str]:
    """The environment a worker under test runs with: real twilio client, fake Twilio."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "VOICEALERT_REDIS_PREFIX": prefix,
        "TWILIO_ACCOUNT_SID": fake_twilio.account_sid,
        "TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "TWILIO_API_BASE_URL": fake_twilio.base_url,
        "VOICEALERT_CALLS_PER_SECOND": "200",
        "VOICEALERT_RETRY_BASE_S": "0.05",
        "VOICEALERT_RETRY_CAP_S": "0.5",
        "VOICEALERT_PROVIDER_TIMEOUT_S": "2",
        "VOICEALERT_RECLAIM_IDLE_S": "2",
        "VOICEALERT_RECLAIM_INTERVAL_S": "0.5",
        "VOICEALERT_INGEST_BLOCK_MS": "100",
        "VOICEALERT_LOG_FORMAT": "json",
        # No merge window: a test's first call is placed at once (tests of merging set it).
        "VOICEALERT_MERGE_WINDOW_S": "0",
    }


@pytest.fixture
def cli_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VOICEALERT_REDIS_PREFIX": prefix,
        "VOICEALERT_PROVIDER": "simulated",
    }


@pytest.fixture
def no_db_env(redis_url: str, prefix: str) -> dict[str, str]:
    """For commands that must fail before touching Postgres (no per-test database needed)."""
    return {"REDIS_URL": redis_url, "VOICEALERT_REDIS_PREFIX": prefix,
            "VOICEALERT_PROVIDER": "simulated"}


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture
def webhook_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with webhooks on: the web process on a free loopback port, and that port as
    the public URL the fake Twilio calls back."""
    port = free_port()
    return {**env, "VOICEALERT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "VOICEALERT_WEB_PORT": str(port)}


@pytest.fixture
def webhook_settings(webhook_env: dict[str, str]) -> Settings:
    return load_settings(webhook_env)


@pytest.fixture
async def start_web() -> AsyncIterator[Any]:
    """Serve the web application in process (``await start_web(settings)``); stopped after
    the test."""
    started: list[InProcessWeb] = []

    async def start(settings: Settings) -> InProcessWeb:
        server = await InProcessWeb(settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def db_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    from worker import db

    conn = await db.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    from arq.connections import RedisSettings

    client = await create_pool(RedisSettings.from_dsn(redis_url))
    yield client
    await client.aclose()


@pytest.fixture(autouse=True, scope="session")
def _logging() -> None:
    configure_logging("console", "warning")


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[Any]:
    """Start in-process workers (several for scaling tests); all are stopped after the test."""
    started: list[InProcessWorker] = []

    async def start(custom: Settings | None = None) -> InProcessWorker:
        worker = await InProcessWorker(custom or settings).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()


@pytest.fixture
async def text_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A Redis client that decodes replies to str, for reading stream entries in tests."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
