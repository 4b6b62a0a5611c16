"""The HTTP API while Redis or Postgres is down, each a server of the test's own
(scripts/services.py), never the shared ones.

- Redis down: POST answers 503 with Retry-After at once and writes nothing; the client
  retries (the HTTP producer does, with its Idempotency-Key) and, once Redis is back, the
  event is on the stream once and a worker rings once.
- Postgres down: a token this process checked before the outage still fires (alerts keep
  flowing into the stream for the workers to store later); a token it never checked, and
  reads, answer 503.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import redis.asyncio

from producers import HttpAlertProducer
from scripts.services import ThrowawayPostgres, ThrowawayRedis
from testing.fake_twilio import FakeTwilio
from tests.e2e.webs import SpawnWeb
from tests.e2e.workers import SpawnWorker
from tests.helpers import PHONES, all_calls_completed, make_group, make_token, wait_for
from worker.keys import Keys
from worker.migrate import migrate

EVENT = {"alert_id": "cache-down", "group": "oncall", "message": "Cache is down"}


async def test_redis_down_is_503_with_retry_after_and_the_retried_event_rings_once(
    throwaway_redis: ThrowawayRedis, spawn_web: SpawnWeb, spawn_worker: SpawnWorker,
    db_conn: asyncpg.Connection, database_url: str, prefix: str, fake_twilio: FakeTwilio,
) -> None:
    await make_group(db_conn, "oncall", PHONES)
    token = await make_token(database_url)
    web = await spawn_web(REDIS_URL=throwaway_redis.url).up()
    await asyncio.to_thread(throwaway_redis.stop)

    started = time.monotonic()
    refused = await web.request("POST", "/v1/alerts", token=token, json_body=EVENT)
    assert time.monotonic() - started < 3.0  # bounded: an outage is answered, not waited on
    assert refused.status == 503
    assert refused.body["status"] == 503
    assert "Redis" in refused.body["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert [e for e in web.log_events() if e.get("event") == "api.redis_unavailable"]

    async def back_in_a_second() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(throwaway_redis.start)  # empty: it kept nothing anyway

    async with HttpAlertProducer(web.base_url, token=token, retries=3) as producer:
        comeback = asyncio.create_task(back_in_a_second())
        # 503, waits Retry-After, retries with the same Idempotency-Key
        stream_id = await producer.fire(alert_id="cache-down", group="oncall",
                                        message="Cache is down")
        await comeback

    client = redis.asyncio.Redis.from_url(throwaway_redis.url, decode_responses=True)
    try:
        entries = await client.xrange(Keys(prefix).events)
    finally:
        await client.aclose()
    assert [entry_id for entry_id, _ in entries] == [stream_id]
    assert json.loads(entries[0][1]["event"])["alert_id"] == "cache-down"

    worker = spawn_worker(REDIS_URL=throwaway_redis.url)
    await worker.ready()
    await wait_for(lambda: all_calls_completed(db_conn, "cache-down", len(PHONES)), 20,
                   "the retried event rung")
    assert len(fake_twilio.creates()) == len(PHONES)


async def test_postgres_down_fires_with_a_token_checked_before_and_refuses_the_rest(
    throwaway_postgres: ThrowawayPostgres, spawn_web: SpawnWeb, text_redis: redis.asyncio.Redis,
    prefix: str,
) -> None:
    database_url = throwaway_postgres.url_for("voicealert")
    await migrate(database_url)
    known = await make_token(database_url, "acme", "known")
    unseen = await make_token(database_url, "acme", "unseen")
    web = await spawn_web(DATABASE_URL=database_url).up()
    assert (await web.request("POST", "/v1/alerts", token=known, json_body=EVENT)).status == 202

    await asyncio.to_thread(throwaway_postgres.stop, "fast")
    during = await web.request("POST", "/v1/alerts", token=known,
                               json_body={**EVENT, "alert_id": "during"})
    never_checked = await web.request("POST", "/v1/alerts", token=unseen, json_body=EVENT)
    read = await web.request("GET", "/v1/alerts/cache-down", token=known)

    assert during.status == 202, during
    assert (never_checked.status, read.status) == (503, 503)
    assert "Retry-After" in never_checked.headers
    assert "Retry-After" in read.headers
    ids = [json.loads(f["event"])["alert_id"]
           for _, f in await text_redis.xrange(Keys(prefix).events)]
    assert ids == ["cache-down", "during"]
    assert [e for e in web.log_events() if e.get("event") == "api.token_accepted_from_memory"]
