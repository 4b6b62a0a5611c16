"""An ``ack`` event (``voicealert ack``, the producers, the HTTP API) stops the calling: the
alert becomes acknowledged with who and when, ringing calls are hung up at the provider,
calls not yet placed are canceled, and no further member is called."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio

from producers import AlertProducer
from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    alert_rows,
    alert_status,
    calls_of,
    fire,
    make_group,
    posted_to,
    resolve,
    stream_drained,
    wait_for,
)
from worker.config import Settings, load_settings
from worker.keys import Keys


async def ack(settings: Settings, alert_id: str, by: str | None = None) -> str:
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        return await p.ack(alert_id=alert_id, acknowledged_by=by)


async def _first_call_ringing(db_conn: asyncpg.Connection, alert_id: str) -> None:
    async def ringing() -> bool:
        rows = await calls_of(db_conn, alert_id)
        return bool(rows) and rows[0].provider_sid is not None and rows[0].status in (
            "queued", "ringing")

    await wait_for(ringing, what="the first call at the provider")


async def test_ack_in_parallel_hangs_up_ringing_calls_and_cancels_those_not_placed(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    # At 0.3 calls/s the second and third members wait seconds for their slots.
    settings = load_settings({**env, "VOICEALERT_CALLS_PER_SECOND": "0.3"})
    fake_twilio.ring_s = 10.0
    await make_group(db_conn)
    await start_worker(settings)
    await fire(settings, alert_id="db-down")
    await _first_call_ringing(db_conn, "db-down")

    await ack(settings, "db-down", by="alice")

    async def all_canceled() -> bool:
        return [r.status for r in await calls_of(db_conn, "db-down")] == ["canceled"] * 3

    await wait_for(all_canceled, what="every call canceled")
    assert [c.status for c in fake_twilio.created_calls()] == ["canceled"]
    assert posted_to(fake_twilio) == PHONES[:1]
    [alert] = await alert_rows(db_conn, "db-down")
    assert (alert["status"], alert["acknowledged_by"]) == ("acknowledged", "alice")
    assert alert["acknowledged_at"] is not None
    later = (await calls_of(db_conn, "db-down"))[1:]
    assert {r.error_message for r in later} == {
        "alert acknowledged before the call was placed"}


async def test_ack_in_sequential_calls_no_further_member(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.ring_s = 10.0
    await make_group(db_conn)
    await start_worker()
    await fire(settings, alert_id="seq", mode="sequential")
    await _first_call_ringing(db_conn, "seq")

    await ack(settings, "seq")

    async def ended() -> bool:
        return [r.status for r in await calls_of(db_conn, "seq")] == ["canceled"] * 3

    await wait_for(ended, what="the ringing call hung up and the others canceled")
    assert posted_to(fake_twilio) == PHONES[:1]
    [alert] = await alert_rows(db_conn, "seq")
    assert alert["status"] == "acknowledged"
    assert alert["acknowledged_by"] is None  # nobody named: who is unknown, when is not
    assert alert["acknowledged_at"] is not None


async def test_a_trigger_after_an_ack_within_the_window_is_still_deduplicated(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.ring_s = 10.0
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker()
    await fire(settings, alert_id="db-down")
    await _first_call_ringing(db_conn, "db-down")
    await ack(settings, "db-down", by="alice")

    async def acknowledged() -> bool:
        return await alert_status(db_conn, "db-down") == "acknowledged"

    await wait_for(acknowledged, what="the alert acknowledged")
    await fire(settings, alert_id="db-down")

    async def counted() -> bool:
        rows = await alert_rows(db_conn, "db-down")
        return bool(rows[0]["duplicates"] == 1)

    await wait_for(counted, what="the second trigger counted as a duplicate")
    assert len(await alert_rows(db_conn, "db-down")) == 1
    assert posted_to(fake_twilio) == PHONES[:1]


async def test_a_resolve_after_an_ack_resolves_the_alert_and_an_ack_after_a_resolve_does_not(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, text_redis: redis.asyncio.Redis,
) -> None:
    fake_twilio.ring_s = 10.0
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker()
    await fire(settings, alert_id="acked-first")
    await _first_call_ringing(db_conn, "acked-first")
    await ack(settings, "acked-first", by="alice")
    await resolve(settings, "acked-first")

    async def resolved() -> bool:
        return await alert_status(db_conn, "acked-first") == "resolved"

    await wait_for(resolved, what="the acknowledged alert resolved")
    [alert] = await alert_rows(db_conn, "acked-first")
    assert alert["acknowledged_by"] == "alice"  # the acknowledgement stays on record

    await fire(settings, alert_id="resolved-first", dedup_window_s=0)
    await _first_call_ringing(db_conn, "resolved-first")
    await resolve(settings, "resolved-first")
    await ack(settings, "resolved-first", by="bob")
    await ack(settings, "acked-first", by="carol")
    await wait_for(lambda: stream_drained(text_redis, Keys(settings.redis_prefix)),
                   what="the late acks processed")
    [late] = await alert_rows(db_conn, "resolved-first")
    assert (late["status"], late["acknowledged_by"]) == ("resolved", None)
    [first] = await alert_rows(db_conn, "acked-first")
    assert (first["status"], first["acknowledged_by"]) == ("resolved", "alice")
