"""Every call status change is on record in call_events, in order, with who made it."""

from __future__ import annotations

from typing import Any

import asyncpg
from arq.connections import ArqRedis

from testing.fake_twilio import FakeTwilio
from tests.helpers import PHONES, calls_of, fire, make_group, resolve, wait_for
from worker import db
from worker.config import Settings, load_settings
from worker.models import CallStatus, StatusSource
from worker.replay import replay

S, Src = CallStatus, StatusSource


async def history(conn: asyncpg.Connection, call_id: int) -> list[tuple[str, str]]:
    return [(e.status, e.source) for e in await db.call_events(conn, call_id)]


def rank(status: CallStatus) -> int:
    return list(CallStatus).index(status)


async def test_a_completed_call_has_its_whole_history_in_order(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker()
    await fire(settings, alert_id="db-down")

    async def completed() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return len(rows) == 1 and rows[0].status == S.COMPLETED

    await wait_for(completed, what="the call completed")
    call = (await calls_of(db_conn, "db-down"))[0]
    events = await db.call_events(db_conn, call.id)
    # Written by the worker: the row, the attempt, the provider's answer to the create POST.
    assert [(e.status, e.source) for e in events[:3]] == [
        (S.PENDING, Src.WORKER), (S.DIALING, Src.WORKER), (S.QUEUED, Src.WORKER),
    ]
    assert events[1].detail == "attempt 1"
    # Then what polling saw, ending at the call's final status.
    assert {e.source for e in events[3:]} == {Src.POLL}
    assert events[-1].status == S.COMPLETED
    assert [rank(e.status) for e in events] == sorted({rank(e.status) for e in events})
    assert [e.at for e in events] == sorted(e.at for e in events)


async def test_a_resolve_records_the_cancel_of_calls_pending_and_ringing(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    # At 0.2 calls/s the second member's slot is 5 s after the first: it is still pending
    # while the first rings (5 s) when the resolve comes.
    fake_twilio.ring_s = 5.0
    settings = load_settings({**env, "VOICEALERT_CALLS_PER_SECOND": "0.2"})
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="db-down")

    async def first_at_provider() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return len(rows) == 2 and rows[0].provider_sid is not None

    await wait_for(first_at_provider, what="the first call at the provider")
    await resolve(settings, "db-down")

    async def both_canceled() -> bool:
        return [r.status for r in await calls_of(db_conn, "db-down")] == [S.CANCELED] * 2

    await wait_for(both_canceled, what="both calls canceled")
    ringing, pending = await calls_of(db_conn, "db-down")
    first = await history(db_conn, ringing.id)
    assert first[:3] == [(S.PENDING, Src.WORKER), (S.DIALING, Src.WORKER),
                         (S.QUEUED, Src.WORKER)]
    assert first[-1] == (S.CANCELED, Src.CANCEL)
    assert await history(db_conn, pending.id) == [(S.PENDING, Src.WORKER),
                                                  (S.CANCELED, Src.CANCEL)]
    (canceled_event,) = (await db.call_events(db_conn, pending.id))[1:]
    assert canceled_event.detail == "alert resolved before the call was placed"


async def test_a_rejected_call_and_its_replay_record_the_error_and_the_operator(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    arq_redis: ArqRedis, start_worker: Any,
) -> None:
    fake_twilio.fail_number("+14155550199", code=21211)
    await make_group(db_conn, "ops", ["+14155550199"])
    await start_worker()
    await fire(settings, alert_id="api-5xx", group="ops")

    async def lettered() -> bool:
        return len(await db.list_dead_letters(db_conn)) == 1

    await wait_for(lettered, what="the rejected call lettered")
    (rejected,) = await calls_of(db_conn, "api-5xx")
    events = await db.call_events(db_conn, rejected.id)
    assert [(e.status, e.source) for e in events] == [
        (S.PENDING, Src.WORKER), (S.DIALING, Src.WORKER), (S.FAILED, Src.WORKER),
    ]
    assert (events[-1].detail or "").startswith("21211: ")

    await make_group(db_conn, "ops", ["+14155550100"])  # the number fixed
    (letter,) = await db.list_dead_letters(db_conn)
    await replay(db_conn, arq_redis, settings, letter)
    _, again = await calls_of(db_conn, "api-5xx")
    (created,) = await db.call_events(db_conn, again.id)
    assert (created.status, created.source) == (S.PENDING, Src.OPERATOR)
    assert created.detail == f"replay of dead letter {letter.id}"
