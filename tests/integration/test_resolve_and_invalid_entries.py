"""Resolve stops the ringing; malformed stream entries become dead letters, not a stuck stream."""

from __future__ import annotations

from typing import Any

import asyncpg
from arq.connections import ArqRedis

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    alert_status,
    all_calls_completed,
    call_jobs_done,
    calls_of,
    event_json,
    fire,
    make_group,
    pending_count,
    posted_to,
    resolve,
    wait_for,
    xadd_raw,
)
from worker.config import Settings, load_settings
from worker.keys import Keys


async def test_resolve_before_calls_are_placed_cancels_them_without_posting(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    # At 0.2 calls/s the members' slots are 5 s apart: members 2 and 3 wait their turn.
    settings = load_settings({**env, "VOICEALERT_CALLS_PER_SECOND": "0.2"})
    keys = Keys(settings.redis_prefix)
    await make_group(db_conn)
    await start_worker(settings)
    await fire(settings, alert_id="db-down")

    async def first_posted() -> bool:
        return len(fake_twilio.creates()) >= 1

    await wait_for(first_posted, what="the first create POST")
    await resolve(settings, "db-down")

    async def later_calls_canceled() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return [r.status for r in rows[1:]] == ["canceled", "canceled"]

    await wait_for(later_calls_canceled, what="calls not yet placed canceled")
    assert await alert_status(db_conn, "db-down") == "resolved"
    later = (await calls_of(db_conn, "db-down"))[1:]
    # Their jobs still come due at their slots; wait until they have run and found nothing to do.
    assert not await call_jobs_done(arq_redis, keys, [c.id for c in later])
    await wait_for(lambda: call_jobs_done(arq_redis, keys, [c.id for c in later]), timeout=20,
                   what="the canceled calls' jobs finished")
    assert posted_to(fake_twilio) == PHONES[:1]
    assert [(c.status, c.attempts, c.provider_sid) for c in await calls_of(db_conn, "db-down")][
        1:] == [("canceled", 0, None)] * 2
    assert await alert_status(db_conn, "db-down") == "resolved"


async def test_resolve_cancels_a_call_ringing_at_the_provider(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    fake_twilio.ring_s = 5.0
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker()
    await fire(settings, alert_id="db-down")

    async def at_provider() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return len(rows) == 1 and rows[0].provider_sid is not None and rows[0].status in (
            "queued", "ringing")

    await wait_for(at_provider, what="the call queued at the provider")
    sid = (await calls_of(db_conn, "db-down"))[0].provider_sid
    assert sid is not None
    await resolve(settings, "db-down")

    async def cancel_sent() -> bool:
        return any(
            r.method == "POST" and r.path.endswith(f"/Calls/{sid}.json")
            and r.form.get("Status") == ["canceled"]
            for r in fake_twilio.requests
        )

    await wait_for(cancel_sent, what="the cancel request at the provider")

    async def canceled() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return rows[0].status == "canceled"

    await wait_for(canceled, what="the call recorded canceled")
    assert [c.status for c in fake_twilio.created_calls()] == ["canceled"]
    assert await alert_status(db_conn, "db-down") == "resolved"
    assert len(fake_twilio.creates()) == 1


BAD_ENTRIES: list[tuple[dict[str, str], str, str]] = [
    ({"event": "{not json"}, "invalid_json", "JSON"),
    ({"evnet": event_json(alert_id="x", group="oncall", message="m")}, "missing_event_field",
     "evnet"),
    ({"event": event_json(alert_id="x", group="oncall")}, "invalid_event", "message"),
    ({"event": event_json(alert_id="x", group="oncall", message="m", severity="high")},
     "invalid_event", "severity"),
    ({"event": "[1, 2, 3]"}, "invalid_event", "object"),
]


async def test_invalid_entries_are_dead_lettered_acknowledged_and_good_ones_still_ring(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    keys = Keys(settings.redis_prefix)
    await make_group(db_conn)
    await start_worker()
    ids = [await xadd_raw(settings, fields) for fields, _, _ in BAD_ENTRIES]
    await xadd_raw(settings, {"event": event_json(alert_id="db-down", group="oncall",
                                                  message="Primary database is down")})

    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="the good entry's calls")
    await wait_for(lambda: _no_pending(arq_redis, keys), what="every entry acknowledged")
    letters = {
        r["payload"]["stream_id"]: r
        for r in await db_conn.fetch("SELECT * FROM dead_letters ORDER BY id")
    }
    assert sorted(letters) == sorted(ids)
    for stream_id, (fields, reason, mentions) in zip(ids, BAD_ENTRIES, strict=True):
        letter = letters[stream_id]
        assert (letter["source"], letter["reason"]) == ("ingest", reason)
        assert mentions in letter["error"]
        assert letter["payload"]["fields"] == fields
    assert sorted(posted_to(fake_twilio)) == PHONES


async def _no_pending(client: ArqRedis, keys: Keys) -> bool:
    return await pending_count(client, keys) == 0


NUL_ENTRIES: list[tuple[dict[str, str], str]] = [
    ({"event": 'bad\x00json'}, "invalid_json"),
    ({"event": event_json(alert_id="a", group="on\u0000call", message="m")}, "invalid_event"),
    ({"event": event_json(alert_id="a\u0000", group="oncall", message="m")}, "invalid_event"),
    ({"event": event_json(alert_id="a", group="oncall", message="m",
                          metadata={"k": "v\u0000"})}, "invalid_event"),
]


async def test_nul_characters_become_dead_letters_and_never_stop_the_worker(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    # Postgres refuses U+0000 in text and jsonb: such an entry must be refused by validation
    # and stored readably, not crash the consumer on every redelivery.
    keys = Keys(settings.redis_prefix)
    await make_group(db_conn)
    worker = await start_worker()
    ids = [await xadd_raw(settings, fields) for fields, _ in NUL_ENTRIES]
    await xadd_raw(settings, {"event": event_json(alert_id="db-down", group="oncall",
                                                  message="Primary database is down")})

    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3),
                   what="the good entry's calls")
    await wait_for(lambda: _no_pending(arq_redis, keys), what="every entry acknowledged")
    assert worker.process.consumer_task is not None
    assert not worker.process.consumer_task.done()
    rows = await db_conn.fetch("SELECT payload, reason FROM dead_letters ORDER BY id")
    assert [r["payload"]["stream_id"] for r in rows] == ids
    assert [r["reason"] for r in rows] == [reason for _, reason in NUL_ENTRIES]
    assert "\ufffd" in rows[0]["payload"]["fields"]["event"]
