"""Status callbacks: whatever order, duplicates, or arrival before the create response, a
call ends in the right final state, never moves back, and costs the provider (almost) no
GET; a call whose callbacks never come is still followed to its end by the safety poll."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from testing.fake_twilio import FakeTwilio
from tests.helpers import PHONES, alert_status, calls_of, fire, make_group, wait_for
from worker import db
from worker.config import Settings, load_settings
from worker.models import CallStatus, StatusSource

RANK = {s: i for i, s in enumerate(CallStatus)}


async def _ended(db_conn: asyncpg.Connection, alert_id: str, count: int) -> None:
    async def done() -> bool:
        rows = await calls_of(db_conn, alert_id)
        return len(rows) == count and all(r.ended_at is not None for r in rows)

    await wait_for(done, what=f"{count} calls of {alert_id} ended")


@pytest.mark.parametrize(
    ("order", "duplicates", "before_create"),
    [
        ("in-order", False, False),
        ("reversed", False, False),
        ("shuffled", True, False),
        ("in-order", True, True),
    ],
)
async def test_callbacks_in_any_order_end_each_call_in_its_final_state(
    webhook_settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, start_web: Any, order: str, duplicates: bool, before_create: bool,
) -> None:
    fake_twilio.callback_order = order
    fake_twilio.callback_duplicates = duplicates
    fake_twilio.callbacks_before_create = before_create
    fake_twilio.set_outcome(PHONES[1], "busy")
    fake_twilio.set_outcome(PHONES[2], "no-answer")
    await make_group(db_conn, rounds=1)
    await start_web(webhook_settings)
    await start_worker(webhook_settings)
    await fire(webhook_settings, alert_id="cb")
    await _ended(db_conn, "cb", 3)

    rows = {r.phone: r for r in await calls_of(db_conn, "cb")}
    sids = {c.to: c.sid for c in fake_twilio.created_calls()}
    assert [rows[p].status for p in PHONES] == ["completed", "busy", "no-answer"]
    assert [rows[p].provider_sid for p in PHONES] == [sids[p] for p in PHONES]
    assert rows[PHONES[0]].duration_s == 1  # CallDuration of the completed callback
    for phone in PHONES:
        events = await db.call_events(db_conn, rows[phone].id)
        ranks = [RANK[e.status] for e in events]
        assert ranks == sorted(ranks), f"{phone} moved back: {[e.status for e in events]}"
        assert StatusSource.CALLBACK in {e.source for e in events}
        hooks = fake_twilio.status_callbacks(sid=sids[phone])
        assert hooks
        assert all(h.status == 200 for h in hooks)
        # initiated, ringing, (answered,) completed: SequenceNumber 0.. in firing order
        applied = await db_conn.fetchval(
            "SELECT callback_sequence FROM calls WHERE id = $1", rows[phone].id)
        assert applied == (3 if phone == PHONES[0] else 2)
    # Nobody pressed 1: with webhooks, only a keypress (or an ack) acknowledges.
    await wait_for(lambda: _status_is(db_conn, "cb", "unacknowledged"), what="unacknowledged")
    # Followed by callbacks alone: not one GET to the provider.
    assert fake_twilio.requests_of("fetch") == []


async def _status_is(db_conn: asyncpg.Connection, alert_id: str, status: str) -> bool:
    return await alert_status(db_conn, alert_id) == status


async def test_a_call_whose_callbacks_never_come_is_followed_to_its_end_by_polling(
    webhook_env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    # The public URL points at a web process that is not running: every callback fails.
    # The safety poll comes after ring timeout + margin (5 s here).
    settings = load_settings({**webhook_env, "VOICEALERT_RING_TIMEOUT_S": "5",
                              "VOICEALERT_POLL_MARGIN_S": "0"})
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker(settings)
    await fire(settings, alert_id="lost")
    await _ended(db_conn, "lost", 1)

    [row] = await calls_of(db_conn, "lost")
    assert row.status == "completed"
    assert {h.status for h in fake_twilio.status_callbacks()} == {0}  # none was received
    assert len(fake_twilio.requests_of("fetch")) == 1
    events = await db.call_events(db_conn, row.id)
    assert events[-1].source == StatusSource.POLL


async def test_provider_gets_per_call_fall_from_polling_to_at_most_two_with_callbacks(
    env: dict[str, str], webhook_env: dict[str, str], db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, start_worker: Any, start_web: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A call that rings 1 s and talks 2 s, followed once by polling, once by callbacks.
    fake_twilio.ring_s, fake_twilio.talk_s = 1.0, 2.0
    await make_group(db_conn, phones=PHONES[:1])
    polling = await start_worker(load_settings(env))
    await fire(load_settings(env), alert_id="polled")
    await _ended(db_conn, "polled", 1)
    await polling.stop()
    [polled] = fake_twilio.request_counts().values()

    settings = load_settings(webhook_env)
    await start_web(settings)
    await start_worker(settings)
    await fire(settings, alert_id="called-back")
    await _ended(db_conn, "called-back", 1)
    counts = fake_twilio.request_counts()
    [called_back] = [c for sid, c in counts.items()
                     if sid == (await calls_of(db_conn, "called-back"))[0].provider_sid]

    with capsys.disabled():
        print(f"\nprovider GETs per call (1 s ring, 2 s talk): polling {polled.gets}, "
              f"callbacks {called_back.gets}")
    assert called_back.gets <= 2
    assert polled.gets > called_back.gets
