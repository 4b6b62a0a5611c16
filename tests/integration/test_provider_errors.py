"""Provider failures as Twilio produces them, through the real twilio client and a real worker.

The fake Twilio answers over HTTP with Twilio's own error bodies, so what is tested is what the
worker does with what the library actually raises: throttling is retried, ambiguous answers
(5xx, timeouts) are looked up before any re-POST, permanent refusals are POSTed once and
dead-lettered, stale alerts never ring, and retries are bounded.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import asyncpg

from schema import Member
from testing.fake_twilio import FakeTwilio, RecordedRequest
from tests.helpers import alert_status, calls_of, fire, make_group, wait_for
from worker import db
from worker.config import Settings, load_settings
from worker.models import AlertStatus, DeadLetter, NewAlert, StatusSource

GROUP_50 = [f"+1415555{n:04d}" for n in range(50)]


def _calls_path(request: RecordedRequest) -> bool:
    return request.path.endswith("/Calls.json")


def creates_to(fake: FakeTwilio, phone: str) -> list[RecordedRequest]:
    return [r for r in fake.creates() if r.form.get("To") == [phone]]


def lookups_of(fake: FakeTwilio, phone: str) -> list[RecordedRequest]:
    """List requests (GET Calls.json) filtered on this To number: the pre-re-POST lookup."""
    return [
        r for r in fake.requests
        if r.method == "GET" and _calls_path(r) and r.query.get("To") == [phone]
    ]


def ambiguous(request: RecordedRequest) -> bool:
    """A create whose answer does not say whether a call exists: 5xx, or no answer at all."""
    return request.status >= 500 or request.status == 0


def re_posts_without_lookup(fake: FakeTwilio, phones: list[str]) -> list[str]:
    """Phones re-POSTed after an ambiguous create with no lookup for them in between."""
    offenders = []
    for phone in phones:
        posts = sorted(creates_to(fake, phone), key=lambda r: r.at)
        lookups = [r.at for r in lookups_of(fake, phone)]
        for before, after in itertools.pairwise(posts):
            if ambiguous(before) and not any(before.at < at < after.at for at in lookups):
                offenders.append(phone)
    return offenders


def posts_per_call_report(fake: FakeTwilio, phones: list[str], label: str) -> Counter[int]:
    per_call = Counter(len(creates_to(fake, p)) for p in phones)
    total = sum(n * count for n, count in per_call.items())
    statuses = Counter(r.status for r in fake.creates())
    # The figure the issue asks to report (shown with pytest -s).
    print(
        f"\n[{label}] create POSTs per call: mean {total / len(phones):.2f}, "
        f"max {max(per_call)}, distribution {dict(sorted(per_call.items()))}, "
        f"answers {dict(sorted(statuses.items()))}"
    )
    return per_call


async def all_calls(conn: asyncpg.Connection, alert_id: str, n: int, status: str) -> bool:
    rows = await calls_of(conn, alert_id)
    return len(rows) == n and all(r.status == status for r in rows)


async def call_letters(conn: asyncpg.Connection) -> list[DeadLetter]:
    return await db.list_dead_letters(conn, source="call")


# --- throttling and ambiguous 5xx -------------------------------------------------------------


async def test_5xx_that_created_the_call_is_adopted_after_lookup_and_never_rings_twice(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    fake_twilio.error_rate_5xx = 0.3
    fake_twilio.error_rate_429 = 0.1
    fake_twilio.create_on_5xx = True  # the 5xx is a lie: the call was created
    await make_group(db_conn, "big", GROUP_50)
    await start_worker()
    await fire(settings, alert_id="storm", group="big")

    async def completed() -> bool:
        return await all_calls(db_conn, "storm", 50, "completed")

    await wait_for(completed, timeout=60, what="50 calls completed")
    per_call = posts_per_call_report(fake_twilio, GROUP_50, "5xx created the call")

    answers = Counter(r.status for r in fake_twilio.creates())
    assert answers[429] > 0  # the storm really happened
    assert answers[500] + answers[503] > 0
    rows = await calls_of(db_conn, "storm")
    assert all(r.provider_sid for r in rows)
    assert len({r.provider_sid for r in rows}) == 50

    # The provider holds exactly one call per member: every 5xx-created call was adopted.
    created = fake_twilio.created_calls()
    assert sorted({c.to for c in created}) == sorted(GROUP_50)
    duplicates = len(created) - 50
    assert duplicates == 0
    assert {c.sid for c in created} == {r.provider_sid for r in rows}
    assert sum(r.possible_duplicates for r in rows) == 0

    # Every ambiguous create was followed by a lookup, and none was re-POSTed.
    assert re_posts_without_lookup(fake_twilio, GROUP_50) == []
    for phone in GROUP_50:
        posts = sorted(creates_to(fake_twilio, phone), key=lambda r: r.at)
        fivexx = [p for p in posts if ambiguous(p)]
        if fivexx:
            assert posts[-1] is fivexx[-1], f"{phone} re-POSTed after a 5xx that made a call"
            assert any(g.at > fivexx[-1].at for g in lookups_of(fake_twilio, phone))
    assert sum(per_call.values()) == 50
    assert await alert_status(db_conn, "storm") == "answered"


async def test_5xx_without_a_call_is_looked_up_then_re_posted_and_counted_as_possible_duplicate(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    fake_twilio.error_rate_5xx = 0.3
    fake_twilio.error_rate_429 = 0.1
    fake_twilio.create_on_5xx = False  # the 5xx is honest: nothing was created
    # 40 % of creates fail here; enough attempts that no member can plausibly run out.
    await start_worker(load_settings({**env, "VOICEALERT_MAX_CALL_ATTEMPTS": "20"}))
    await make_group(db_conn, "big", GROUP_50)
    await fire(load_settings(env), alert_id="storm", group="big")

    async def completed() -> bool:
        return await all_calls(db_conn, "storm", 50, "completed")

    await wait_for(completed, timeout=60, what="50 calls completed")
    posts_per_call_report(fake_twilio, GROUP_50, "5xx created nothing")

    rows = {r.phone: r for r in await calls_of(db_conn, "storm")}
    assert all(r.provider_sid for r in rows.values())
    created = fake_twilio.created_calls()
    assert sorted(c.to for c in created) == sorted(GROUP_50)  # one call each, none twice
    assert re_posts_without_lookup(fake_twilio, GROUP_50) == []

    re_posted = 0
    for phone in GROUP_50:
        fivexx = [p for p in creates_to(fake_twilio, phone) if ambiguous(p)]
        # Each 5xx led to a lookup that found nothing, then a re-POST that may have rung
        # twice had the provider's list lagged: each is counted on the call.
        assert rows[phone].possible_duplicates == len(fivexx), phone
        assert len(lookups_of(fake_twilio, phone)) >= len(fivexx)
        re_posted += len(fivexx)
    assert re_posted >= 1
    assert sum(r.possible_duplicates for r in rows.values()) == re_posted


# --- permanent refusals -----------------------------------------------------------------------


async def test_rejected_numbers_are_posted_once_failed_with_code_and_dead_lettered(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    refusals = {
        "+14155550100": (21211, "The 'To' number +14155550100 is not a valid phone number."),
        "+14155550101": (21215, "Account not authorized to call +14155550101. Perhaps you "
                                "need to enable some international permissions"),
        "+14155550102": (21217, "Phone number does not appear to be valid"),
    }
    for phone, (code, message) in refusals.items():
        fake_twilio.fail_number(phone, http_status=400, code=code, message=message)
    await make_group(db_conn, "oncall", list(refusals))
    await start_worker()
    await fire(settings, alert_id="bad-numbers")

    async def all_lettered() -> bool:
        return len(await call_letters(db_conn)) == 3

    await wait_for(all_lettered, what="three call dead letters")
    await wait_for(lambda: _alert_is(db_conn, "bad-numbers", "failed"), what="alert failed")

    rows = {r.phone: r for r in await calls_of(db_conn, "bad-numbers")}
    letters = {letter.call: letter for letter in await call_letters(db_conn)}
    for phone, (code, message) in refusals.items():
        row = rows[phone]
        assert [p.status for p in creates_to(fake_twilio, phone)] == [400]
        assert lookups_of(fake_twilio, phone) == []
        assert (row.status, row.error_code, row.attempts) == ("failed", code, 1)
        assert message in (row.error_message or "")  # the client prefixes "Unable to..."
        assert row.provider_sid is None
        letter = letters[row.id]
        assert (letter.source, letter.reason) == ("call", "provider_rejected")
        assert str(code) in (letter.error or "")
        assert letter.payload["phone"] == phone
        assert letter.payload["code"] == code
    assert fake_twilio.created_calls() == []


async def test_wrong_auth_token_fails_every_call_after_one_post_each_without_leaking_it(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    wrong = "not-the-token-0123456789"
    await start_worker(load_settings({**env, "TWILIO_AUTH_TOKEN": wrong}))
    await make_group(db_conn)
    await fire(load_settings(env), alert_id="auth")

    async def all_lettered() -> bool:
        return len(await call_letters(db_conn)) == 3

    await wait_for(all_lettered, what="three call dead letters")
    await wait_for(lambda: _alert_is(db_conn, "auth", "failed"), what="alert failed")

    assert sorted(r.status for r in fake_twilio.creates()) == [401, 401, 401]
    assert len({r.form["To"][0] for r in fake_twilio.creates()}) == 3
    rows = await calls_of(db_conn, "auth")
    assert all((r.status, r.error_code, r.attempts) == ("failed", 20003, 1) for r in rows)
    letters = await call_letters(db_conn)
    assert sorted(letter.call or 0 for letter in letters) == sorted(r.id for r in rows)
    assert all(letter.reason == "provider_rejected" for letter in letters)
    assert all(wrong not in repr(letter.to_json()) for letter in letters)


async def _alert_is(conn: asyncpg.Connection, alert_id: str, status: str) -> bool:
    return await alert_status(conn, alert_id) == status


# --- a provider that never answers ------------------------------------------------------------


async def test_hung_create_times_out_within_bound_then_lookup_adopts_the_call_it_made(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    phone = "+14155550100"
    fake_twilio.hang_creates = True
    await start_worker(load_settings({**env, "VOICEALERT_PROVIDER_TIMEOUT_S": "1"}))
    await make_group(db_conn, "oncall", [phone])
    await fire(load_settings(env), alert_id="hang")

    async def posted() -> bool:
        return len(fake_twilio.creates()) >= 1

    await wait_for(posted, what="first create POST")
    fake_twilio.hang_creates = False  # later creates would answer (there must be none)

    async def placed() -> bool:
        rows = await calls_of(db_conn, "hang")
        return bool(rows and rows[0].provider_sid and rows[0].status == "completed")

    await wait_for(placed, what="call adopted and completed")

    (post,) = fake_twilio.creates()
    assert post.status == 0  # the provider never answered it
    lookups = lookups_of(fake_twilio, phone)
    assert lookups, "no lookup after the timed-out create"
    waited = lookups[0].at - post.at
    print(f"\n[hang] create timed out and was looked up after {waited:.2f}s")
    # The attempt was abandoned at the 1 s bound (plus retry backoff and job pickup).
    assert 0.9 <= waited <= 2.0
    (created,) = fake_twilio.created_calls()
    (row,) = await calls_of(db_conn, "hang")
    assert row.provider_sid == created.sid
    assert (row.attempts, row.possible_duplicates) == (1, 0)


# --- stale alerts and exhausted retries -------------------------------------------------------


async def _alert_with_calls(
    conn: asyncpg.Connection, alert_id: str, phones: list[str]
) -> list[int]:
    members = [Member(name=f"member{i}", phone=p) for i, p in enumerate(phones)]
    alert = NewAlert(
        tenant="default", alert_id=alert_id, event_key=f"event:{alert_id}", group_name="oncall",
        message="Primary database is down", mode="parallel", status=AlertStatus.CALLING,
        dedup_window_s=300, metadata={}, event_id=alert_id, stream_id="0-1",
    )
    stored = await db.create_alert(conn, alert, members, StatusSource.WORKER)
    return [c.id for c in stored.calls]


async def test_call_of_alert_older_than_max_age_is_dead_lettered_as_stale_and_never_dialed(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    worker = await start_worker(load_settings({**env, "VOICEALERT_MAX_CALL_AGE_S": "60"}))
    stale_ids = await _alert_with_calls(db_conn, "old-news", ["+14155550100"])
    fresh_ids = await _alert_with_calls(db_conn, "news", ["+14155550101"])
    # The job ran late (a backlog, a replica down): its alert is two minutes old by now.
    await db_conn.execute(
        "UPDATE alerts SET received_at = now() - interval '120 seconds' WHERE alert_id = $1",
        "old-news",
    )
    await worker.services.schedule_calls(stale_ids + fresh_ids)

    async def settled() -> bool:
        letters = await call_letters(db_conn)
        fresh = await calls_of(db_conn, "news")
        return len(letters) == 1 and fresh[0].status == "completed"

    await wait_for(settled, what="stale call lettered and fresh call completed")

    assert [r.form["To"][0] for r in fake_twilio.creates()] == ["+14155550101"]
    (letter,) = await call_letters(db_conn)
    assert (letter.reason, letter.call) == ("stale", stale_ids[0])
    assert letter.error
    (row,) = await calls_of(db_conn, "old-news")
    assert (row.status, row.attempts, row.provider_sid) == ("failed", 0, None)
    assert await alert_status(db_conn, "old-news") == "failed"


async def test_call_throttled_on_every_attempt_stops_after_max_attempts_and_is_dead_lettered(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    phone = "+14155550100"
    fake_twilio.error_rate_429 = 1.0
    await start_worker(load_settings({**env, "VOICEALERT_MAX_CALL_ATTEMPTS": "3"}))
    await make_group(db_conn, "oncall", [phone])
    await fire(load_settings(env), alert_id="throttled")

    async def lettered() -> bool:
        return len(await call_letters(db_conn)) == 1

    await wait_for(lettered, what="exhausted call lettered")

    assert [r.status for r in creates_to(fake_twilio, phone)] == [429, 429, 429]
    assert lookups_of(fake_twilio, phone) == []  # a 429 created nothing: no lookup needed
    (letter,) = await call_letters(db_conn)
    (row,) = await calls_of(db_conn, "throttled")
    assert (letter.reason, letter.call, letter.attempts) == ("exhausted", row.id, 3)
    assert (row.status, row.attempts, row.error_code) == ("failed", 3, 20429)

    async def alert_failed() -> bool:  # decided just after the letter is written
        return await alert_status(db_conn, "throttled") == "failed"

    await wait_for(alert_failed, what="the alert failed")
    assert fake_twilio.created_calls() == []


# --- a provider incident: retried until the call's age bound, not a small count --------------

INCIDENT = [(503, 20503, "Service Unavailable"), (429, 20429, "Too Many Requests")] * 8


async def test_call_failing_more_times_than_the_old_attempt_limit_still_rings_once_recovered(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    phone = "+14155550100"
    fake_twilio.fail_next_creates(phone, INCIDENT)  # 16 failures in a row: twice the old 8
    settings = load_settings(env)  # the default attempt guard
    assert settings.max_call_attempts > len(INCIDENT)
    await start_worker(settings)
    await make_group(db_conn, "oncall", [phone])
    await fire(settings, alert_id="incident")

    async def completed() -> bool:
        return await all_calls(db_conn, "incident", 1, "completed")

    await wait_for(completed, timeout=60, what="the call completed after the incident")
    answers = [r.status for r in creates_to(fake_twilio, phone)]
    assert answers == [503, 429] * 8 + [201]
    assert len(fake_twilio.created_calls()) == 1
    assert await call_letters(db_conn) == []
    (row,) = await calls_of(db_conn, "incident")
    assert row.attempts == len(INCIDENT) + 1


async def test_call_throttled_until_its_age_bound_is_lettered_stale_not_exhausted(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    phone = "+14155550100"
    fake_twilio.error_rate_429 = 1.0
    settings = load_settings({**env, "VOICEALERT_MAX_CALL_AGE_S": "4"})
    await start_worker(settings)
    await make_group(db_conn, "oncall", [phone])
    await fire(settings, alert_id="throttled")

    async def lettered() -> bool:
        return len(await call_letters(db_conn)) == 1

    await wait_for(lettered, timeout=30, what="the call lettered at its age bound")
    (letter,) = await call_letters(db_conn)
    (row,) = await calls_of(db_conn, "throttled")
    assert letter.reason == "stale"
    assert row.status == "failed"
    # Retried for the whole age bound (backoff capped at 0.5 s here), well past the old 8.
    assert row.attempts > 8
    assert row.ended_at is not None
    assert (row.ended_at - row.created_at).total_seconds() >= 4
    assert fake_twilio.created_calls() == []
