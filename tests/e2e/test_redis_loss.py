"""Redis loses everything while calls wait on the call rate (issue 7, item 3).

Two real workers on a throwaway Redis; a 12-member alert fans out at 2 calls per second, and
a few calls in, FLUSHALL: every queued call job, every poll, the dedup lock, the stream and
its consumer group are gone. Postgres still has every call. The consumers recreate their
group, the sweeper re-creates the jobs and the lock: every member is called exactly once,
every call ends, and the same alert fired again within its window still rings nobody.
"""

from __future__ import annotations

import time
from collections import Counter

import asyncpg
import redis.asyncio

from producers import AlertProducer
from scripts.services import ThrowawayRedis
from testing.fake_twilio import FakeTwilio
from tests.e2e.workers import SpawnWorker
from tests.helpers import make_group, wait_for
from worker import db

PHONES = [f"+1415555{n:04d}" for n in range(400, 412)]
TUNING = {
    "VOICEALERT_CALLS_PER_SECOND": "2",
    "VOICEALERT_SWEEP_INTERVAL_S": "1",
    "VOICEALERT_CALL_JOB_TIMEOUT_S": "4",
}


async def test_every_waiting_call_still_rings_once_after_redis_loses_everything(
    throwaway_redis: ThrowawayRedis, prefix: str, db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, spawn_worker: SpawnWorker,
) -> None:
    await make_group(db_conn, "oncall", PHONES)
    fake_twilio.ring_s = 1.0
    url = throwaway_redis.url
    workers = [spawn_worker(name, REDIS_URL=url, **TUNING) for name in ("a", "b")]
    for worker in workers:
        await worker.ready()
    client = redis.asyncio.Redis.from_url(url)
    producer = AlertProducer(client, prefix=prefix)
    try:
        await producer.fire(alert_id="db-down", group="oncall", message="Primary is down",
                            dedup_window_s=600)

        async def some_placed() -> bool:
            return len(fake_twilio.creates()) >= 3

        await wait_for(some_placed, 15, "the first calls")
        await client.flushall()  # the throwaway server: as a restart without persistence
        lost_at = time.monotonic()

        async def every_call_ended() -> bool:
            rows = await db.list_calls(db_conn, alert_id="db-down")
            return len(rows) == len(PHONES) and all(r.ended_at for r in rows)

        try:
            await wait_for(every_call_ended, 45, "every call ended after the loss")
        except AssertionError:
            rows = await db.list_calls(db_conn, alert_id="db-down")
            raise AssertionError(
                f"{[(r.id, r.status) for r in rows if not r.ended_at]}\n"
                + "\n".join(w.log_tail(10) for w in workers)) from None
        recovered_s = time.monotonic() - lost_at
        placed_before_retry = len(fake_twilio.creates())
        # Within the window, the same alert rings nobody: its lock was rebuilt from Postgres.
        await producer.fire(alert_id="db-down", group="oncall", message="Primary is down",
                            dedup_window_s=600)

        async def counted_as_duplicate() -> bool:
            return bool(await db_conn.fetchval(
                "SELECT duplicates FROM alerts WHERE alert_id = 'db-down'"))

        await wait_for(counted_as_duplicate, 15, "the repeat counted as a duplicate")
    finally:
        await producer.aclose()
        await client.aclose()
    per_phone = Counter(c.form["To"][0] for c in fake_twilio.creates())
    assert per_phone == Counter(PHONES), "every member called exactly once"
    assert len(fake_twilio.creates()) == placed_before_retry
    rows = await db.list_calls(db_conn, alert_id="db-down")
    assert {r.status for r in rows} == {"completed"}
    assert all(w.alive for w in workers)
    repairs = [e for w in workers for e in w.logged("sweeper.repaired")]
    assert sum(e.get("place", 0) for e in repairs) > 0
    assert sum(e.get("dedup_lock", 0) for e in repairs) == 1
    assert any(w.logged("ingest.group_recreated") for w in workers)
    totals: Counter[str] = Counter()
    for e in repairs:
        totals.update({k: v for k, v in e.items() if isinstance(v, int)})
    print(f"\n[redis-loss] FLUSHALL after 3 of {len(PHONES)} calls: every member called once, "
          f"every call ended {recovered_s:.1f}s later; repairs {dict(totals)}")
