"""One ring at a time per person: a call that comes due while its number is being called
waits; calls waiting for the same number are merged into one call that speaks each alert,
every merged row records the same sid and outcome, and pressing 1 acknowledges them all."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg
import pytest

from producers import AlertProducer
from testing.fake_twilio import FakeTwilio
from tests.helpers import PHONES, alert_rows, calls_of, fire, make_group, wait_for
from worker import db
from worker.config import Settings, load_settings


def _overlaps(fake: FakeTwilio, phone: str) -> list[tuple[str, str]]:
    """Pairs of calls to ``phone`` that were live at the same time, by the fake's clock."""
    calls = sorted((c for c in fake.created_calls() if c.to == phone),
                   key=lambda c: c.created_monotonic)
    ends = {c.sid: _end(fake, c.sid) for c in calls}
    return [(a.sid, b.sid) for a, b in itertools.pairwise(calls)
            if b.created_monotonic < ends[a.sid]]


def _end(fake: FakeTwilio, sid: str) -> float:
    """When the fake last reported on the call (its final callback, or its last request)."""
    hooks = fake.status_callbacks(sid=sid)
    return max([h.sent_at for h in hooks] + [r.at for r in fake.requests if r.sid == sid])


async def test_two_alerts_one_second_apart_ring_one_merged_call_and_one_press_acks_both(
    webhook_env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    settings = load_settings({**webhook_env, "VOICEALERT_MERGE_WINDOW_S": "2"})
    fake_twilio.play_twiml = True
    fake_twilio.press(PHONES[0], "1", at_s=0.1)
    await make_group(db_conn, phones=PHONES[:1])
    await start_web(settings)
    await start_worker(settings)
    await fire(settings, alert_id="disk", message="Disk full on db-1")
    await asyncio.sleep(1)
    await fire(settings, alert_id="db", message="Primary database is down")

    async def both_acknowledged() -> bool:
        rows = [*(await alert_rows(db_conn, "disk")), *(await alert_rows(db_conn, "db"))]
        return len(rows) == 2 and {r["status"] for r in rows} == {"acknowledged"}

    await wait_for(both_acknowledged, what="both alerts acknowledged by one keypress")
    [create] = fake_twilio.creates()
    twiml = create.form["Twiml"][0]
    assert "2 alerts." in twiml
    assert twiml.index("First: Disk full on db-1") < twiml.index(
        "Second: Primary database is down")
    disk, dbdown = (await calls_of(db_conn, "disk"))[0], (await calls_of(db_conn, "db"))[0]
    assert disk.provider_sid == dbdown.provider_sid == fake_twilio.created_calls()[0].sid
    assert (disk.merged_into, dbdown.merged_into) == (None, disk.id)
    assert disk.acknowledged_by == dbdown.acknowledged_by == "member0"

    async def both_completed() -> bool:
        rows = [*(await calls_of(db_conn, "disk")), *(await calls_of(db_conn, "db"))]
        return [r.status for r in rows] == ["completed", "completed"]

    await wait_for(both_completed, what="both rows completed with the one call")
    assert fake_twilio.application_errors() == []


async def test_a_call_due_while_its_number_rings_waits_for_it(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.ring_s = 2.0
    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, phones=PHONES[:1], rounds=1)
    await start_worker(settings)
    await fire(settings, alert_id="first")

    async def ringing() -> bool:
        return len(fake_twilio.creates()) == 1

    await wait_for(ringing, what="the first call placed")
    await fire(settings, alert_id="second")

    async def both_ended() -> bool:
        rows = [*(await calls_of(db_conn, "first")), *(await calls_of(db_conn, "second"))]
        return len(rows) == 2 and all(r.ended_at for r in rows)

    await wait_for(both_ended, what="both calls ended")
    assert len(fake_twilio.created_calls()) == 2
    assert _overlaps(fake_twilio, PHONES[0]) == []
    second = (await calls_of(db_conn, "second"))[0]
    assert second.merged_into is None  # placed on its own, after the first


async def test_an_alert_storm_rings_each_person_a_handful_of_times_across_replicas(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    fake_twilio.ring_s, fake_twilio.talk_s = 0.5, 1.0
    await make_group(db_conn, rounds=1)
    storm = load_settings({**env, "VOICEALERT_MERGE_WINDOW_S": "1"})
    await start_worker(storm)
    await start_worker(storm)
    async with AlertProducer.from_url(storm.redis_url, prefix=storm.redis_prefix) as producer:
        await producer.fire_many([
            {"alert_id": f"svc-{i}", "group": "oncall", "message": f"Service {i} is down"}
            for i in range(20)])

    async def all_ended() -> bool:
        rows = await db.list_calls(db_conn)
        return len(rows) == 60 and all(r.ended_at for r in rows)

    await wait_for(all_ended, timeout=30, what="60 rows, every one ended")
    per_person = [sum(c.to == phone for c in fake_twilio.created_calls()) for phone in PHONES]
    with capsys.disabled():
        print(f"\n20 alerts to 3 people: {per_person} calls per person, 60 call rows")
    for phone in PHONES:
        placed = [c for c in fake_twilio.created_calls() if c.to == phone]
        assert 1 <= len(placed) <= 4, f"{phone} rang {len(placed)} times for 20 alerts"
        assert _overlaps(fake_twilio, phone) == []
    rows = await db.list_calls(db_conn)
    assert {r.status for r in rows} == {"completed"}
    sids = {c.sid for c in fake_twilio.created_calls()}
    assert {r.provider_sid for r in rows} == sids  # every row linked to the call it was in


async def test_resolving_one_merged_alert_does_not_hang_up_the_call_for_the_other(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    from tests.helpers import resolve

    settings = load_settings({**env, "VOICEALERT_MERGE_WINDOW_S": "1"})
    fake_twilio.ring_s = 3.0
    await make_group(db_conn, phones=PHONES[:1], rounds=1)
    await start_worker(settings)
    await fire(settings, alert_id="a", message="Alert A")
    await fire(settings, alert_id="b", message="Alert B")

    async def merged_and_ringing() -> bool:
        rows = [*(await calls_of(db_conn, "a")), *(await calls_of(db_conn, "b"))]
        return len(rows) == 2 and all(r.provider_sid for r in rows)

    await wait_for(merged_and_ringing, what="one merged call at the provider")
    await resolve(settings, "a")

    async def answered() -> bool:
        rows = await calls_of(db_conn, "b")
        return rows[0].status == "completed"

    await wait_for(answered, what="the merged call went on and was answered")
    [call] = fake_twilio.created_calls()
    assert call.status == "completed"
    assert [r.form.get("Status") for r in fake_twilio.requests_of("update")] == []
