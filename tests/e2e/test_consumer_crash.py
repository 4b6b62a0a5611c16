"""A stream consumer that cannot go on takes its whole process down (no half-alive worker).

A worker whose jobs still run but whose stream nobody reads would look healthy while every new
alert waits. So when the consumer fails for a reason that retrying will not cure (here: the
dead_letters table is gone), the process exits non-zero for its supervisor to restart, and the
entry it could not finish stays pending for whoever comes next.
"""

from __future__ import annotations

import asyncpg
import redis.asyncio

from tests.e2e.workers import SpawnWorker
from tests.helpers import xadd_raw
from worker.config import Settings
from worker.keys import Keys


async def test_consumer_failure_stops_the_worker_with_nonzero_exit_and_keeps_the_entry(
    settings: Settings, db_conn: asyncpg.Connection, spawn_worker: SpawnWorker
) -> None:
    worker = await spawn_worker("crashing").ready()
    await db_conn.execute("DROP TABLE dead_letters")
    entry = await xadd_raw(settings, {"event": "not json"})

    code = await worker.wait_exit(timeout=15)
    assert code == 1, worker.log_tail()
    assert worker.logged("ingest.crashed")
    keys = Keys(settings.redis_prefix)
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        pending = await client.xpending_range(keys.events, keys.consumer_group, "-", "+", 10)
    finally:
        await client.aclose()
    assert [p["message_id"].decode() for p in pending] == [entry]
