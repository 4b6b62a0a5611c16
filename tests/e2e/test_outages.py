"""Database and Redis outages under a real worker process (issue 4, item 4).

Each test runs its own server (scripts/services.py) so it can stop it:
- Postgres down for ~10 s while events keep arriving: the worker stays up, entries stay
  unacknowledged and jobs retry with backoff; when Postgres returns every event rings.
- Redis gone: the worker exits non-zero within seconds (deliberately: a supervisor restarts
  it, rather than a half-alive process); once Redis is back a new worker rings again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import redis.asyncio

from producers import AlertProducer
from scripts.services import ThrowawayPostgres, ThrowawayRedis
from testing.fake_twilio import FakeTwilio
from tests.e2e.workers import SpawnWorker
from tests.helpers import make_group, wait_for
from worker import db
from worker.keys import Keys
from worker.migrate import migrate

PHONES = ["+14155550100", "+14155550101"]
OUTAGE_S = 10.0


async def test_postgres_down_for_ten_seconds_loses_no_event(
    throwaway_postgres: ThrowawayPostgres,
    redis_url: str,
    prefix: str,
    fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    database_url = throwaway_postgres.url_for("voicealert")
    await migrate(database_url)
    conn = await db.connect(database_url)
    try:
        await make_group(conn, "oncall", PHONES)
    finally:
        await conn.close()
    worker = spawn_worker("pg", DATABASE_URL=database_url)
    await worker.ready()
    keys = Keys(prefix)
    client = redis.asyncio.Redis.from_url(redis_url)
    producer = AlertProducer(client, prefix=prefix)
    fired: list[str] = []

    async def fire(alert_id: str) -> None:
        await producer.fire(alert_id=alert_id, group="oncall", message="Queue is backing up")
        fired.append(alert_id)

    for i in range(3):
        await fire(f"before-{i}")

    async def before_rung() -> bool:
        # Every row at the provider: alerts to the same people may share a call (merged).
        conn = await db.connect(database_url)
        try:
            placed = await conn.fetchval(
                "SELECT count(*) FROM calls WHERE provider_sid IS NOT NULL")
        finally:
            await conn.close()
        return int(placed) == 2 * len(fired)

    await wait_for(before_rung, 15, "calls of the events before the outage")

    await asyncio.to_thread(throwaway_postgres.stop, "fast")
    down_at = time.monotonic()
    unacknowledged = 0
    during = 0
    while time.monotonic() - down_at < OUTAGE_S:
        await fire(f"during-{during}")
        during += 1
        await asyncio.sleep(0.25)
        assert worker.alive, f"the worker exited during the outage:\n{worker.log_tail()}"
        groups = await client.xinfo_groups(keys.events)
        unacknowledged = int(groups[0]["pending"]) + int(groups[0]["lag"])
    # Nothing fired during the outage was acknowledged: it was all still in the stream.
    assert unacknowledged == during
    await asyncio.to_thread(throwaway_postgres.start)
    up_at = time.monotonic()
    for i in range(3):
        await fire(f"after-{i}")

    conn = await db.connect(database_url)
    try:

        async def every_event_rung() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM calls c JOIN alerts a ON a.id = c.alert"
                " WHERE a.alert_id = ANY($1::text[]) AND c.status = 'completed'",
                fired,
            )
            return int(done) == 2 * len(fired)

        try:
            await wait_for(every_event_rung, 45, "every event's calls after Postgres returned")
        except AssertionError:
            states = await conn.fetch(
                "SELECT a.alert_id, c.status, c.provider_sid FROM calls c"
                " JOIN alerts a ON a.id = c.alert WHERE c.status <> 'completed'"
            )
            have = {r["alert_id"] for r in await conn.fetch("SELECT alert_id FROM alerts")}
            raise AssertionError(
                f"not completed: {[dict(r) for r in states]}; events without an alert: "
                f"{sorted(set(fired) - have)}\n{worker.log_tail(15)}"
            ) from None
        caught_up_s = time.monotonic() - up_at

        async def every_alert_settled() -> bool:  # an alert's status follows its last call's
            open_alerts = await conn.fetchval(
                "SELECT count(*) FROM alerts WHERE status <> 'answered'")
            return int(open_alerts) == 0

        await wait_for(every_alert_settled, 15, "every alert answered")
        alerts = await conn.fetch("SELECT alert_id, status FROM alerts")
        rows = await db.list_calls(conn)
        letters = await conn.fetch("SELECT source, reason, error FROM dead_letters")
    finally:
        await conn.close()
        await producer.aclose()
        await client.aclose()

    assert worker.alive, "the worker must ride out a database outage"
    assert worker.logged("ingest.database_unavailable"), "the outage was never noticed"
    # An outage is nobody's fault: no event may end in the dead-letter queue because of it.
    assert letters == [], [dict(r) for r in letters]
    assert sorted(r["alert_id"] for r in alerts) == sorted(fired)
    assert {r["status"] for r in alerts} == {"answered"}
    created = fake_twilio.created_calls()
    # Every event rang each member once; a person's calls waiting together were merged
    # into one (one ring at a time per person), so POSTs are the rows not merged.
    assert Counter(r.phone for r in rows) == Counter({p: len(fired) for p in PHONES})
    assert Counter(c.to for c in created) == Counter(
        r.phone for r in rows if r.merged_into is None)
    assert {c.sid for c in created} == {r.provider_sid for r in rows}
    print(
        f"\n[outage] Postgres down {OUTAGE_S:.0f}s, {len(fired)} events "
        f"({during} fired during the outage): all rung in {len(created)} calls, "
        f"{caught_up_s:.2f}s after it returned"
    )


async def test_worker_exits_nonzero_when_redis_goes_away_and_a_restarted_one_rings(
    throwaway_redis: ThrowawayRedis,
    prefix: str,
    db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    await make_group(db_conn, "oncall", PHONES)
    url = throwaway_redis.url

    async def fire(alert_id: str) -> None:
        async with AlertProducer.from_url(url, prefix=prefix) as producer:
            await producer.fire(alert_id=alert_id, group="oncall", message="Cache is down")

    async def rung(alert_id: str) -> bool:
        rows = await db.list_calls(db_conn, alert_id=alert_id)
        return len(rows) == 2 and all(r.status == "completed" for r in rows)

    first = spawn_worker("first", REDIS_URL=url)
    await first.ready()
    await fire("before")
    await wait_for(lambda: rung("before"), 15, "calls before Redis went away")

    await asyncio.to_thread(throwaway_redis.stop)
    gone_at = time.monotonic()
    code = await first.wait_exit(10)
    exited_after = time.monotonic() - gone_at
    assert code is not None, f"still running 10s after Redis went away:\n{first.log_tail()}"
    assert code != 0

    await asyncio.to_thread(throwaway_redis.start)  # empty: no persistence on this server
    second = spawn_worker("second", REDIS_URL=url)
    await second.ready()
    await fire("after")
    await wait_for(lambda: rung("after"), 15, "calls after Redis came back")
    print(f"\n[outage] Redis stopped: the worker exited with {code} after {exited_after:.2f}s")
