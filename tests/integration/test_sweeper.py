"""The sweeper makes Redis agree with Postgres (worker/sweeper.py; issue 7, item 3).

Each test leaves Postgres with work whose job Redis no longer has (deleted from this test's
own keys, as a Redis restart without persistence would), runs a sweep, and checks what was
re-created, and that nothing live was touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix

from schema import Member
from testing.fake_twilio import FakeTwilio
from tests.helpers import fire, make_group, wait_for
from worker import db
from worker.app import close_services, open_services
from worker.config import Settings, load_settings
from worker.models import (
    AlertStatus,
    CallStatus,
    CallUpdate,
    NewAlert,
    StatusSource,
    UnfinishedCall,
)
from worker.queue import chunked_calls, job_id, live_jobs
from worker.services import Services
from worker.sweeper import Sweeper, expected_job

PHONES = [f"+1415555{n:04d}" for n in range(200, 204)]


@pytest.fixture
async def services(settings: Settings, arq_redis: ArqRedis) -> AsyncIterator[Services]:
    opened = await open_services(settings, arq_redis)
    yield opened
    await close_services(opened)


def alert(alert_id: str, mode: str = "parallel", window: int = 0) -> NewAlert:
    return NewAlert(tenant="default", alert_id=alert_id, event_key=f"event:{alert_id}",
                    group_name="g", message="m", mode=mode, status=AlertStatus.CALLING,
                    dedup_window_s=window, metadata={}, event_id=alert_id, stream_id="1-0")


async def stored(conn: asyncpg.Connection, alert_id: str, mode: str = "parallel",
                 window: int = 0) -> list[int]:
    """An alert with one pending call per phone, written 10 s ago (settled), no job."""
    members = [Member(name=f"m{i}", phone=p) for i, p in enumerate(PHONES)]
    result = await db.create_alert(conn, alert(alert_id, mode, window), members,
                                   StatusSource.WORKER)
    await conn.execute("UPDATE calls SET updated_at = now() - interval '10 s'"
                       " WHERE alert = $1", result.id)
    await conn.execute("UPDATE alerts SET updated_at = now() - interval '10 s',"
                       " received_at = now() - interval '10 s' WHERE id = $1", result.id)
    return [c.id for c in result.calls]


async def jobs(s: Services, kind: str, ids: list[int]) -> set[int]:
    """Which of these calls have a job of ``kind``: their own, or a chunk's."""
    ids_by_job = {job_id(s.keys.prefix, kind, i): i for i in ids}
    own = {ids_by_job[j] for j in await live_jobs(s.redis, list(ids_by_job))}
    chunked = await chunked_calls(s.redis, s.keys.queue, s.keys.prefix)
    return own | (chunked.get(kind, set()) & set(ids))


def test_which_job_follows_which_call() -> None:
    def call(status: CallStatus, mode: str = "parallel", merged: int | None = None) -> Any:
        return UnfinishedCall(id=1, alert=1, position=0, status=status, merged_into=merged,
                              idle_s=60, mode=mode, alert_status=AlertStatus.CALLING)

    assert expected_job(call(CallStatus.PENDING)) == "call"
    assert expected_job(call(CallStatus.PENDING, "sequential")) is None  # its alert decides
    assert expected_job(call(CallStatus.DIALING, "sequential")) == "call"
    for status in (CallStatus.QUEUED, CallStatus.RINGING, CallStatus.IN_PROGRESS):
        assert expected_job(call(status)) == "poll"
    assert expected_job(call(CallStatus.RINGING, merged=7)) is None


async def test_pending_calls_without_a_job_are_placed_through_the_call_rate(
    services: Services, db_conn: asyncpg.Connection
) -> None:
    calls = await stored(db_conn, "lost")
    repaired = await Sweeper(services).sweep()
    assert repaired["place"] == len(PHONES)
    assert await jobs(services, "call", calls) == set(calls)
    assert (await Sweeper(services).sweep())["place"] == 0  # live now: nothing twice


async def test_live_calls_without_a_poll_job_are_followed_and_fresh_ones_left_alone(
    services: Services, db_conn: asyncpg.Connection
) -> None:
    calls = await stored(db_conn, "ringing")
    for i, call_id in enumerate(calls):
        await db.advance_call(db_conn, call_id, CallUpdate(
            status=CallStatus.RINGING, source=StatusSource.WORKER, provider_sid=f"CA{i}"))
    await db_conn.execute("UPDATE calls SET updated_at = now() - interval '10 s'"
                          " WHERE id = ANY($1::bigint[])", calls[:2])
    repaired = await Sweeper(services).sweep()
    assert repaired["follow"] == 2
    assert await jobs(services, "poll", calls) == set(calls[:2])  # the others just changed


