"""Chunk jobs: calls whose rate slots fall close together are placed by one place_call job
and followed by one poll job, each call by its own rules (worker/jobs.py, "Chunks").

The jobs run by hand against the real Redis, Postgres and the fake Twilio, as a worker runs
them; what matters is what each call gets: one POST at most, its own job for what the chunk
left, and no second job running beside the chunk's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix

from schema import Member
from testing.fake_twilio import FakeTwilio
from tests.helpers import posted_to
from worker import db
from worker.app import close_services, open_services
from worker.calls import place_calls
from worker.config import Settings
from worker.models import AlertStatus, CallStatus, CallUpdate, NewAlert, StatusSource
from worker.outcomes import poll_calls
from worker.queue import (
    ScheduledJob,
    chunk_calls,
    chunk_job_id,
    chunked_calls,
    enqueue_many,
    job_id,
    json_deserializer,
)
from worker.services import CHUNK_MAX, CHUNK_SPAN_MS, Services, call_chunks


@pytest.fixture
async def services(settings: Settings, arq_redis: ArqRedis) -> AsyncIterator[Services]:
    opened = await open_services(settings, arq_redis)
    yield opened
    await close_services(opened)


def _alert(alert_id: str) -> NewAlert:
    return NewAlert(tenant="default", alert_id=alert_id, event_key=f"event:{alert_id}",
                    group_name="oncall", message="m", mode="parallel",
                    status=AlertStatus.CALLING, dedup_window_s=0, metadata={},
                    event_id=alert_id, stream_id="1-0")


async def stored(conn: asyncpg.Connection, alert_id: str, phones: list[str]) -> list[int]:
    members = [Member(name=f"m{i}", phone=p) for i, p in enumerate(phones)]
    result = await db.create_alert(conn, _alert(alert_id), members, StatusSource.WORKER)
    return [c.id for c in result.calls]


def chunk_of(call_ids: list[int]) -> list[list[int]]:
    now_ms = int(time.time() * 1000)
    return [[cid, now_ms] for cid in call_ids]


PHONES = [f"+1415555{n:04d}" for n in range(300, 304)]


def test_a_chunk_job_id_names_its_calls() -> None:
    jid = chunk_job_id("p:", "calls", [9, 3, 1, 2, 5])
    assert jid == "p:calls:1-3,5,9"
    assert chunk_calls("p:", jid) == ("call", [1, 2, 3, 5, 9])
    assert chunk_calls("p:", "p:polls:7") == ("poll", [7])
    assert chunk_calls("p:", job_id("p:", "call", 7)) is None
    assert chunk_calls("p:", "p:calls:1-x") is None


def test_calls_are_chunked_by_how_close_their_slots_are() -> None:
    # Slots 5 ms apart (200 calls/s): within the span, up to the chunk size.
    ids = list(range(1, 2 * CHUNK_MAX + 2))
    slots = [1_000_000 + 5 * i for i in range(len(ids))]
    chunks = call_chunks(ids, slots)
    assert all(c[-1][1] - c[0][1] <= CHUNK_SPAN_MS and len(c) <= CHUNK_MAX for c in chunks)
    assert [cid for c in chunks for cid, _ in c] == ids
    # One call per second: every call a job of its own, at its own slot.
    assert call_chunks([1, 2, 3], [0, 1000, 2000]) == [[(1, 0)], [(2, 1000)], [(3, 2000)]]


async def test_a_chunk_places_each_call_once_and_follows_them_with_one_poll_job(
    services: Services, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
) -> None:
    fake_twilio.ring_s = 30.0
    calls = await stored(db_conn, "chunk", PHONES)
    assert await place_calls({"services": services}, chunk_of(calls)) == "4 placed"
    assert sorted(posted_to(fake_twilio)) == PHONES
    rows = await db.list_calls(db_conn, alert_id="chunk")
    assert {r.status for r in rows} == {CallStatus.QUEUED}
    assert all(r.provider_sid for r in rows)
    covered = await chunked_calls(services.redis, services.keys.queue, services.keys.prefix)
    assert covered["poll"] == set(calls)
    for cid in calls:  # no job of its own, and the chunk let go of every call
        jid = job_id(services.keys.prefix, "poll", cid)
        assert not await services.redis.exists(job_key_prefix + jid)
        own = in_progress_key_prefix + job_id(services.keys.prefix, "call", cid)
        assert not await services.redis.exists(own)
    # Run again (a redelivered job): every call is placed already; nothing is POSTed again.
    assert await place_calls({"services": services}, chunk_of(calls)) == "4 already-placed"
    assert len(fake_twilio.creates()) == 4


async def test_the_poll_job_of_a_chunk_follows_the_calls_still_live(
    services: Services, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
) -> None:
    fake_twilio.ring_s = 30.0
    calls = await stored(db_conn, "polled", PHONES[:3])
    await place_calls({"services": services}, chunk_of(calls))
    await db.advance_call(db_conn, calls[0], CallUpdate(
        status=CallStatus.FAILED, source=StatusSource.WORKER, error_message="gone"))
    ctx: dict[str, Any] = {"services": services}
    assert await poll_calls(ctx, calls) == "2 following"
    assert ctx["voicealert.run_again_arg"] == calls[1:]


async def test_a_chunk_leaves_a_call_whose_own_job_is_queued_or_running(
    services: Services, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
) -> None:
    queued, running, free = await stored(db_conn, "owned", PHONES[:3])
    later = int(time.time() * 1000) + 60_000
    await enqueue_many(services.redis, services.keys.queue, [ScheduledJob(
        "place_call", job_id(services.keys.prefix, "call", queued), (queued,), later)],
        expires_ms=120_000)
    running_key = in_progress_key_prefix + job_id(services.keys.prefix, "call", running)
    await services.redis.set(running_key, "1", px=10_000)

    assert await place_calls({"services": services}, chunk_of([queued, running, free])) == (
        "1 placed")
    assert posted_to(fake_twilio) == [PHONES[2]]
    statuses = {r.id: r.status for r in await db.list_calls(db_conn, alert_id="owned")}
    assert statuses[queued] == statuses[running] == CallStatus.PENDING
    assert await services.redis.exists(running_key)  # not the chunk's to let go


async def test_two_calls_of_a_chunk_to_one_number_ring_one_at_a_time(
    services: Services, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
) -> None:
    fake_twilio.ring_s = 30.0
    first, second = await stored(db_conn, "same-number", [PHONES[0], PHONES[0]])
    result = await place_calls({"services": services}, chunk_of([first, second]))
    assert result == "1 placed, 1 waiting"
    assert posted_to(fake_twilio) == [PHONES[0]]
    rows = {r.id: r for r in await db.list_calls(db_conn, alert_id="same-number")}
    waiting = first if rows[first].status == CallStatus.PENDING else second
    # The call left waiting for its number goes on in its own job, taking a fresh slot.
    raw = await services.redis.get(
        job_key_prefix + job_id(services.keys.prefix, "call", waiting))
    assert raw is not None
    payload = json_deserializer(raw)
    assert payload["a"] == [waiting]
    assert payload["k"] == {"slot": False}


async def test_what_the_provider_said_about_several_calls_is_recorded_as_one_at_a_time_would(
    db_conn: asyncpg.Connection,
) -> None:
    first, second, merged = await stored(db_conn, "observed", PHONES[:3])
    for call_id in (first, second):
        await db.start_attempt(db_conn, call_id, StatusSource.WORKER)
    await db_conn.execute("UPDATE calls SET merged_into = $1, status = 'dialing' WHERE id = $2",
                          second, merged)
    [alert] = await db_conn.fetch("SELECT id FROM alerts WHERE alert_id = 'observed'")
    recorded = await db.record_observed_calls(db_conn, [
        db.Observation(first, "CA1", CallStatus.QUEUED),
        db.Observation(second, "CA2", CallStatus.IN_PROGRESS, "human"),
    ], StatusSource.POLL)
    assert recorded == {first: (AlertStatus.CALLING, [alert["id"]], False),
                        second: (AlertStatus.CALLING, [alert["id"]], True)}
    rows = {r["id"]: r for r in await db_conn.fetch(
        "SELECT id, status, provider_sid, answered_by FROM calls")}
    assert (rows[first]["status"], rows[first]["provider_sid"]) == ("queued", "CA1")
    for call_id in (second, merged):  # the merged row moves with its call
        assert tuple(rows[call_id].values())[1:] == ("in-progress", "CA2", "human")
        assert [e.status for e in await db.call_events(db_conn, call_id)][-1] == "in-progress"

    # The same word again changes nothing; a status behind does not move a call back.
    events = await db_conn.fetchval("SELECT count(*) FROM call_events")
    again = await db.record_observed_calls(db_conn, [
        db.Observation(second, "CA2", CallStatus.IN_PROGRESS, "human"),
        db.Observation(first, "CA1", CallStatus.DIALING),
    ], StatusSource.POLL)
    assert again == {first: (AlertStatus.CALLING, [], False),
                     second: (AlertStatus.CALLING, [], False)}
    assert await db_conn.fetchval("SELECT count(*) FROM call_events") == events
    assert await db_conn.fetchval("SELECT status FROM calls WHERE id = $1", first) == "queued"
