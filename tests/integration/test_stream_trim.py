"""The events stream does not grow forever, and trimming never drops unacknowledged entries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio

from tests.helpers import calls_of, fire, make_group, wait_for
from worker.config import Settings, load_settings
from worker.keys import Keys


@pytest.fixture
def trim_settings(env: dict[str, str]) -> Settings:
    # Retention 0; a reclaim idle time no test reaches, so a stuck entry stays pending.
    return load_settings({**env, "VOICEALERT_STREAM_RETENTION_S": "0",
                          "VOICEALERT_RECLAIM_IDLE_S": "3600"})


@pytest.fixture
async def client(trim_settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    conn = redis.asyncio.Redis.from_url(trim_settings.redis_url)
    yield conn
    await conn.aclose()


async def test_processed_entries_past_retention_are_trimmed(
    trim_settings: Settings, client: redis.asyncio.Redis, db_conn: asyncpg.Connection,
    start_worker: Any,
) -> None:
    keys = Keys(trim_settings.redis_prefix)
    await make_group(db_conn)
    await start_worker(trim_settings)
    for i in range(5):
        await fire(trim_settings, alert_id=f"a{i}", group="oncall", message="m",
                   dedup_window_s=0)

    async def trimmed() -> bool:
        return int(await client.xlen(keys.events)) <= 1

    await wait_for(trimmed, timeout=20)
    for i in range(5):  # every trimmed entry had been turned into its calls
        assert len(await calls_of(db_conn, f"a{i}")) == 3


async def test_trimming_keeps_an_entry_a_dead_consumer_never_acknowledged(
    trim_settings: Settings, client: redis.asyncio.Redis, db_conn: asyncpg.Connection,
    start_worker: Any,
) -> None:
    keys = Keys(trim_settings.redis_prefix)
    await make_group(db_conn)
    await client.xgroup_create(keys.events, keys.consumer_group, id="0", mkstream=True)
    stuck = await fire(trim_settings, alert_id="stuck", group="oncall", message="m")
    await client.xreadgroup(keys.consumer_group, "dead-consumer", {keys.events: ">"}, count=1)
    await start_worker(trim_settings)
    await fire(trim_settings, alert_id="after", group="oncall", message="m")

    async def after_processed() -> bool:
        return len(await calls_of(db_conn, "after")) == 3

    await wait_for(after_processed)
    await asyncio.sleep(trim_settings.reclaim_interval_s * 3)  # several trim cycles pass
    ids = [entry_id.decode() for entry_id, _ in await client.xrange(keys.events)]
    assert stuck in ids
    pending = await client.xpending(keys.events, keys.consumer_group)
    assert pending["pending"] == 1
