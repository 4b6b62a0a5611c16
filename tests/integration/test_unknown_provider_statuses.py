"""Provider statuses outside our vocabulary, through the real twilio client and a real worker.

The rule (worker/models.py ``provider_status``, worker/outcomes.py): a Twilio word that is
not a status of the Call resource is mapped to ours (``initiated`` → queued, ``answered`` →
in-progress); a word nobody documents counts as queued (the provider has the call) and the
call is followed until the provider says a status we know, or, at the poll's age bound (ring
timeout + margin while unanswered), it is failed with the word in its error message. Either
way the call never stays ``dialing`` and its alert moves on.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from testing.fake_twilio import FakeTwilio
from tests.helpers import alert_status, calls_of, fire, make_group, wait_for
from worker.config import load_settings
from worker.models import CallRow

PHONE = "+14155550177"
# The poll's age bound for an unanswered call: ring timeout + margin.
BOUND_ENV = {"VOICEALERT_RING_TIMEOUT_S": "5", "VOICEALERT_POLL_MARGIN_S": "0"}


async def the_call(conn: asyncpg.Connection, alert_id: str) -> CallRow | None:
    rows = await calls_of(conn, alert_id)
    return rows[0] if rows else None


def fetches(fake: FakeTwilio, sid: str) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and r.path.endswith(f"/{sid}.json"))


async def call_event_statuses(conn: asyncpg.Connection, call_id: int) -> list[str]:
    rows = await conn.fetch("SELECT status FROM call_events WHERE call = $1 ORDER BY id", call_id)
    return [r["status"] for r in rows]


@pytest.mark.parametrize(("word", "ours"), [("initiated", "queued"), ("answered", "in-progress")])
async def test_twilio_words_outside_the_call_resource_are_mapped_and_the_call_still_ends(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, word: str, ours: str,
) -> None:
    fake_twilio.report_status(PHONE, word)  # in the create answer and every fetch
    await make_group(db_conn, "one", [PHONE])
    settings = load_settings({**env, **BOUND_ENV})
    await start_worker(settings)
    await fire(settings, alert_id="mapped", group="one")

    async def mapped() -> bool:
        call = await the_call(db_conn, "mapped")
        return call is not None and call.status == ours and call.provider_sid is not None

    await wait_for(mapped, what=f"{word!r} recorded as {ours}")
    call = await the_call(db_conn, "mapped")
    assert call is not None
    assert call.provider_sid is not None
    await wait_for(lambda: _true(fetches(fake_twilio, call.provider_sid or "") >= 2),
                   what="the call followed while the provider says it")
    fake_twilio.report_status(PHONE, None)  # the real status again: completed

    async def completed() -> bool:
        call = await the_call(db_conn, "mapped")
        return call is not None and call.status == "completed"

    await wait_for(completed, what="the call completed")
    ended = await the_call(db_conn, "mapped")
    assert ended is not None
    assert ended.error_message is None
    assert ours in await call_event_statuses(db_conn, ended.id)
    assert len(fake_twilio.creates()) == 1


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("where", ["create", "fetch"])
async def test_an_undocumented_status_is_followed_until_the_provider_says_a_known_one(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, where: str,
) -> None:
    fake_twilio.ring_s = 2.0  # queued for a second: time to change the word before the end
    if where == "create":
        fake_twilio.report_status(PHONE, "pondering")
    await make_group(db_conn, "one", [PHONE])
    settings = load_settings({**env, **BOUND_ENV})
    await start_worker(settings)
    await fire(settings, alert_id="odd", group="one")

    async def placed() -> bool:
        call = await the_call(db_conn, "odd")
        return call is not None and call.provider_sid is not None and call.status == "queued"

    await wait_for(placed, what="the call out of 'dialing', as queued")
    call = await the_call(db_conn, "odd")
    assert call is not None
    assert call.provider_sid is not None
    sid = call.provider_sid
    if where == "fetch":
        fake_twilio.report_status(PHONE, "pondering")
    seen = fetches(fake_twilio, sid)
    await wait_for(lambda: _true(fetches(fake_twilio, sid) >= seen + 3),
                   what="the call followed while its status is unknown")
    still = await the_call(db_conn, "odd")
    assert still is not None
    assert still.status in ("queued", "ringing")
    fake_twilio.report_status(PHONE, None)

    async def completed() -> bool:
        call = await the_call(db_conn, "odd")
        return call is not None and call.status == "completed"

    await wait_for(completed, what="the call completed once the word is known")
    ended = await the_call(db_conn, "odd")
    assert ended is not None
    assert ended.error_message is None

    async def answered() -> bool:
        return await alert_status(db_conn, "odd") == "answered"

    await wait_for(answered, what="the alert answered")


@pytest.mark.parametrize("where", ["create", "fetch"])
async def test_an_undocumented_status_that_never_changes_fails_the_call_at_the_age_bound(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any, where: str,
) -> None:
    fake_twilio.ring_s = 1.0
    if where == "create":
        fake_twilio.report_status(PHONE, "exploded")
    await make_group(db_conn, "one", [PHONE])
    settings = load_settings({**env, **BOUND_ENV})
    await start_worker(settings)
    await fire(settings, alert_id="wedge", group="one")

    async def placed() -> bool:
        call = await the_call(db_conn, "wedge")
        return call is not None and call.provider_sid is not None

    await wait_for(placed, what="the call placed")
    if where == "fetch":
        fake_twilio.report_status(PHONE, "exploded")

    async def failed() -> bool:
        call = await the_call(db_conn, "wedge")
        return call is not None and call.status == "failed"

    await wait_for(failed, timeout=20, what="the call failed at the age bound")
    call = await the_call(db_conn, "wedge")
    assert call is not None
    assert call.error_message is not None
    assert "provider status 'exploded'" in call.error_message
    assert call.ended_at is not None
    # Not before the bound: ring timeout 5 s + margin 0 from the attempt (after the row).
    assert (call.ended_at - call.created_at).total_seconds() >= 5

    async def alert_failed() -> bool:
        return await alert_status(db_conn, "wedge") == "failed"

    await wait_for(alert_failed, what="the alert failed (its one call failed)")
    assert len(fake_twilio.creates()) == 1
