"""Press 1 to acknowledge: the fake Twilio plays our TwiML, presses the key inside the
``<Gather>`` and POSTs the digit, signed, to the web application, which acknowledges the
alert; the other calls are hung up or canceled, and nobody else is called."""

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


async def _acknowledged(db_conn: asyncpg.Connection, alert_id: str) -> None:
    async def done() -> bool:
        return await alert_status(db_conn, alert_id) == "acknowledged"

    await wait_for(done, what=f"alert {alert_id} acknowledged")


async def test_press_1_in_parallel_hangs_up_ringing_calls_and_cancels_pending_ones(
    webhook_env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    # 0.5 calls/s: member 1 is dialed at ~2 s and rings until ~5 s, member 2's slot is ~4 s;
    # member 0 answers at 3 s and presses 1 at once.
    settings = load_settings({**webhook_env, "VOICEALERT_CALLS_PER_SECOND": "0.5"})
    fake_twilio.play_twiml = True
    fake_twilio.ring_s = 3.0
    fake_twilio.set_outcome(PHONES[1], "no-answer")
    fake_twilio.press(PHONES[0], "1", at_s=0.05)
    await make_group(db_conn)
    await start_web(settings)
    await start_worker(settings)
    await fire(settings, alert_id="db-down")

    await _acknowledged(db_conn, "db-down")

    async def others_ended() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return [r.status for r in rows[1:]] == ["canceled", "canceled"]

    await wait_for(others_ended, what="member 1 hung up, member 2 canceled")
    rows = await calls_of(db_conn, "db-down")
    assert rows[0].acknowledged_by == "member0"
    assert rows[0].acknowledged_at is not None
    assert [r.acknowledged_at for r in rows[1:]] == [None, None]
    [alert] = await alert_rows(db_conn, "db-down")
    assert alert["acknowledged_by"] == "member0"
    assert alert["acknowledged_at"] is not None
    assert posted_to(fake_twilio) == PHONES[:2]  # member 2 never dialed
    calls = {c.to: c for c in fake_twilio.created_calls()}
    assert calls[PHONES[1]].status == "canceled"
    [press] = fake_twilio.gather_requests(to=PHONES[0])
    assert (press.params["Digits"], press.status) == ("1", 200)
    assert "Acknowledged. Thank you." in fake_twilio.spoken(calls[PHONES[0]].sid)
    assert fake_twilio.application_errors() == []


async def test_press_1_in_sequential_calls_no_further_member(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    fake_twilio.play_twiml = True
    fake_twilio.press(PHONES[0], "1", at_s=0.05)
    await make_group(db_conn)
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="seq", mode="sequential")

    await _acknowledged(db_conn, "seq")

    async def rest_canceled() -> bool:
        rows = await calls_of(db_conn, "seq")
        return [r.status for r in rows[1:]] == ["canceled", "canceled"]

    await wait_for(rest_canceled, what="the later members canceled")
    assert posted_to(fake_twilio) == PHONES[:1]
    assert fake_twilio.application_errors() == []


async def test_an_answer_without_a_keypress_moves_a_sequential_alert_on(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    # Member 0 picks up and listens to the end without pressing; member 1 presses 1.
    fake_twilio.play_twiml = True
    fake_twilio.press(PHONES[1], "1", at_s=0.05)
    await make_group(db_conn, phones=PHONES[:2])
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="seq", mode="sequential")

    await _acknowledged(db_conn, "seq")

    async def both_ended() -> bool:
        rows = await calls_of(db_conn, "seq")
        return [r.status for r in rows] == ["completed", "completed"]

    await wait_for(both_ended, what="both calls ended")
    rows = await calls_of(db_conn, "seq")
    assert [r.acknowledged_by for r in rows] == [None, "member1"]
    assert posted_to(fake_twilio) == PHONES[:2]


async def test_a_keypress_during_the_first_sentence_counts(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    fake_twilio.play_twiml = True
    fake_twilio.seconds_per_char = 0.005  # the introduction lasts ~0.17 s
    fake_twilio.press(PHONES[0], "1", at_s=0.02)
    await make_group(db_conn, phones=PHONES[:1])
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="early")

    await _acknowledged(db_conn, "early")
    [call] = fake_twilio.created_calls()

    async def confirmed() -> bool:  # the fake logs a sentence once it has been said
        return fake_twilio.spoken(call.sid)[-1:] == ["Acknowledged. Thank you."]

    await wait_for(confirmed, what="the confirmation said")
    said = fake_twilio.spoken(call.sid)
    assert said[0].startswith("This is an alert from voice alert.")
    assert "interrupted" in said[0]  # the key cut the introduction short
    assert "Primary database is down" not in " ".join(said)
    assert said[-1] == "Acknowledged. Thank you."


async def test_another_key_plays_the_message_again_and_acknowledges_nothing(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    fake_twilio.play_twiml = True
    fake_twilio.press(PHONES[0], "7", at_s=0.05)
    await make_group(db_conn, phones=PHONES[:1])
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="seven", message="Disk full on db-1")

    async def ended() -> bool:
        rows = await calls_of(db_conn, "seven")
        return bool(rows) and rows[0].status == "completed"

    await wait_for(ended, what="the call ended")
    [press] = fake_twilio.gather_requests()
    assert press.params["Digits"] == "7"
    assert "Disk full on db-1" in press.body
    assert "<Gather" in press.body
    [call] = fake_twilio.created_calls()
    said = fake_twilio.spoken(call.sid)
    replayed = said[said.index("Disk full on db-1") - 1:]  # from the replayed introduction on
    assert replayed[0] == "This is an alert from voice alert."
    assert replayed.count("Disk full on db-1") == 2
    assert (await calls_of(db_conn, "seven"))[0].acknowledged_at is None
    assert await alert_status(db_conn, "seven") != "acknowledged"
    assert fake_twilio.application_errors() == []


async def test_a_keypress_the_database_cannot_record_still_gets_a_spoken_answer(
    webhook_env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    # The web process's Postgres is unreachable (nothing listens on port 1); the worker's is
    # fine. The caller must hear a sentence, never "an application error has occurred".
    settings = load_settings(webhook_env)
    broken_web = load_settings({**webhook_env,
                                "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"})
    fake_twilio.play_twiml = True
    fake_twilio.press(PHONES[0], "1", at_s=0.05)
    await make_group(db_conn, phones=PHONES[:1])
    await start_web(broken_web)
    await start_worker(settings)
    await fire(settings, alert_id="no-db")

    async def pressed() -> bool:
        return bool(fake_twilio.gather_requests())

    await wait_for(pressed, what="the keypress posted")
    [press] = fake_twilio.gather_requests()
    assert press.status == 200
    assert "could not be recorded" in press.body
    assert fake_twilio.application_errors() == []
    assert (await calls_of(db_conn, "no-db"))[0].acknowledged_at is None


async def test_without_a_public_url_calls_carry_no_gather_and_no_callbacks(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker(settings)
    await fire(settings, alert_id="plain")

    async def answered() -> bool:
        return await alert_status(db_conn, "plain") == "answered"

    await wait_for(answered, what="answered (a human answering stands in for an ack)")
    [create] = fake_twilio.creates()
    assert "<Gather" not in create.form["Twiml"][0]
    assert "StatusCallback" not in create.form
