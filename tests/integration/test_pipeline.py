"""One event through the whole pipeline: stream → dedup → rows → jobs → fake Twilio → calls."""

from __future__ import annotations

from typing import Any

import asyncpg

from producers import AlertProducer
from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    FROM_NUMBER,
    PHONES,
    alert_decided,
    all_calls_completed,
    make_group,
    wait_for,
)
from worker import db
from worker.config import Settings

__all__ = ["PHONES", "make_group", "wait_for"]  # re-exported for suites that import them here


async def test_event_to_three_member_group_places_three_calls_that_complete(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    await make_group(db_conn)
    await start_worker()
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        await p.fire(alert_id="db-down", group="oncall", message="Primary database is down")

    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3))
    creates = fake_twilio.creates()
    assert sorted(c.form["To"][0] for c in creates) == PHONES
    assert {c.form["From"][0] for c in creates} == {FROM_NUMBER}
    assert all("Primary database is down" in c.form["Twiml"][0] for c in creates)
    rows = await db.list_calls(db_conn, alert_id="db-down")
    assert all(r.provider_sid and r.provider_sid.startswith("CA") for r in rows)
    assert all(r.duration_s and r.duration_s >= 1 for r in rows)
    await wait_for(lambda: alert_decided(db_conn, "db-down", "answered"), 5, "alert answered")
