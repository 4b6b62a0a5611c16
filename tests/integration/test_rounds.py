"""Repeat until acknowledged: an alert whose round ends unacknowledged is called again after
the round delay, up to its rounds, then becomes ``unacknowledged``; a resolve or an ack
during the delay stops it; the next round is durable work, not a timer in a process."""

from __future__ import annotations

import itertools
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
    resolve,
    wait_for,
)
from worker.config import Settings


async def _status(db_conn: asyncpg.Connection, alert_id: str, wanted: str,
                  timeout: float = 15) -> None:  # noqa: ASYNC109 - a polling deadline
    async def reached() -> bool:
        return await alert_status(db_conn, alert_id) == wanted

    await wait_for(reached, timeout=timeout, what=f"alert {alert_id} {wanted}")


async def _waiting_for_round(db_conn: asyncpg.Connection, alert_id: str, round_: int) -> None:
    async def waiting() -> bool:
        rows = await alert_rows(db_conn, alert_id)
        return bool(rows) and rows[0]["round"] == round_ and rows[0]["next_round_at"] is not None

    await wait_for(waiting, what=f"round {round_} of {alert_id} over, the next one waiting")


async def test_nobody_acknowledging_gets_rounds_times_members_calls_then_unacknowledged(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="loud", rounds=3, round_delay_s=1)

    await _status(db_conn, "loud", "unacknowledged", timeout=30)
    rows = await calls_of(db_conn, "loud")
    assert [(r.round, r.phone, r.status) for r in rows] == [
        (round_, phone, "no-answer") for round_ in (1, 2, 3) for phone in PHONES[:2]]
    assert sorted(posted_to(fake_twilio)) == sorted(PHONES[:2] * 3)
    # Each round starts a round delay after the previous one ended.
    for earlier, later in itertools.pairwise((1, 2, 3)):
        ended = max(r.ended_at for r in rows if r.round == earlier and r.ended_at)
        started = min(r.created_at for r in rows if r.round == later)
        assert (started - ended).total_seconds() >= 0.9
    [alert] = await alert_rows(db_conn, "loud")
    assert (alert["round"], alert["rounds"], alert["next_round_at"]) == (3, 3, None)


async def test_a_sequential_alert_goes_down_the_list_once_per_round(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.default_outcome = "busy"
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="seq", mode="sequential", rounds=2, round_delay_s=0)

    await _status(db_conn, "seq", "unacknowledged")
    assert posted_to(fake_twilio) == PHONES[:2] * 2  # in order, one at a time, twice


async def test_the_groups_rounds_apply_unless_the_event_says_otherwise(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, phones=PHONES[:1], rounds=2, round_delay_s=0)
    await start_worker(settings)
    await fire(settings, alert_id="group-rounds")
    await fire(settings, alert_id="event-rounds", rounds=1)

    await _status(db_conn, "group-rounds", "unacknowledged")
    await _status(db_conn, "event-rounds", "unacknowledged")
    assert len(await calls_of(db_conn, "group-rounds")) == 2
    assert len(await calls_of(db_conn, "event-rounds")) == 1


async def test_a_resolve_during_the_round_delay_means_no_more_calls(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker(settings)
    await fire(settings, alert_id="quiet", rounds=3, round_delay_s=2)
    await _waiting_for_round(db_conn, "quiet", 1)

    await resolve(settings, "quiet")
    await _status(db_conn, "quiet", "resolved")
    [alert] = await alert_rows(db_conn, "quiet")
    assert alert["next_round_at"] is None
    await wait_for(lambda: _past(db_conn, 3), what="the round's due time passed")
    assert len(await calls_of(db_conn, "quiet")) == 1
    assert len(fake_twilio.creates()) == 1


async def _past(db_conn: asyncpg.Connection, seconds: float) -> bool:
    age = await db_conn.fetchval("SELECT extract(epoch FROM now() - max(ended_at)) FROM calls")
    return age is not None and float(age) > seconds


async def test_an_ack_during_the_round_delay_means_no_more_calls(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    from producers import AlertProducer

    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker(settings)
    await fire(settings, alert_id="taken", rounds=3, round_delay_s=2)
    await _waiting_for_round(db_conn, "taken", 1)

    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        await p.ack(alert_id="taken", acknowledged_by="carol")
    await _status(db_conn, "taken", "acknowledged")
    await wait_for(lambda: _past(db_conn, 3), what="the round's due time passed")
    assert len(await calls_of(db_conn, "taken")) == 1


async def test_without_a_public_url_a_human_answer_ends_the_rounds(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    fake_twilio.set_outcome(PHONES[1], "no-answer")
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="heard", rounds=3, round_delay_s=0)

    await _status(db_conn, "heard", "answered")

    async def ended() -> bool:
        return all(r.ended_at for r in await calls_of(db_conn, "heard"))

    await wait_for(ended, what="both calls ended")
    assert len(await calls_of(db_conn, "heard")) == 2
    assert await alert_status(db_conn, "heard") == "answered"


async def test_with_a_public_url_an_answer_without_a_keypress_does_not_end_the_rounds(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any,
) -> None:
    fake_twilio.play_twiml = True
    await make_group(db_conn, phones=PHONES[:1])
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="listened", rounds=2, round_delay_s=0)

    await _status(db_conn, "listened", "unacknowledged")
    rows = await calls_of(db_conn, "listened")
    assert [(r.round, r.status, r.answered_by) for r in rows] == [
        (1, "completed", "human"), (2, "completed", "human")]
