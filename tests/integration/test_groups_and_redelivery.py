"""Events that ring nobody do not hold the lock; an entry redelivered rings nobody twice."""

from __future__ import annotations

from typing import Any

import asyncpg
from arq.connections import ArqRedis

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    alert_decided,
    alert_rows,
    alert_status,
    all_calls_completed,
    calls_of,
    fire,
    make_group,
    pending_count,
    posted_to,
    stream_drained,
    wait_for,
)
from worker.config import Settings
from worker.keys import Keys

DEAD = "dead-consumer"


async def test_unknown_group_rings_nobody_is_dead_lettered_and_a_corrected_retry_rings(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    keys = Keys(settings.redis_prefix)
    await start_worker()
    first = await fire(settings, alert_id="db-down", group="platform")

    async def recorded() -> bool:
        return await alert_status(db_conn, "db-down") == "unknown_group"

    await wait_for(recorded, what="alert recorded as unknown_group")
    await wait_for(lambda: stream_drained(arq_redis, keys), what="entry acknowledged")
    letters = await db_conn.fetch("SELECT source, reason, payload FROM dead_letters")
    assert [(r["source"], r["reason"]) for r in letters] == [("ingest", "unknown_group")]
    assert letters[0]["payload"]["stream_id"] == first
    assert "platform" in letters[0]["payload"]["fields"]["event"]
    assert await calls_of(db_conn, "db-down") == []
    assert not await arq_redis.exists(keys.dedup_lock("default", "db-down"))

    # The operator creates the missing group; the service retries within the window.
    await make_group(db_conn, name="platform")
    await fire(settings, alert_id="db-down", group="platform")
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="retry's calls complete")
    assert sorted(posted_to(fake_twilio)) == PHONES
    await wait_for(lambda: alert_decided(db_conn, "db-down", "answered"), 5, "alert answered")
    assert [r["status"] for r in await alert_rows(db_conn, "db-down")] == [
        "unknown_group", "answered"]
    assert await db_conn.fetchval("SELECT count(*) FROM dead_letters") == 1


async def test_event_resent_with_same_event_id_after_group_is_created_rings(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await start_worker()
    await fire(settings, alert_id="db-down", group="platform", event_id="evt-7")

    async def recorded() -> bool:
        return await alert_status(db_conn, "db-down") == "unknown_group"

    await wait_for(recorded, what="alert recorded as unknown_group")
    await make_group(db_conn, name="platform")
    # The producer retries the very same event (same event_id) once the group exists.
    await fire(settings, alert_id="db-down", group="platform", event_id="evt-7")
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="retry's calls complete")
    assert sorted(posted_to(fake_twilio)) == PHONES
    await wait_for(lambda: alert_decided(db_conn, "db-down", "answered"), 5, "alert answered")
    rows = await alert_rows(db_conn, "db-down")
    assert [(r["event_id"], r["status"], r["duplicates"]) for r in rows] == [
        ("evt-7", "answered", 0)]


async def test_empty_group_rings_nobody_without_dead_letter_and_a_corrected_retry_rings(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    keys = Keys(settings.redis_prefix)
    await make_group(db_conn, name="platform", phones=[])
    await start_worker()
    await fire(settings, alert_id="db-down", group="platform")

    async def recorded() -> bool:
        return await alert_status(db_conn, "db-down") == "empty_group"

    await wait_for(recorded, what="alert recorded as empty_group")
    await wait_for(lambda: stream_drained(arq_redis, keys), what="entry acknowledged")
    assert await db_conn.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert await calls_of(db_conn, "db-down") == []
    assert not await arq_redis.exists(keys.dedup_lock("default", "db-down"))
    assert fake_twilio.creates() == []

    await make_group(db_conn, name="platform")
    await fire(settings, alert_id="db-down", group="platform")
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="retry's calls complete")
    assert sorted(posted_to(fake_twilio)) == PHONES


async def test_entry_left_pending_by_a_dead_consumer_is_reclaimed_and_rings_once(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    keys = Keys(settings.redis_prefix)
    await make_group(db_conn)
    await arq_redis.xgroup_create(keys.events, keys.consumer_group, id="0", mkstream=True)
    entry = await fire(settings, alert_id="db-down")
    # A replica read the entry and died before doing anything or acknowledging it.
    delivered = await arq_redis.xreadgroup(keys.consumer_group, DEAD, {keys.events: ">"}, count=1)
    assert delivered[0][1][0][0].decode() == entry

    await start_worker()
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="reclaimed entry's calls")
    await wait_for(lambda: stream_drained(arq_redis, keys), what="reclaimed entry acknowledged")
    assert sorted(posted_to(fake_twilio)) == PHONES
    await wait_for(lambda: alert_decided(db_conn, "db-down", "answered"), 5, "alert answered")
    rows = await alert_rows(db_conn, "db-down")
    assert [(r["stream_id"], r["duplicates"]) for r in rows] == [(entry, 0)]
    assert [c.attempts for c in await calls_of(db_conn, "db-down")] == [1, 1, 1]


async def test_entry_redelivered_after_its_calls_were_placed_creates_no_duplicate_rows_or_calls(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    keys = Keys(settings.redis_prefix)
    await make_group(db_conn)
    first_worker = await start_worker()
    entry = await fire(settings, alert_id="db-down")
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="first processing")
    assert await first_worker.stop() == 0

    # Replay the crash the other way round: the work is durable, the XACK never happened.
    # Rewind the group and let a consumer take the entry again, then die holding it.
    await arq_redis.xgroup_setid(keys.events, keys.consumer_group, id="0")
    delivered = await arq_redis.xreadgroup(keys.consumer_group, DEAD, {keys.events: ">"}, count=1)
    assert delivered[0][1][0][0].decode() == entry
    assert await pending_count(arq_redis, keys) == 1

    await start_worker()

    async def reclaimed() -> bool:
        return await pending_count(arq_redis, keys) == 0

    await wait_for(reclaimed, what="redelivered entry reclaimed and acknowledged")
    rows = await alert_rows(db_conn, "db-down")
    assert [(r["stream_id"], r["duplicates"], r["status"]) for r in rows] == [
        (entry, 0, "answered")]
    assert await db_conn.fetchval("SELECT count(*) FROM duplicate_events") == 0
    calls = await calls_of(db_conn, "db-down")
    assert [(c.status, c.attempts) for c in calls] == [("completed", 1)] * 3
    assert sorted(posted_to(fake_twilio)) == PHONES
    assert await db_conn.fetchval("SELECT count(*) FROM dead_letters") == 0