async def test_a_dialing_call_waits_out_the_in_progress_lifetime_before_it_is_redialed(
    services: Services, db_conn: asyncpg.Connection
) -> None:
    calls = await stored(db_conn, "dialing")
    await db.start_attempt(db_conn, calls[0], StatusSource.WORKER)
    await db.start_attempt(db_conn, calls[1], StatusSource.WORKER)
    lifetime = services.settings.call_job_timeout_s + 5
    await db_conn.execute("UPDATE calls SET updated_at = now() - make_interval(secs => $2)"
                          " WHERE id = $1", calls[1], lifetime + 1)
    await Sweeper(services).sweep()
    # A replica may still be dialing calls[0] (its in-progress key lost with Redis): not yet.
    assert await jobs(services, "call", calls[:2]) == {calls[1]}


async def test_a_sequential_alert_whose_next_member_was_never_scheduled_gets_it(
    services: Services, db_conn: asyncpg.Connection
) -> None:
    calls = await stored(db_conn, "chain", mode="sequential")
    await db.advance_call(db_conn, calls[0], CallUpdate(status=CallStatus.NO_ANSWER,
                                                       source=StatusSource.POLL))
    await db_conn.execute("UPDATE calls SET updated_at = now() - interval '10 s'"
                          " WHERE id = $1", calls[0])
    repaired = await Sweeper(services).sweep()
    assert repaired["decide"] == 1
    assert await jobs(services, "call", calls) == {calls[1]}  # the next one, only


async def test_an_alert_waiting_for_its_next_round_gets_its_round_job_back(
    services: Services, db_conn: asyncpg.Connection
) -> None:
    calls = await stored(db_conn, "rounds")
    for call_id in calls:
        await db.advance_call(db_conn, call_id, CallUpdate(status=CallStatus.NO_ANSWER,
                                                           source=StatusSource.POLL))
    [row] = await db_conn.fetch("UPDATE alerts SET rounds = 2, next_round_at = now() + "
                                "interval '60 s', updated_at = now() - interval '10 s',"
                                " round = 1 WHERE alert_id = 'rounds' RETURNING id")
    await db_conn.execute("UPDATE calls SET updated_at = now() - interval '10 s'")
    repaired = await Sweeper(services).sweep()
    assert repaired["round"] == 1
    assert await jobs(services, "round-2", [row["id"]]) == {row["id"]}


async def test_dedup_locks_of_open_windows_are_rebuilt_and_held_ones_kept(
    services: Services, db_conn: asyncpg.Connection
) -> None:
    await stored(db_conn, "windowed", window=300)
    await stored(db_conn, "no-window")
    await stored(db_conn, "held", window=300)
    held = services.keys.dedup_lock("default", "held")
    await services.redis.set(held, "event:someone-else", ex=100)
    repaired = await Sweeper(services).sweep()
    assert repaired["dedup_lock"] == 1
    lock = services.keys.dedup_lock("default", "windowed")
    assert await services.redis.get(lock) == b"event:windowed"
    assert 280 <= await services.redis.ttl(lock) <= 291  # the window, less the 10 s gone
    assert not await services.redis.exists(services.keys.dedup_lock("default", "no-window"))
    assert await services.redis.get(held) == b"event:someone-else"


async def test_one_replica_sweeps_per_interval(services: Services) -> None:
    sweepers = [Sweeper(services), Sweeper(services)]
    turns = [await s._take_turn() for s in sweepers]
    assert turns == [True, False]


async def test_a_running_worker_rings_calls_whose_jobs_redis_lost(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    settings = load_settings({**env, "VOICEALERT_SWEEP_INTERVAL_S": "0.5",
                              "VOICEALERT_CALLS_PER_SECOND": "4"})
    phones = [f"+1415555{n:04d}" for n in range(300, 312)]
    await make_group(db_conn, "oncall", phones)
    worker = await start_worker(settings)
    await fire(settings, alert_id="lost-jobs", dedup_window_s=0)

    async def two_placed() -> bool:
        return len(fake_twilio.creates()) >= 2

    await wait_for(two_placed, 10, "the first calls")
    # Redis loses every job at one instant (one script): a scan, then a delete, would leave
    # a job enqueued in between with its key but out of the queue, which no sweep repairs.
    await worker.services.redis.eval(
        """
        local doomed = redis.call('KEYS', ARGV[1])
        for _, key in ipairs(redis.call('KEYS', ARGV[2])) do table.insert(doomed, key) end
        table.insert(doomed, KEYS[1])
        return redis.call('DEL', unpack(doomed))
        """, 1, settings.redis_prefix + "queue", f"{job_key_prefix}{settings.redis_prefix}*",
        f"{in_progress_key_prefix}{settings.redis_prefix}*")

    async def all_completed() -> bool:
        rows = await db.list_calls(db_conn, alert_id="lost-jobs")
        return len(rows) == len(phones) and all(r.status == "completed" for r in rows)

    await wait_for(all_completed, 30, "every call completed")
    placed = [c.form["To"][0] for c in fake_twilio.creates()]
    assert sorted(placed) == sorted(phones), "every member rang, once"
