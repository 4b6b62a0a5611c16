"""The dedup lock as producers see it: one alert rings once per window, per tenant."""

from __future__ import annotations

from typing import Any

import asyncpg
from arq.connections import ArqRedis

from producers import AlertProducer
from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    alert_rows,
    calls_of,
    fire,
    make_group,
    posted_to,
    stream_drained,
    wait_for,
)
from worker.config import Settings
from worker.keys import Keys

OTHER_PHONES = ["+14155550200", "+14155550201"]


async def test_second_event_within_window_places_no_new_calls_and_is_counted(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await start_worker()
    await fire(settings, alert_id="db-down")

    async def three_posted() -> bool:
        return len(fake_twilio.creates()) == 3

    await wait_for(three_posted, what="3 create POSTs")
    second = await fire(settings, alert_id="db-down", message="Primary database is STILL down")

    async def counted() -> bool:
        rows = await alert_rows(db_conn, "db-down")
        return len(rows) == 1 and rows[0]["duplicates"] == 1

    await wait_for(counted, what="the duplicate counted on the first alert")
    await wait_for(lambda: stream_drained(arq_redis, Keys(settings.redis_prefix)),
                   what="stream acknowledged")
    assert len(fake_twilio.creates()) == 3
    assert len(await calls_of(db_conn, "db-down")) == 3
    first = (await alert_rows(db_conn, "db-down"))[0]
    audit = await db_conn.fetch("SELECT * FROM duplicate_events WHERE alert_id = 'db-down'")
    assert [(r["stream_id"], r["owner_key"]) for r in audit] == [(second, first["event_key"])]


async def test_same_alert_after_window_expires_rings_again(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await start_worker()
    await fire(settings, alert_id="db-down", dedup_window_s=1)

    async def posted(n: int) -> bool:
        return len(fake_twilio.creates()) == n

    await wait_for(lambda: posted(3), what="first 3 POSTs")
    lock = Keys(settings.redis_prefix).dedup_lock("default", "db-down")

    async def lock_expired() -> bool:
        return not await arq_redis.exists(lock)

    await wait_for(lock_expired, timeout=5, what="dedup lock expiry")
    await fire(settings, alert_id="db-down", dedup_window_s=1)
    await wait_for(lambda: posted(6), what="3 more POSTs after the window")
    rows = await alert_rows(db_conn, "db-down")
    assert len(rows) == 2
    assert [r["duplicates"] for r in rows] == [0, 0]
    assert sorted(posted_to(fake_twilio)) == sorted(PHONES * 2)
    assert len(await calls_of(db_conn, "db-down")) == 6


async def test_same_alert_id_in_another_tenant_rings_that_tenants_group(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await make_group(db_conn, phones=OTHER_PHONES, tenant="acme")
    await start_worker()
    await fire(settings, alert_id="db-down")
    await fire(settings, alert_id="db-down", tenant="acme")

    async def both_rang() -> bool:
        return len(fake_twilio.creates()) == 5

    await wait_for(both_rang, what="5 create POSTs")
    await wait_for(lambda: stream_drained(arq_redis, Keys(settings.redis_prefix)),
                   what="stream acknowledged")
    assert sorted(posted_to(fake_twilio)) == sorted(PHONES + OTHER_PHONES)
    acme = await calls_of(db_conn, "db-down", tenant="acme")
    assert sorted(c.phone for c in acme) == OTHER_PHONES
    default = await calls_of(db_conn, "db-down", tenant="default")
    assert sorted(c.phone for c in default) == PHONES
    assert [r["duplicates"] for r in await alert_rows(db_conn, "db-down")] == [0, 0]


async def test_window_zero_rings_for_every_event(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await start_worker()
    for _ in range(3):
        await fire(settings, alert_id="flappy", dedup_window_s=0)

    async def nine_rung() -> bool:
        # Each member is rung for each event; events for the same person may share a call
        # (one ring at a time per person), so count call rows at the provider, not POSTs.
        calls = await calls_of(db_conn, "flappy")
        return len(calls) == 9 and all(c.provider_sid for c in calls)

    await wait_for(nine_rung, what="9 calls at the provider")
    await wait_for(lambda: stream_drained(arq_redis, Keys(settings.redis_prefix)),
                   what="stream acknowledged")
    rows = await alert_rows(db_conn, "flappy")
    assert len(rows) == 3
    assert all(r["duplicates"] == 0 for r in rows)
    assert not await arq_redis.exists(Keys(settings.redis_prefix).dedup_lock("default", "flappy"))
    assert sorted(c.phone for c in await calls_of(db_conn, "flappy")) == sorted(PHONES * 3)
    assert set(posted_to(fake_twilio)) == set(PHONES)


async def test_retried_xadd_with_same_event_id_is_processed_once_and_not_its_own_duplicate(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await start_worker()
    await fire(settings, alert_id="db-down", event_id="evt-1")

    async def three_posted() -> bool:
        return len(fake_twilio.creates()) == 3

    await wait_for(three_posted, what="3 create POSTs")
    # The producer's XADD timed out on its side and it sent the same event again.
    await fire(settings, alert_id="db-down", event_id="evt-1")
    await wait_for(lambda: stream_drained(arq_redis, Keys(settings.redis_prefix)),
                   what="retry acknowledged")
    rows = await alert_rows(db_conn, "db-down")
    assert len(rows) == 1
    assert rows[0]["duplicates"] == 0
    assert await db_conn.fetchval("SELECT count(*) FROM duplicate_events") == 0
    assert len(await calls_of(db_conn, "db-down")) == 3
    assert len(fake_twilio.creates()) == 3


async def test_burst_of_the_same_alert_rings_once_and_counts_the_rest(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await start_worker()
    # Five monitors notice the same outage at once (one pipelined write, likely one batch).
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        await p.fire_many(
            [{"alert_id": "db-down", "group": "oncall", "message": f"seen by monitor {i}"}
             for i in range(5)]
        )
    await wait_for(lambda: stream_drained(arq_redis, Keys(settings.redis_prefix)),
                   what="burst acknowledged")
    rows = await alert_rows(db_conn, "db-down")
    assert [(r["message"], r["duplicates"]) for r in rows] == [("seen by monitor 0", 4)]
    assert await db_conn.fetchval("SELECT count(*) FROM duplicate_events") == 4

    async def three_posted() -> bool:
        return len(fake_twilio.creates()) == 3

    await wait_for(three_posted, what="3 create POSTs")
    assert len(await calls_of(db_conn, "db-down")) == 3


async def test_a_storm_read_in_many_batches_rings_once_and_records_every_duplicate(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    """Batches of 7: each batch's duplicates are recorded while the next one is read, and
    the last ones when the stream goes quiet; none is lost or acknowledged unrecorded."""
    await make_group(db_conn)
    await start_worker(settings.model_copy(update={"ingest_batch": 7}))
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        await p.fire_many([{"alert_id": "db-down", "group": "oncall",
                            "message": "Primary database is down"}] * 100)
    await wait_for(lambda: stream_drained(arq_redis, Keys(settings.redis_prefix)),
                   what="storm acknowledged")
    rows = await alert_rows(db_conn, "db-down")
    assert [r["duplicates"] for r in rows] == [99]
    assert await db_conn.fetchval("SELECT count(DISTINCT stream_id) FROM duplicate_events") == 99

    async def group_rung_once() -> bool:
        return sorted(posted_to(fake_twilio)) == sorted(PHONES)

    await wait_for(group_rung_once, what="one create POST per member")
    assert len(await calls_of(db_conn, "db-down")) == len(PHONES)
