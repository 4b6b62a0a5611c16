"""Answering machines: detection is asked for, ``answered_by`` recorded, and a machine is
not an answer: a sequential alert moves on, a parallel one counts it unanswered, and the
machine is hung up on (or left a short voicemail when configured)."""

from __future__ import annotations

from typing import Any

import asyncpg

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    alert_rows,
    alert_status,
    calls_of,
    fire,
    make_group,
    posted_to,
    wait_for,
)
from worker.config import Settings, load_settings


async def _status(db_conn: asyncpg.Connection, alert_id: str, wanted: str) -> None:
    async def reached() -> bool:
        return await alert_status(db_conn, alert_id) == wanted

    await wait_for(reached, what=f"alert {alert_id} {wanted}")


async def _hang_ups(fake: FakeTwilio, phone: str) -> list[dict[str, list[str]]]:
    [call] = [c for c in fake.created_calls() if c.to == phone]
    return [r.form for r in fake.requests_of("update", sid=call.sid)]


async def test_a_machine_answer_moves_a_sequential_alert_on_and_is_not_an_answer(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    # No public URL: detection holds the message until it decides, the worker polls.
    fake_twilio.talk_s = 3.0
    fake_twilio.set_outcome(PHONES[0], "completed", answered_by="machine")
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="seq", mode="sequential")

    await _status(db_conn, "seq", "answered")
    rows = await calls_of(db_conn, "seq")
    assert [(r.status, r.answered_by) for r in rows] == [
        ("completed", "machine_start"), ("in-progress", "human")]
    assert posted_to(fake_twilio) == PHONES[:2]
    assert [c.form["MachineDetection"] for c in fake_twilio.creates()] == [["Enable"]] * 2
    assert "AsyncAmd" not in fake_twilio.creates()[0].form
    # The machine was hung up on as soon as detection said so, not after its 3 s.
    assert {"Status": ["completed"]} in await _hang_ups(fake_twilio, PHONES[0])


async def test_a_machine_answer_in_parallel_counts_as_unanswered(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.set_outcome(PHONES[0], "completed", answered_by="machine")
    await make_group(db_conn, phones=PHONES[:1], rounds=1)
    await start_worker(settings)
    await fire(settings, alert_id="par")

    await _status(db_conn, "par", "unacknowledged")
    [row] = await calls_of(db_conn, "par")
    assert (row.status, row.answered_by) == ("completed", "machine_start")


async def test_with_webhooks_detection_is_asynchronous_and_a_machine_moves_the_sequence_on(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    fake_twilio.play_twiml = True
    fake_twilio.set_outcome(PHONES[0], "completed", answered_by="machine")
    fake_twilio.press(PHONES[1], "1", at_s=0.05)
    await make_group(db_conn, phones=PHONES[:2])
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="seq", mode="sequential")

    await _status(db_conn, "seq", "acknowledged")
    rows = await calls_of(db_conn, "seq")
    assert rows[0].answered_by == "machine_start"
    assert rows[0].acknowledged_at is None
    assert rows[1].acknowledged_by == "member1"
    [alert] = await alert_rows(db_conn, "seq")
    assert alert["acknowledged_by"] == "member1"
    first = fake_twilio.creates()[0].form
    assert (first["MachineDetection"], first["AsyncAmd"]) == (["Enable"], ["true"])
    assert first["AsyncAmdStatusCallback"] == [
        f"{webhook_settings.public_url}/twilio/amd?call={rows[0].id}"]
    [amd] = fake_twilio.webhooks("amd", to=PHONES[0])
    assert (amd.params["AnsweredBy"], amd.status) == ("machine_start", 200)
    assert {"Status": ["completed"]} in await _hang_ups(fake_twilio, PHONES[0])
    assert fake_twilio.application_errors() == []


async def test_a_machine_is_left_a_short_voicemail_when_configured(
    webhook_env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    settings = load_settings({**webhook_env, "VOICEALERT_VOICEMAIL": "true",
                              "VOICEALERT_MACHINE_DETECTION": "DetectMessageEnd"})
    fake_twilio.play_twiml = True
    fake_twilio.set_outcome(PHONES[0], "completed", answered_by="machine")
    await make_group(db_conn, phones=PHONES[:1], rounds=1)
    await start_web(settings)
    await start_worker(settings)
    await fire(settings, alert_id="vm", message="Disk full on db-1")

    async def ended() -> bool:
        rows = await calls_of(db_conn, "vm")
        return bool(rows) and rows[0].status == "completed"

    await wait_for(ended, what="the call ended")
    [row] = await calls_of(db_conn, "vm")
    assert row.answered_by == "machine_end_beep"
    [create] = fake_twilio.creates()
    assert create.form["MachineDetection"] == ["DetectMessageEnd"]
    [update] = await _hang_ups(fake_twilio, PHONES[0])
    voicemail = update["Twiml"][0]
    assert "Disk full on db-1" in voicemail
    assert "<Gather" not in voicemail
    said = fake_twilio.spoken(fake_twilio.created_calls()[0].sid)
    assert said[-1] == "Please check your alerts."
    await _status(db_conn, "vm", "unacknowledged")


async def test_with_detection_off_nothing_is_asked_and_any_pickup_is_an_answer(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    settings = load_settings({**env, "VOICEALERT_MACHINE_DETECTION": "off"})
    fake_twilio.set_outcome(PHONES[0], "completed", answered_by="machine")
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="off", mode="sequential")

    await _status(db_conn, "off", "answered")
    assert "MachineDetection" not in fake_twilio.creates()[0].form
    assert posted_to(fake_twilio) == PHONES[:1]


async def test_the_simulated_provider_has_machines_and_people_who_press_1(
    env: dict[str, str], db_conn: asyncpg.Connection, start_worker: Any,
) -> None:
    settings = load_settings({
        **{k: v for k, v in env.items() if not k.startswith("TWILIO_")},
        "VOICEALERT_PROVIDER": "simulated",
        "VOICEALERT_SIMULATED_OUTCOMES": f"{PHONES[0]}=machine,{PHONES[1]}=press-1,*=completed",
        "VOICEALERT_SIMULATED_RING_S": "0.2",
        "VOICEALERT_SIMULATED_TALK_S": "0.6",
    })
    await make_group(db_conn)
    await start_worker(settings)
    await fire(settings, alert_id="sim", mode="sequential")

    await _status(db_conn, "sim", "acknowledged")
    rows = await calls_of(db_conn, "sim")
    assert [(r.answered_by, r.acknowledged_by) for r in rows[:2]] == [
        ("machine_start", None), ("human", "member1")]
    assert rows[2].status == "canceled"
    [alert] = await alert_rows(db_conn, "sim")
    assert alert["acknowledged_by"] == "member1"
