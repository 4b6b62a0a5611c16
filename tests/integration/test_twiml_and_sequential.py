"""What the callee hears (TwiML that cannot be hijacked) and who is rung in sequential mode."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from typing import Any

import asyncpg

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    alert_status,
    calls_of,
    event_json,
    fire,
    make_group,
    posted_to,
    wait_for,
    xadd_raw,
)
from worker.config import Settings

INJECTION = "</Say><Dial>+19005550100</Dial>"


async def _twiml_posted(fake: FakeTwilio) -> ET.Element:
    async def posted() -> bool:
        return len(fake.creates()) == 1

    await wait_for(posted, what="the create POST")
    twiml = fake.creates()[0].form["Twiml"][0]
    return ET.fromstring(twiml)  # our own fake's copy of what we sent


def _spoken(root: ET.Element) -> list[str]:
    return [say.text or "" for say in root.iter("Say")]


def _assert_only_say_and_pause(root: ET.Element) -> None:
    assert root.tag == "Response"
    assert {child.tag for child in root} <= {"Say", "Pause"}
    assert all(len(child) == 0 for child in root), "a verb nested inside Say/Pause"
    assert list(root.iter("Dial")) == []


async def test_message_with_markup_is_spoken_literally_and_injects_no_verb(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker()
    await fire(settings, alert_id="inject", message=INJECTION)
    root = await _twiml_posted(fake_twilio)
    _assert_only_say_and_pause(root)
    assert INJECTION in _spoken(root)
    assert fake_twilio.creates()[0].form["To"] == PHONES[:1]


async def test_message_with_control_characters_yields_twiml_that_parses(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker()
    # Written the way a producer in another language could: raw JSON, no client-side cleanup.
    raw_message = "Disk full\x00\x07 on db-1\x1b\r\nnow <act> & \x0bfast\u200b"
    await xadd_raw(settings, {"event": event_json(alert_id="ctl", group="oncall",
                                                  message=raw_message)})
    root = await _twiml_posted(fake_twilio)
    _assert_only_say_and_pause(root)
    assert "Disk full on db-1 now <act> & fast" in _spoken(root)
    twiml = fake_twilio.creates()[0].form["Twiml"][0]
    assert not any(ord(ch) < 0x20 or ch == "\u200b" for ch in twiml)
    stored = await db_conn.fetchval("SELECT message FROM alerts WHERE alert_id = 'ctl'")
    assert stored == "Disk full on db-1 now <act> & fast"


async def test_sequential_rings_next_member_on_no_answer_and_stops_when_answered(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    fake_twilio.set_outcome(PHONES[0], "no-answer")
    await make_group(db_conn)
    await start_worker()
    await fire(settings, alert_id="seq", mode="sequential")

    async def answered() -> bool:
        return await alert_status(db_conn, "seq") == "answered"

    await wait_for(answered, what="alert answered")

    async def settled() -> bool:
        rows = await calls_of(db_conn, "seq")
        return [r.status for r in rows] == ["no-answer", "completed", "canceled"]

    await wait_for(settled, what="calls no-answer, completed, canceled")
    assert posted_to(fake_twilio) == PHONES[:2]
    third = (await calls_of(db_conn, "seq"))[2]
    assert (third.phone, third.attempts, third.provider_sid) == (PHONES[2], 0, None)


async def test_sequential_with_nobody_answering_rings_each_in_order_and_ends_unacknowledged(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, rounds=1)
    await start_worker()
    await fire(settings, alert_id="seq", mode="sequential")

    async def unacknowledged() -> bool:
        return await alert_status(db_conn, "seq") == "unacknowledged"

    await wait_for(unacknowledged, what="alert unacknowledged")
    rows = await calls_of(db_conn, "seq")
    assert [(r.phone, r.status) for r in rows] == [(p, "no-answer") for p in PHONES]
    assert posted_to(fake_twilio) == PHONES
    # One at a time: each member is dialled only after the previous call ended.
    creates = sorted(fake_twilio.creates(), key=lambda c: c.at)
    calls = {c.to: c for c in fake_twilio.created_calls()}
    for before, after in itertools.pairwise(creates):
        previous = calls[before.form["To"][0]]
        assert after.at >= previous.created_monotonic + fake_twilio.ring_s
